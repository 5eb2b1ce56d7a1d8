"""Reduced precision: autocast for fp16 / bf16 mixed precision, and loss scaling for pure fp16.

Mixed precision is nanoGPT's two lines, `torch.autocast` and `GradScaler` (the engine builds the scaler);
pure fp16 (apex O3: weights, gradients and optimiser state all half) needs `HalfScaler`, because
GradScaler refuses fp16 gradients.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision via torch.autocast; fp32 and fp16_pure (the model itself is half) are no-op contexts."""
    if precision in ("fp32", "fp16_pure"):
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


class HalfScaler:
    """Loss scaling for pure half precision (apex O3), where GradScaler refuses fp16 gradients.

    A static scale multiplies the loss and divides the gradients, nothing else (apex's static scaler).
    Dynamic (static = 0) works as GradScaler's defaults: start at 2^16, skip a step whose gradients are
    not finite and halve the scale, double it after 2000 finite steps in a row.
    """

    GROWTH_INTERVAL = 2000

    def __init__(self, static: float = 0.0) -> None:
        self.dynamic = static <= 0
        self.scale_value = 2.0**16 if self.dynamic else static
        self.good_steps = 0
        self._unscaled = self._found_inf = False

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale_value

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients by the scale (once per step); note whether any is not finite."""
        if self._unscaled:
            return
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if self.scale_value != 1.0:
            for g in grads:
                g.div_(self.scale_value)
        if self.dynamic and grads:  # one host sync per step: the price of skipping overflowed steps
            self._found_inf = not bool(torch.stack([g.isfinite().all() for g in grads]).all())
        self._unscaled = True

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        self.unscale_(optimizer)
        if not self._found_inf:
            optimizer.step()

    def update(self) -> None:
        if self.dynamic:
            if self._found_inf:
                self.scale_value, self.good_steps = self.scale_value / 2, 0
            else:
                self.good_steps += 1
                if self.good_steps == self.GROWTH_INTERVAL:
                    self.scale_value, self.good_steps = self.scale_value * 2, 0
        self._unscaled = self._found_inf = False

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale_value, "good_steps": self.good_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale_value = state.get("scale", self.scale_value)
        self.good_steps = state.get("good_steps", 0)
