"""Wide Residual Networks: https://arxiv.org/abs/1605.07146"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sweeplab.models import register_model, rules
from sweeplab.models.common import conv1x1, conv3x3, init_weights


class WideBlock(nn.Module):
    """Pre-activation BN-ReLU-conv3x3 (dropout) BN-ReLU-conv3x3; the first block of a stage
    feeds its pre-activated input to a 1x1 projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = conv3x3(cout, cout)
        self.drop_rate = drop_rate
        self.shortcut = conv1x1(cin, cout, stride) if (cin != cout or stride != 1) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(x))
        if self.shortcut is not None:  # the projection sees the activated input (paper, Fig. 1d)
            x = self.shortcut(y)
        y = F.relu(self.bn2(self.conv1(y)))
        y = F.dropout(y, self.drop_rate, self.training)
        return self.conv2(y) + x


@register_model
def wrn(
    num_classes: int = 10, in_channels: int = 3, depth: int = 28, widening_factor: int = 10, drop_rate: float = 0.0
) -> nn.Module:
    """WRN-depth-k (Zagoruyko & Komodakis 2016): https://arxiv.org/abs/1605.07146"""
    n = rules.wrn(depth=depth, widening_factor=widening_factor, drop_rate=drop_rate)
    widths = [16 * widening_factor, 32 * widening_factor, 64 * widening_factor]
    layers: list[nn.Module] = [conv3x3(in_channels, 16)]
    cin = 16
    for cout, stride in zip(widths, (1, 2, 2)):
        for j in range(n):
            layers.append(WideBlock(cin, cout, stride if j == 0 else 1, drop_rate))
            cin = cout
    layers += [
        nn.BatchNorm2d(cin),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(cin, num_classes),
    ]
    model = nn.Sequential(*layers)
    init_weights(model)
    return model
