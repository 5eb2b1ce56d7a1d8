"""Shake-Shake regularised 2-branch ResNet for CIFAR: https://arxiv.org/abs/1705.07485

A 16-channel conv-BN stem, 3 stages of (depth - 2) / 6 blocks at widths k, 2k, 4k
(`initial_channels` = k, the "d" of "2x32d"), each block two ReLU-conv-BN-ReLU-conv-BN branches
mixed by a random convex combination. The booleans pick the paper's variants: shake_forward
(S) or even 0.5 (E) forward, shake_backward (S) or even (E) backward, per image (I) or per batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sweeplab.models import register_model, rules
from sweeplab.models.common import conv1x1, conv3x3, init_weights


class ShakeShakeFunction(torch.autograd.Function):
    """a*x1 + (1-a)*x2 forward; the gradient is split b : (1-b) backward."""

    @staticmethod
    def forward(ctx, x1: torch.Tensor, x2: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(beta)
        return alpha * x1 + (1 - alpha) * x2

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (beta,) = ctx.saved_tensors
        return beta * grad, (1 - beta) * grad, None, None


def _branch(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ReLU(),
        conv3x3(cin, cout, stride),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        conv3x3(cout, cout),
        nn.BatchNorm2d(cout),
    )


class SkipConnection(nn.Module):
    """ReLU, then two strided 1x1 convs to cout/2, the second on the input shifted by one pixel
    so the two halves sample different positions; concatenated and batch-normalised."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv1x1(cin, cout // 2)
        self.conv2 = conv1x1(cin, cout - cout // 2)
        self.bn = nn.BatchNorm2d(cout)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        y1 = self.conv1(x[:, :, :: self.stride, :: self.stride])
        y2 = self.conv2(shifted[:, :, :: self.stride, :: self.stride])
        return self.bn(torch.cat([y1, y2], dim=1))


class ShakeBlock(nn.Module):
    """Two residual branches mixed by ShakeShakeFunction, plus the (projected) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, shake: tuple[bool, bool, bool]) -> None:
        super().__init__()
        self.branch1 = _branch(cin, cout, stride)
        self.branch2 = _branch(cin, cout, stride)
        self.shortcut = SkipConnection(cin, cout, stride) if (cin != cout or stride != 1) else nn.Identity()
        self.shake_forward, self.shake_backward, self.shake_image = shake

    def _coefficient(self, x: torch.Tensor, shake: bool) -> torch.Tensor:
        shape = (x.shape[0], 1, 1, 1) if self.shake_image else (1, 1, 1, 1)
        if shake:
            return torch.rand(shape, device=x.device, dtype=x.dtype)
        return torch.full(shape, 0.5, device=x.device, dtype=x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y1, y2 = self.branch1(x), self.branch2(x)
        if self.training:
            alpha = self._coefficient(x, self.shake_forward)
            beta = self._coefficient(x, self.shake_backward)
            y = ShakeShakeFunction.apply(y1, y2, alpha, beta)
        else:  # the expectation of every variant's forward coefficient
            y = 0.5 * (y1 + y2)
        return y + self.shortcut(x)


@register_model
def shake_shake(
    num_classes: int = 10,
    in_channels: int = 3,
    depth: int = 26,
    initial_channels: int = 96,
    shake_forward: bool = True,
    shake_backward: bool = True,
    shake_image: bool = True,
) -> nn.Module:
    """Shake-Shake-depth 2x(initial_channels)d (Gastaldi 2017): https://arxiv.org/abs/1705.07485"""
    n = rules.shake_shake(depth=depth, initial_channels=initial_channels)
    shake = (shake_forward, shake_backward, shake_image)
    layers: list[nn.Module] = [conv3x3(in_channels, 16), nn.BatchNorm2d(16)]
    cin = 16
    for width, stride in zip((1, 2, 4), (1, 2, 2)):
        cout = initial_channels * width
        for j in range(n):
            layers.append(ShakeBlock(cin, cout, stride if j == 0 else 1, shake))
            cin = cout
    layers += [nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    model = nn.Sequential(*layers)
    init_weights(model)
    return model
