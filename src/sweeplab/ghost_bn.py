"""Ghost batch normalisation: BN statistics over fixed-size chunks of a large batch.

https://arxiv.org/abs/1705.08741 - the reference repo emulated it with gradient-accumulation
"subdivisions"; normalising chunk by chunk gives the same statistics in one forward pass.
"""

from __future__ import annotations

import torch
from torch import nn


class GhostBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that normalises training batches in chunks of `ghost_batch_size` images."""

    ghost_batch_size: int = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.ghost_batch_size <= 0 or x.shape[0] <= self.ghost_batch_size:
            return super().forward(x)
        # Each chunk updates the running statistics once, as each subdivision did in the reference.
        return torch.cat([super(GhostBatchNorm2d, self).forward(c) for c in x.split(self.ghost_batch_size)])


def apply(model: nn.Module, ghost_batch_size: int) -> nn.Module:
    """Turn every BatchNorm2d of `model` into a ghost BN in place (0 = leave the model as is)."""
    if ghost_batch_size <= 0:
        return model
    for m in model.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = GhostBatchNorm2d  # same parameters and buffers, only forward differs
            m.ghost_batch_size = ghost_batch_size
    return model
