"""Optimisers by name, over parameter groups that can spare BatchNorm and biases from weight decay (or decay
only what `optim.weight_decay_on` names) and give BatchNorm biases their own lr and weight-decay factors."""

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


def bn_biases(model: nn.Module) -> set[int]:
    """ids of the shift (bias) parameters of every BatchNorm layer of `model`."""
    return {
        id(m.bias) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.bias is not None
    }


def decayed(model: nn.Module, rule: str) -> set[int]:
    """ids of the parameters weight decay applies to under `rule` (schema.WEIGHT_DECAY_ON): every one
    (`all`), those with more than one dimension (`kernels`), or all but BatchNorm scales and shifts (`not_bn`)."""
    params = list(model.parameters())
    if rule == "kernels":
        return {id(p) for p in params if p.ndim > 1}
    if rule == "not_bn":
        bn = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for p in m.parameters()}
        return {id(p) for p in params if id(p) not in bn}
    if rule != "all":
        raise ValueError(f"unknown weight decay rule {rule!r}")
    return {id(p) for p in params}


def param_groups(
    model: nn.Module,
    weight_decay: float,
    no_decay_on_bn: bool,
    bn_bias_lr_factor: float = 1.0,
    bn_bias_weight_decay_factor: float = 1.0,
    decay_on: str = "all",
) -> list[dict]:
    """Decay every weight (conv and linear alike, unlike the reference's `conv.weight` filter), or only
    those `decay_on` names (`decayed`); `no_decay_on_bn` is `decay_on="kernels"`: 1-D tensors, i.e.
    BatchNorm scales/shifts and biases, are exempt. With factors other than 1, BatchNorm biases form a
    group of their own whose lr is `lr_factor` x the scheduled lr (`set_lr`) and whose decay is factor x
    weight_decay (0 where the rule spares them). Frozen (requires_grad False) parameters are left out."""
    special = bn_biases(model) if (bn_bias_lr_factor, bn_bias_weight_decay_factor) != (1.0, 1.0) else set()
    keep = decayed(model, "kernels" if no_decay_on_bn else decay_on)
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    biases: list[nn.Parameter] = []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if id(p) in special:
            biases.append(p)
        else:
            (decay if id(p) in keep else no_decay).append(p)
    # The groups keep their old order and layout when no factor is set: older checkpoints still load.
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lars_exclude": True})
    if biases:
        spared = any(id(p) not in keep for p in biases)  # every rule but `all` spares BatchNorm shifts
        wd = 0.0 if spared else weight_decay * bn_bias_weight_decay_factor
        groups.append({"params": biases, "weight_decay": wd, "lr_factor": bn_bias_lr_factor, "lars_exclude": True})
    return groups


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr to `lr` times its `lr_factor` (1 unless set): factors follow the schedule."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_factor", 1.0)


def build(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimiser `cfg.name` over `model`'s trainable parameters."""
    groups = param_groups(
        model,
        cfg.weight_decay,
        cfg.no_weight_decay_on_bn,
        cfg.bn_bias_lr_factor,
        cfg.bn_bias_weight_decay_factor,
        cfg.weight_decay_on,
    )
    opt = _OPTIMS[cfg.name](groups, cfg)
    set_lr(opt, cfg.lr)
    return opt


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


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling: https://arxiv.org/abs/1708.03888, written as the reference repo's
    optim/lars.py: local lr = ||w|| / (eps + ||g|| + wd ||w||), 1 where ||w|| < threshold; the momentum
    buffer accumulates lr * local lr * (g + wd w) and is subtracted from w.

    Trust coefficient eta = 0 uses the ratio as is (the reference's setting, whose lr absorbs eta).
    Threshold 0 falls back to a local lr of 1 where ||w|| or ||g|| is 0. Groups marked `lars_exclude`
    (no decay on BN/biases, BN-bias factors) take plain momentum steps.
    """

    def __init__(
        self,
        groups: list[dict],
        lr: float,
        momentum: float,
        nesterov: bool,
        eps: float,
        trust_coefficient: float,
        threshold: float = 0.0,
    ) -> None:
        super().__init__(groups, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=0.0))
        self.eps, self.eta, self.threshold = eps, trust_coefficient, threshold

    def _local_lr(self, p: torch.Tensor, wd: float) -> torch.Tensor:
        w_norm, g_norm = p.norm(), p.grad.norm()
        ratio = w_norm / (self.eps + g_norm + wd * w_norm)
        if self.eta > 0:
            ratio = ratio * self.eta
        small = w_norm < self.threshold if self.threshold > 0 else (w_norm == 0) | (g_norm == 0)
        return torch.where(small, torch.ones_like(ratio), ratio)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            wd, m, lr = group["weight_decay"], group["momentum"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad.add(p, alpha=wd) if wd else p.grad.clone()
                d.mul_(lr if group.get("lars_exclude") else lr * self._local_lr(p, wd))
                if m:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = d.clone()
                    else:
                        state["momentum_buffer"].mul_(m).add_(d)
                    buf = state["momentum_buffer"]
                    d = d.add(buf, alpha=m) if group["nesterov"] else buf
                p.sub_(d)
        return loss


@register_optim
def lars(groups: list[dict], c: OptimConfig) -> torch.optim.Optimizer:
    """LARS with the reference's weight-norm threshold: https://arxiv.org/abs/1708.03888"""
    return LARS(
        groups,
        c.lr,
        c.momentum,
        c.nesterov and c.momentum > 0,
        c.lars_eps,
        c.lars_trust_coefficient,
        c.lars_threshold,
    )
