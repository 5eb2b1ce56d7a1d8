"""Parameter counts of the source architectures next to sweeplab's, for docs/fidelity.md.

The source nets are rebuilt here layer by layer from their code (only the layers that hold
parameters matter): the pytorch_image_classification VGG of configs/cifar/vgg.yaml, and the Flax
CIFAR-10 example's WideResnet (wrn26_10), WideResnetShakeShake (wrn26_6_ss) and
PyramidNetShakeDrop (pyramid). Flax's nn.Conv has a bias by default and its shortcut convs are 3x3.
Run: .venv/bin/python benchmarks/source_param_counts.py
"""

from __future__ import annotations

from torch import nn

from sweeplab import models


def _count(layers: list[nn.Module]) -> int:
    return sum(p.numel() for m in layers for p in m.parameters())


def source_vgg(channels=(64, 128, 256, 512, 512), n_layers=(2, 2, 3, 3, 3), classes: int = 10) -> int:
    """hysts' 5-stage VGG: conv3x3 (with bias) + BN per layer, max-pool per stage, fc on 512x1x1."""
    layers: list[nn.Module] = []
    cin = 3
    for cout, n in zip(channels, n_layers):
        for _ in range(n):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout)]
            cin = cout
    layers.append(nn.Linear(cin, classes))  # 32 / 2**5 = 1: the flattened map is 512 values
    return _count(layers)


def flax_wrn(blocks: int = 4, k: int = 10, classes: int = 10) -> int:
    """Flax WideResnet: biased 3x3 stem, BN-conv-BN-conv blocks, 3x3 biased projection, final BN, Dense."""
    layers: list[nn.Module] = [nn.Conv2d(3, 16, 3)]
    cin = 16
    for cout in (16 * k, 32 * k, 64 * k):
        for _ in range(blocks):
            layers += [nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3), nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3)]
            if cin != cout:  # the first block of each group: the width changes in all three
                layers.append(nn.Conv2d(cin, cout, 3))
            cin = cout
    layers += [nn.BatchNorm2d(cin), nn.Linear(cin, classes)]
    return _count(layers)


def flax_wrn_shake_shake(blocks: int = 4, k: int = 6, classes: int = 10) -> int:
    """Flax WideResnetShakeShake: biased 3x3 stem without BN, two conv-BN-conv-BN branches, 3x3 conv+BN shortcut."""
    layers: list[nn.Module] = [nn.Conv2d(3, 16, 3)]
    cin = 16
    for cout in (16 * k, 32 * k, 64 * k):
        for _ in range(blocks):
            for _branch in range(2):
                layers += [nn.Conv2d(cin, cout, 3), nn.BatchNorm2d(cout)]
                layers += [nn.Conv2d(cout, cout, 3), nn.BatchNorm2d(cout)]
            if cin != cout:  # the first block of each group (the channel count changes in all three)
                layers += [nn.Conv2d(cin, cout, 3), nn.BatchNorm2d(cout)]
            cin = cout
    layers.append(nn.Linear(cin, classes))
    return _count(layers)


def flax_pyramidnet(depth: int = 272, alpha: float = 200, classes: int = 10) -> int:
    """Flax PyramidNetShakeDrop: bottleneck blocks, widths truncated by int(), biased convs, zero-pad shortcut."""
    n = (depth - 2) // 9
    delta = alpha / (3 * n)
    layers: list[nn.Module] = [nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16)]
    cin, width = 16, 16.0
    for _ in range(3 * n):
        width += delta
        c = int(width)
        layers += [
            nn.BatchNorm2d(cin),
            nn.Conv2d(cin, c, 1),
            nn.BatchNorm2d(c),
            nn.Conv2d(c, c, 3),
            nn.BatchNorm2d(c),
            nn.Conv2d(c, 4 * c, 1),
            nn.BatchNorm2d(4 * c),
        ]
        cin = 4 * c
    layers += [nn.BatchNorm2d(cin), nn.Linear(cin, classes)]
    return _count(layers)


def ours(name: str, **opts) -> int:
    """sweeplab's count for the model the sweep runs."""
    return models.num_parameters(models.build(name, **opts))


def main() -> None:
    """Print source vs sweeplab counts, one line per architecture difference."""
    rows = [
        (
            "VGG-15 BN 64 (cifar10_paper_settings)",
            source_vgg(),
            ours("vgg", stage_channels=[64, 128, 256, 512, 512], stage_layers=[2, 2, 3, 3, 3], bn_scale_init="uniform"),
        ),
        ("Flax wrn26_10 vs wrn 28-10", flax_wrn(), ours("wrn", depth=28, widening_factor=10, drop_rate=0.3)),
        (
            "Flax wrn26_6_ss vs shake_shake 26 96",
            flax_wrn_shake_shake(),
            ours("shake_shake", depth=26, initial_channels=96),
        ),
        (
            "Flax pyramid vs pyramidnet 272/200",
            flax_pyramidnet(),
            ours("pyramidnet", depth=272, block_type="bottleneck", alpha=200, shakedrop=0.5),
        ),
    ]
    for label, src, our in rows:
        print(f"{label}: source {src:,} / sweeplab {our:,} ({100 * (our - src) / src:+.1f}%)")


if __name__ == "__main__":
    main()
