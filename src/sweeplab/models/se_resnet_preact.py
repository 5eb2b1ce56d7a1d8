"""Squeeze-and-Excitation pre-activation ResNet for CIFAR: https://arxiv.org/abs/1709.01507

The SE block rescales the residual branch channel-wise before it is added to the shortcut (the
paper's SE-ResNet module, Fig. 3); everything else is `resnet_preact`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sweeplab.models import register_model, rules
from sweeplab.models.resnet_preact import ResNetPreact


class SqueezeExcite(nn.Module):
    """Global average pool, FC (C -> C/r) - ReLU - FC (C/r -> C) - sigmoid, times the input."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)  # stage 1 of a 16-channel net with r=16 keeps one unit
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1).flatten(1)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s[:, :, None, None]


@register_model
def se_resnet_preact(
    num_classes: int = 10,
    in_channels: int = 3,
    depth: int = 110,
    block_type: str = "basic",
    initial_channels: int = 16,
    remove_first_relu: bool = False,
    add_last_bn: bool = False,
    preact_stage: Sequence[bool] = (True, True, True),
    se_reduction: int = 16,
) -> nn.Module:
    """SE-ResNet-preact (Hu et al. 2018): https://arxiv.org/abs/1709.01507"""
    rules.se_resnet_preact(
        se_reduction=se_reduction,
        depth=depth,
        block_type=block_type,
        initial_channels=initial_channels,
        preact_stage=preact_stage,
    )
    # init_weights only zeroes Linear biases, so the SE layers keep PyTorch's default weight init
    return ResNetPreact(
        num_classes,
        in_channels,
        depth,
        block_type,
        initial_channels,
        remove_first_relu,
        add_last_bn,
        list(preact_stage),
        attention=lambda c: SqueezeExcite(c, se_reduction),
    )
