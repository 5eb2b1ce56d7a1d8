"""ResNet for CIFAR (post-activation): https://arxiv.org/abs/1512.03385

Shortcuts that change shape are 1x1 conv + BN projections (the paper's option B, as in the
reference repo); bottleneck stage 1 outputs `initial_channels * 4` channels as in the paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sweeplab.models import register_model, rules
from sweeplab.models.common import conv1x1, conv3x3, init_weights


def _projection(cin: int, cout: int, stride: int) -> nn.Module:
    if cin == cout and stride == 1:
        return nn.Identity()
    return nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, added to the shortcut, then ReLU."""

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv3x3(cin, cout, stride),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            conv3x3(cout, cout),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = _projection(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class BottleneckBlock(BasicBlock):
    """conv1x1-conv3x3(strided)-conv1x1 with BN-ReLU between and 4x expansion."""

    expansion = 4

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__(cin, cout, stride)
        mid = cout // self.expansion
        self.body = nn.Sequential(
            conv1x1(cin, mid),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            conv3x3(mid, mid, stride),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            conv1x1(mid, cout),
            nn.BatchNorm2d(cout),
        )


@register_model
def resnet(
    num_classes: int = 10, in_channels: int = 3, depth: int = 110, block_type: str = "basic", initial_channels: int = 16
) -> nn.Module:
    """ResNet (He et al. 2015) for 32x32 inputs: https://arxiv.org/abs/1512.03385"""
    n = rules.resnet(depth=depth, block_type=block_type, initial_channels=initial_channels)
    block = BasicBlock if block_type == "basic" else BottleneckBlock
    layers: list[nn.Module] = [
        conv3x3(in_channels, initial_channels),
        nn.BatchNorm2d(initial_channels),
        nn.ReLU(inplace=True),
    ]
    cin = initial_channels
    for width, stride in zip((1, 2, 4), (1, 2, 2)):
        cout = initial_channels * width * block.expansion
        for j in range(n):
            layers.append(block(cin, cout, stride if j == 0 else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    model = nn.Sequential(*layers)
    init_weights(model)
    return model
