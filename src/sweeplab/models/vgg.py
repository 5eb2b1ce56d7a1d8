"""VGG-like CIFAR nets of the reference repo's first table: https://arxiv.org/abs/1409.1556

Two layouts. The default, three stages of conv3x3(-BN)-ReLU at widths n, 2n, 4n, each closed by a 2x2
max-pool, with `n_layers` the "depth": (n_layers - 3) / 3 convs per stage (15 gives 4 a stage). With
`stage_channels` and `stage_layers` (one entry per stage) the net is the reference's own VGG, every
stored version of it (pytorch_image_classification models/vgg.py from commit 5455f6f on, configs/vgg.json):
`stage_channels [64, 128, 256, 512, 512]`, `stage_layers [2, 2, 3, 3, 3]`, a conv3x3 with bias (+ BN) +
ReLU per layer and a 2x2 max-pool per stage, 14,728,266 parameters for CIFAR-10; `n_channels` and
`n_layers` are not used then. `bn_scale_init uniform` draws BatchNorm scales from U(0, 1), as that code
did (PyTorch 0.3's default); `ones` is this package's init. The classifier sees the globally averaged
last feature map (the source flattens it: the same thing once five pools have taken 32x32 to 1x1), so one
model serves 32x32 and 28x28 inputs alike.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from sweeplab.models import register_model, rules
from sweeplab.models.common import init_weights


@register_model
def vgg(
    num_classes: int = 10,
    in_channels: int = 3,
    n_channels: int = 64,
    n_layers: int = 15,
    use_bn: bool = True,
    stage_channels: Sequence[int] = (),
    stage_layers: Sequence[int] = (),
    bn_scale_init: str = "ones",
) -> nn.Module:
    """VGG-like (Simonyan & Zisserman 2014) for 32x32 inputs: https://arxiv.org/abs/1409.1556"""
    stages = rules.vgg(
        n_channels=n_channels,
        n_layers=n_layers,
        stage_channels=stage_channels,
        stage_layers=stage_layers,
        bn_scale_init=bn_scale_init,
    )
    source = bool(stage_channels)  # the reference's layout: its convs keep their bias under BN
    layers: list[nn.Module] = []
    cin = in_channels
    for width, convs in stages:
        for _ in range(convs):
            # without BN the conv needs its own bias; with BN the BN shift replaces it (the source keeps both)
            layers.append(nn.Conv2d(cin, width, 3, padding=1, bias=source or not use_bn))
            if use_bn:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU(inplace=True))
            cin = width
        # ceil_mode (the source layout only) lets 28x28 inputs through five pools; on 32x32 it is the source's pool
        layers.append(nn.MaxPool2d(2, ceil_mode=source))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    model = nn.Sequential(*layers)
    init_weights(model)
    if bn_scale_init == "uniform":
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                nn.init.uniform_(m.weight)
    return model
