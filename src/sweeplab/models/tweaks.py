"""Changes the engine applies to any built model: CELU for ReLU, frozen BatchNorm scales, BatchNorm kept in
float32 in a half-precision model.

They act on the built module tree (or its forward), so every model gets them without an option of
its own, and a model's parameters and state_dict keys stay what they were.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

_RELUS = (torch.relu, torch.Tensor.relu)
_RELUS_INPLACE = (F.relu_, torch.relu_, torch.Tensor.relu_)


class CeluForRelu(TorchFunctionMode):
    """Inside it every ReLU call, the nn.ReLU modules and the models' functional F.relu alike, computes
    CELU(alpha) (https://arxiv.org/abs/1704.07483) instead: one mechanism for every model family."""

    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.alpha = alpha

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.relu:  # nn.ReLU calls it too
            inplace = kwargs.get("inplace", args[1] if len(args) > 1 else False)
            return F.celu(args[0], self.alpha, inplace=inplace)
        if func in _RELUS:
            return F.celu(args[0], self.alpha)
        if func in _RELUS_INPLACE:
            return F.celu_(args[0], self.alpha)
        return func(*args, **kwargs)


def activation(name: str, alpha: float) -> contextlib.AbstractContextManager:
    """The context a forward pass runs in: `celu` swaps ReLU for CELU(alpha), `relu` leaves the model as is."""
    return CeluForRelu(alpha) if name == "celu" else contextlib.nullcontext()


def freeze_bn_scales(model: nn.Module) -> int:
    """Stop training every BatchNorm scale (weight): it keeps its initial value. Returns how many."""
    n = 0
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None:
            m.weight.requires_grad_(False)
            n += 1
    return n


def float_batchnorm(model: nn.Module) -> int:
    """Put every BatchNorm layer (scale, shift, running statistics) back in float32, after `model.half()`:
    the reference's argparse-era `--fp16`. The layers normalise half inputs in float32 and return half
    outputs, and the optimiser updates their parameters in float32. Returns how many."""
    n = 0
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.float()
            n += 1
    return n
