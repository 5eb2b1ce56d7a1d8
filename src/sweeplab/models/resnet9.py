"""The 9-layer residual net of the DAWNBench fast-training posts (David Page, myrtle.ai):
https://myrtle.ai/learn/how-to-train-your-resnet/

prep conv 64; layer1 conv 128 + max-pool + residual(2 convs); layer2 conv 256 + max-pool;
layer3 conv 512 + max-pool + residual(2 convs); global max-pool; a bias-free linear layer whose
logits are scaled by `output_scale`: the posts' 0.125, and 1/16 in their frozen-BatchNorm-scale nets
(cifar10-fast bag_of_tricks.ipynb, commit 37a13cc: `network(..., scale=1/16, ...)`, where the frozen
scales no longer amplify the last layer). Every conv is conv3x3-BN-activation; the pool follows the activation.
`channels` is the prep width (the rest double from it); the convs get this package's He init
rather than PyTorch's default, which the posts used.
"""

from __future__ import annotations

import torch
from torch import nn

from sweeplab.models import register_model, rules
from sweeplab.models.common import conv3x3, init_weights


def _conv_bn(cin: int, cout: int, celu_alpha: float) -> list[nn.Module]:
    # the later posts swap ReLU for the smoother CELU, which trains better at high learning rates
    act = nn.CELU(celu_alpha) if celu_alpha > 0 else nn.ReLU(inplace=True)
    return [conv3x3(cin, cout), nn.BatchNorm2d(cout), act]


class Residual(nn.Module):
    """x + f(x)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Scale(nn.Module):
    """Multiply by a constant: the posts' output scale, which keeps the initial logits small."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


@register_model
def resnet9(
    num_classes: int = 10,
    in_channels: int = 3,
    channels: int = 64,
    celu_alpha: float = 0.0,
    output_scale: float = 0.125,
) -> nn.Module:
    """ResNet-9 (Page 2018, DAWNBench): https://myrtle.ai/learn/how-to-train-your-resnet/"""
    rules.resnet9(channels=channels, celu_alpha=celu_alpha, output_scale=output_scale)
    c1, c2, c3, c4 = channels, 2 * channels, 4 * channels, 8 * channels

    def block(cin: int, cout: int) -> list[nn.Module]:
        return _conv_bn(cin, cout, celu_alpha)

    def pool() -> nn.Module:  # ceil_mode takes 28x28 inputs to 14, 7, 4 rather than dropping a row at 7
        return nn.MaxPool2d(2, ceil_mode=True)

    features = nn.Sequential(
        *block(in_channels, c1),
        *block(c1, c2),
        pool(),
        Residual(nn.Sequential(*block(c2, c2), *block(c2, c2))),
        *block(c2, c3),
        pool(),
        *block(c3, c4),
        pool(),
        Residual(nn.Sequential(*block(c4, c4), *block(c4, c4))),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
    )
    init_weights(features)
    # the head keeps PyTorch's default init, as in the posts (and it has no bias to zero)
    return nn.Sequential(*features, nn.Linear(c4, num_classes, bias=False), Scale(output_scale))
