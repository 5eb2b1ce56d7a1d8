"""Densely connected networks for CIFAR: https://arxiv.org/abs/1608.06993

Three dense blocks of BN-ReLU-conv layers whose outputs are concatenated, joined by
BN-ReLU-conv1x1-avgpool transitions that keep floor(compression_rate * m) of m channels.
Follows the paper where the reference repo differs: the stem has 16 channels unless the net is
DenseNet-BC (bottleneck and compression < 1), which gets 2 * growth_rate (Sec. 4.1; the
reference always uses 2 * growth_rate).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sweeplab.models import register_model, rules
from sweeplab.models.common import conv1x1, conv3x3, init_weights


class DenseLayer(nn.Module):
    """BN-ReLU-conv3x3 to `growth_rate` channels (bottleneck: BN-ReLU-conv1x1 to 4k first)."""

    def __init__(self, cin: int, growth_rate: int, bottleneck: bool, drop_rate: float) -> None:
        super().__init__()
        body: list[nn.Module] = []
        if bottleneck:
            body += [
                nn.BatchNorm2d(cin),
                nn.ReLU(inplace=True),
                conv1x1(cin, 4 * growth_rate),
                nn.Dropout(drop_rate),
            ]  # the paper drops out after every conv (Sec. 4.2)
            cin = 4 * growth_rate
        body += [nn.BatchNorm2d(cin), nn.ReLU(inplace=True), conv3x3(cin, growth_rate), nn.Dropout(drop_rate)]
        self.body = nn.Sequential(*body)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], dim=1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1 (with dropout) then 2x2 average pooling."""

    def __init__(self, cin: int, cout: int, drop_rate: float) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = conv1x1(cin, cout)
        self.drop_rate = drop_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.dropout(self.conv(F.relu(self.bn(x))), self.drop_rate, self.training)
        # ceil_mode keeps odd maps (7x7 from 28x28 inputs) from losing their last row and column
        return F.avg_pool2d(x, 2, ceil_mode=True)


@register_model
def densenet(
    num_classes: int = 10,
    in_channels: int = 3,
    depth: int = 100,
    block_type: str = "bottleneck",
    growth_rate: int = 12,
    compression_rate: float = 0.5,
    drop_rate: float = 0.0,
) -> nn.Module:
    """DenseNet / DenseNet-BC (Huang et al. 2017): https://arxiv.org/abs/1608.06993"""
    n = rules.densenet(
        depth=depth,
        block_type=block_type,
        growth_rate=growth_rate,
        compression_rate=compression_rate,
        drop_rate=drop_rate,
    )
    bottleneck = block_type == "bottleneck"
    channels = 2 * growth_rate if bottleneck and compression_rate < 1 else 16
    layers: list[nn.Module] = [conv3x3(in_channels, channels)]
    for stage in range(3):
        for _ in range(n):
            layers.append(DenseLayer(channels, growth_rate, bottleneck, drop_rate))
            channels += growth_rate
        if stage < 2:
            out = int(math.floor(compression_rate * channels))
            layers.append(Transition(channels, out, drop_rate))
            channels = out
    layers += [
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels, num_classes),
    ]
    model = nn.Sequential(*layers)
    init_weights(model)
    return model
