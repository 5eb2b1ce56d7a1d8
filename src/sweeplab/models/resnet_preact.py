"""Pre-activation ResNet for CIFAR: https://arxiv.org/abs/1603.05027

Follows the paper where the reference repo differs: bottleneck stage 1 outputs
`initial_channels * 4` channels (the reference keeps it at `initial_channels`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sweeplab.models import register_model, rules
from sweeplab.models.common import conv1x1, conv3x3, init_weights

Attention = Callable[[int], nn.Module]  # channels -> a module applied to the residual branch


class BasicBlock(nn.Module):
    """BN-ReLU-conv3x3 twice; `preact` feeds the pre-activated input to the shortcut too."""

    expansion = 1

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int,
        preact: bool,
        remove_first_relu: bool,
        add_last_bn: bool,
        attention: Attention | None = None,
    ) -> None:
        super().__init__()
        self.preact, self.remove_first_relu = preact, remove_first_relu
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = conv3x3(cout, cout)
        self.bn3 = nn.BatchNorm2d(cout) if add_last_bn else nn.Identity()
        self.shortcut = conv1x1(cin, cout, stride) if (cin != cout or stride != 1) else nn.Identity()
        # the hook se_resnet_preact uses: Identity adds no parameters, so counts stay the same
        self.attention = attention(cout) if attention is not None else nn.Identity()

    def residual(self, y: torch.Tensor) -> torch.Tensor:
        y = self.conv1(y)
        y = self.conv2(F.relu(self.bn2(y)))
        return self.bn3(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.preact:
            x = F.relu(self.bn1(x))
            return self.attention(self.residual(x)) + self.shortcut(x)
        y = self.bn1(x)
        if not self.remove_first_relu:
            y = F.relu(y)
        return self.attention(self.residual(y)) + self.shortcut(x)


class BottleneckBlock(BasicBlock):
    """BN-ReLU-conv1x1, BN-ReLU-conv3x3 (strided), BN-ReLU-conv1x1 with 4x expansion."""

    expansion = 4

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int,
        preact: bool,
        remove_first_relu: bool,
        add_last_bn: bool,
        attention: Attention | None = None,
    ) -> None:
        super().__init__(cin, cout, stride, preact, remove_first_relu, add_last_bn, attention)
        mid = cout // self.expansion
        self.conv1 = conv1x1(cin, mid)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = conv3x3(mid, mid, stride)
        self.bn_mid = nn.BatchNorm2d(mid)
        self.conv3 = conv1x1(mid, cout)

    def residual(self, y: torch.Tensor) -> torch.Tensor:
        y = self.conv1(y)
        y = self.conv2(F.relu(self.bn2(y)))
        y = self.conv3(F.relu(self.bn_mid(y)))
        return self.bn3(y)


class ResNetPreact(nn.Module):
    """Three stages of pre-activation blocks, a final BN-ReLU, global pooling and a linear head."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        depth: int,
        block_type: str,
        initial_channels: int,
        remove_first_relu: bool,
        add_last_bn: bool,
        preact_stage: list[bool],
        attention: Attention | None = None,
    ) -> None:
        super().__init__()
        n = rules.resnet_preact(
            depth=depth, block_type=block_type, initial_channels=initial_channels, preact_stage=preact_stage
        )
        block = BasicBlock if block_type == "basic" else BottleneckBlock
        self.stem = conv3x3(in_channels, initial_channels)
        layers, cin = [], initial_channels
        for i, (width, stride) in enumerate(zip((1, 2, 4), (1, 2, 2))):
            cout = initial_channels * width * block.expansion
            for j in range(n):
                layers.append(
                    block(
                        cin,
                        cout,
                        stride if j == 0 else 1,
                        preact_stage[i] and j == 0,
                        remove_first_relu,
                        add_last_bn,
                        attention,
                    )
                )
                cin = cout
        self.stages = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stages(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@register_model
def resnet_preact(
    num_classes: int = 10,
    in_channels: int = 3,
    depth: int = 20,
    block_type: str = "basic",
    initial_channels: int = 16,
    remove_first_relu: bool = False,
    add_last_bn: bool = False,
    preact_stage: Sequence[bool] = (True, True, True),
) -> nn.Module:
    """Pre-activation ResNet (He et al. 2016): https://arxiv.org/abs/1603.05027"""
    return ResNetPreact(
        num_classes,
        in_channels,
        depth,
        block_type,
        initial_channels,
        remove_first_relu,
        add_last_bn,
        list(preact_stage),
    )
