"""VGG-like CIFAR net of the reference repo's first table: https://arxiv.org/abs/1409.1556

Three stages of conv3x3(-BN)-ReLU at widths n, 2n, 4n, each closed by a 2x2 max-pool, then a
linear classifier. `n_layers` is the reference's "depth": (n_layers - 3) / 3 convs per stage, so
the default 15 gives 4 convs a stage (our reading of "VGG-like (depth 15, w/ BN, channel 64)";
the code that produced that row is gone from the reference's history). The classifier sees the
globally averaged last feature map rather than the flattened one, so one model serves 32x32 and
28x28 inputs alike.
"""

from __future__ import annotations

from torch import nn

from sweeplab.models import register_model, rules
from sweeplab.models.common import init_weights


@register_model
def vgg(
    num_classes: int = 10, in_channels: int = 3, n_channels: int = 64, n_layers: int = 15, use_bn: bool = True
) -> nn.Module:
    """VGG-like (Simonyan & Zisserman 2014) for 32x32 inputs: https://arxiv.org/abs/1409.1556"""
    per_stage = rules.vgg(n_channels=n_channels, n_layers=n_layers)
    layers: list[nn.Module] = []
    cin = in_channels
    for width in (n_channels, 2 * n_channels, 4 * n_channels):
        for _ in range(per_stage):
            # without BN the conv needs its own bias; with BN the BN shift replaces it
            layers.append(nn.Conv2d(cin, width, 3, padding=1, bias=not use_bn))
            if use_bn:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU(inplace=True))
            cin = width
        layers.append(nn.MaxPool2d(2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    model = nn.Sequential(*layers)
    init_weights(model)
    return model
