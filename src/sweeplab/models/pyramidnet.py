"""Deep Pyramidal Residual Networks for CIFAR: https://arxiv.org/abs/1610.02915
with optional ShakeDrop regularisation: https://arxiv.org/abs/1802.02375

Widths grow additively by alpha / N per block over all N blocks, the running width rounded as in
the authors' code; shortcuts are identity, zero-padded to the wider output and 2x2 average-pooled
where the block downsamples. Counts equal the authors' architecture (e.g. 26,210,842 for 272/200),
which the paper prints 0.8-4% low (26.0M). `shakedrop` is the last block's drop probability
1 - p_L; block l of L drops with probability (l / L) * shakedrop, so 0.5 is the paper's p_L = 0.5.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sweeplab.models import register_model, rules
from sweeplab.models.common import conv1x1, conv3x3, init_weights


class ShakeDropFunction(torch.autograd.Function):
    """y = (b + a - b*a) * x forward, gradient scaled by (b + c - b*c) backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, gate: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate + beta - gate * beta)
        return x * (gate + alpha - gate * alpha)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (scale,) = ctx.saved_tensors
        return grad * scale, None, None, None


class ShakeDrop(nn.Module):
    """Per-image ShakeDrop on a residual branch; `drop_prob` = 1 - p_l of the paper."""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0:
            return x
        if not self.training:  # E[b + a - b*a] = p_l, since E[a] = 0
            return x * (1 - self.drop_prob)
        shape = (x.shape[0], 1, 1, 1)
        gate = torch.bernoulli(torch.full(shape, 1 - self.drop_prob, device=x.device, dtype=x.dtype))
        alpha = torch.empty(shape, device=x.device, dtype=x.dtype).uniform_(-1, 1)
        beta = torch.rand(shape, device=x.device, dtype=x.dtype)
        return ShakeDropFunction.apply(x, gate, alpha, beta)


class PyramidBlock(nn.Module):
    """BN-conv3x3-BN-ReLU-conv3x3-BN (bottleneck: BN-1x1-BN-ReLU-3x3-BN-ReLU-1x1-BN, 4x out)."""

    def __init__(self, cin: int, width: int, stride: int, bottleneck: bool, drop_prob: float) -> None:
        super().__init__()
        if bottleneck:
            self.cout = 4 * width
            body = [
                nn.BatchNorm2d(cin),
                conv1x1(cin, width),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                conv3x3(width, width, stride),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                conv1x1(width, self.cout),
                nn.BatchNorm2d(self.cout),
            ]
        else:
            self.cout = width
            body = [
                nn.BatchNorm2d(cin),
                conv3x3(cin, width, stride),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                conv3x3(width, width),
                nn.BatchNorm2d(width),
            ]
        self.body = nn.Sequential(*body)
        self.shakedrop = ShakeDrop(drop_prob)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.shakedrop(self.body(x))
        if self.stride > 1:
            # ceil_mode matches the strided conv's output size on odd maps (7x7 from 28x28 inputs)
            x = F.avg_pool2d(x, 2, ceil_mode=True)
        # zero-padded identity: the extra channels of y get no shortcut (paper, Sec. 3 and Fig. 5)
        return y + F.pad(x, (0, 0, 0, 0, 0, y.shape[1] - x.shape[1]))


@register_model
def pyramidnet(
    num_classes: int = 10,
    in_channels: int = 3,
    depth: int = 272,
    block_type: str = "bottleneck",
    alpha: int = 200,
    shakedrop: float = 0.0,
) -> nn.Module:
    """PyramidNet (Han et al. 2017), ShakeDrop (Yamada et al. 2018): https://arxiv.org/abs/1610.02915"""
    n = rules.pyramidnet(depth=depth, block_type=block_type, alpha=alpha, shakedrop=shakedrop)
    bottleneck = block_type == "bottleneck"
    total = 3 * n
    layers: list[nn.Module] = [conv3x3(in_channels, 16), nn.BatchNorm2d(16)]
    cin, width = 16, 16.0
    for k in range(total):
        width += alpha / total
        stride = 2 if k in (n, 2 * n) else 1
        # linear decay rule: block l of L drops with probability (l / L) * p_L (ShakeDrop, Sec. 3.1)
        # floor(w + 0.5) as the authors' code rounds (Python's round() would round halves to even)
        block = PyramidBlock(cin, math.floor(width + 0.5), stride, bottleneck, shakedrop * (k + 1) / total)
        layers.append(block)
        cin = block.cout
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
