"""Optimisers by name, with parameter groups that can spare BatchNorm and biases from weight decay."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from sweeplab.schema import OptimConfig

_OPTIMS: dict[str, Callable[[list[dict], OptimConfig], torch.optim.Optimizer]] = {}


def register_optim(fn: Callable[[list[dict], OptimConfig], torch.optim.Optimizer]):
    """Register an optimiser builder `fn(param_groups, cfg)` under its function name."""
    _OPTIMS[fn.__name__] = fn
    return fn


def names() -> list[str]:
    """Every registered optimiser, sorted; `models.catalog.OPTIMIZERS` lists the same for torch-free validation."""
    return sorted(_OPTIMS)


def param_groups(model: nn.Module, weight_decay: float, no_decay_on_bn: bool) -> list[dict]:
    """Decay every weight (conv and linear alike, unlike the reference's `conv.weight` filter);
    optionally exempt 1-D tensors, i.e. BatchNorm scales/shifts and biases."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if (no_decay_on_bn and p.ndim <= 1) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lars_exclude": True})
    return groups


def build(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimiser `cfg.name` over `model`'s parameters."""
    return _OPTIMS[cfg.name](param_groups(model, cfg.weight_decay, cfg.no_weight_decay_on_bn), cfg)


@register_optim
def sgd(groups: list[dict], c: OptimConfig) -> torch.optim.Optimizer:
    """SGD with (Nesterov) momentum and coupled L2 weight decay."""
    return torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov and c.momentum > 0)


@register_optim
def adam(groups: list[dict], c: OptimConfig) -> torch.optim.Optimizer:
    """Adam: https://arxiv.org/abs/1412.6980"""
    return torch.optim.Adam(groups, lr=c.lr, betas=tuple(c.betas))


@register_optim
def amsgrad(groups: list[dict], c: OptimConfig) -> torch.optim.Optimizer:
    """AMSGrad: https://openreview.net/forum?id=ryQu7f-RZ"""
    return torch.optim.Adam(groups, lr=c.lr, betas=tuple(c.betas), amsgrad=True)


class LARS(torch.optim.SGD):
    """Layer-wise adaptive rate scaling over SGD: https://arxiv.org/abs/1708.03888

    Each tensor's update is scaled by eta * ||w|| / (||g|| + wd * ||w||); with trust coefficient
    eta = 0 the ratio is used as is (the reference repo's setting, whose lr absorbs eta).
    """

    def __init__(
        self, groups: list[dict], lr: float, momentum: float, nesterov: bool, eps: float, trust_coefficient: float
    ) -> None:
        super().__init__(groups, lr=lr, momentum=momentum, nesterov=nesterov)
        self.eps, self.eta = eps, trust_coefficient

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            if group.get("lars_exclude"):
                continue
            wd = group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                w_norm, g_norm = p.norm(), p.grad.norm()
                ratio = w_norm / (g_norm + wd * w_norm + self.eps)
                if self.eta > 0:
                    ratio = ratio * self.eta
                # Fold the decay in before scaling so SGD must not add it again.
                p.grad.add_(p, alpha=wd).mul_(torch.where((w_norm > 0) & (g_norm > 0), ratio, 1.0))
            group["_wd"], group["weight_decay"] = wd, 0.0
        try:
            return super().step(closure)
        finally:
            for group in self.param_groups:
                if "_wd" in group:
                    group["weight_decay"] = group.pop("_wd")


@register_optim
def lars(groups: list[dict], c: OptimConfig) -> torch.optim.Optimizer:
    """SGD with LARS layer-wise scaling: https://arxiv.org/abs/1708.03888"""
    return LARS(groups, c.lr, c.momentum, c.nesterov and c.momentum > 0, c.lars_eps, c.lars_trust_coefficient)
