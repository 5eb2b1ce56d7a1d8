"""ResNeXt for CIFAR: https://arxiv.org/abs/1611.05431

A 64-channel 3x3 stem, then 3 stages of bottleneck blocks whose 3x3 conv is grouped into
`cardinality` paths of `base_channels * 2**stage` channels each (the "d" of "8x64d"); stage
outputs are 256, 512 and 1024 channels (paper, Sec. 5.2). Shortcuts that change shape are
1x1 conv + BN projections.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sweeplab.models import register_model, rules
from sweeplab.models.common import conv1x1, conv3x3, init_weights


class ResNeXtBlock(nn.Module):
    """conv1x1-BN-ReLU, grouped conv3x3 (strided)-BN-ReLU, conv1x1-BN, add, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, width: int, cardinality: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv1x1(cin, width),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=cardinality, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            conv1x1(width, cout),
            nn.BatchNorm2d(cout),
        )
        self.shortcut: nn.Module = nn.Identity()
        if cin != cout or stride != 1:
            self.shortcut = nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


@register_model
def resnext(
    num_classes: int = 10, in_channels: int = 3, depth: int = 29, cardinality: int = 8, base_channels: int = 64
) -> nn.Module:
    """ResNeXt-depth (cardinality)x(base_channels)d (Xie et al. 2017): https://arxiv.org/abs/1611.05431"""
    n = rules.resnext(depth=depth, cardinality=cardinality, base_channels=base_channels)
    stem = 64
    layers: list[nn.Module] = [conv3x3(in_channels, stem), nn.BatchNorm2d(stem), nn.ReLU(inplace=True)]
    cin = stem
    for stage, stride in enumerate((1, 2, 2)):
        cout = 256 * 2**stage
        width = cardinality * base_channels * 2**stage
        for j in range(n):
            layers.append(ResNeXtBlock(cin, cout, stride if j == 0 else 1, width, cardinality))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    model = nn.Sequential(*layers)
    init_weights(model)
    return model
