"""The general keys that encode the sources' recipes: pure fp16 (apex O3), CELU for ReLU, frozen BatchNorm
scales, BatchNorm-bias lr factors that follow the schedule. Checked by hand on toy tensors and through a
`Trainer` on a few synthetic images (on the CPU)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sweeplab import config, engine, schedules
from sweeplab.core.errors import ConfigError
from sweeplab.models import tweaks

TINY = [
    "data.name=synthetic",
    "data.synthetic_shape=[3,8,8]",
    "data.synthetic_classes=4",
    "data.synthetic_train=64",
    "data.synthetic_test=32",
    "data.batch_size=16",
    "data.eval_batch_size=16",
    "data.device=cpu",
    "model.name=resnet9",
    "model.channels=4",
    "train.epochs=1",
    "train.threads=1",
]


def trainer(*extra: str) -> engine.Trainer:
    return engine.Trainer(config.load(None, TINY + list(extra)))


# --- CELU for every ReLU ----------------------------------------------------------------------------


class Mixed(nn.Module):
    """One nn.ReLU module and one functional F.relu, as the model families mix them."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.act(x.clone()), F.relu(x)])


def test_celu_replaces_module_and_functional_relu():
    # CELU(x) = x for x > 0, alpha (exp(x / alpha) - 1) else: alpha 0.3 at -1 gives 0.3 (e^(-10/3) - 1) = -0.289297
    x = torch.tensor([-1.0, 2.0])
    with tweaks.activation("celu", 0.3):
        y = Mixed()(x)
    celu = 0.3 * (math.exp(-1 / 0.3) - 1)
    assert y.tolist() == pytest.approx([celu, 2.0, celu, 2.0], rel=1e-6)
    with tweaks.activation("relu", 0.3):
        assert Mixed()(x).tolist() == [0.0, 2.0, 0.0, 2.0]


def test_trainer_forward_uses_celu():
    t = trainer("train.activation=celu", "train.celu_alpha=0.3")
    seen: list[torch.Tensor] = []
    relu = next(m for m in t.model.modules() if isinstance(m, nn.ReLU))
    relu.register_forward_hook(lambda m, i, o: seen.append(o))
    t.evaluate()
    assert seen and min(o.min().item() for o in seen) < 0  # ReLU never outputs a negative, CELU does
    assert min(o.min().item() for o in seen) >= -0.3  # CELU's floor is -alpha


# --- frozen BatchNorm scales ----------------------------------------------------------------------------


def test_frozen_bn_scales_stay_at_their_initial_value():
    t = trainer("train.freeze_bn_scale=true")
    bns = [m for m in t.model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not m.weight.requires_grad for m in bns)
    trained = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    assert not any(id(m.weight) in trained for m in bns)
    shifts = [m.bias.detach().clone() for m in bns]
    t.train_epoch()
    assert all(torch.equal(m.weight.detach(), torch.ones_like(m.weight)) for m in bns)  # init_weights' 1
    assert any(not torch.equal(m.bias.detach(), s) for m, s in zip(bns, shifts))  # the shifts still train


# --- BatchNorm-bias lr factor follows the schedule -----------------------------------------------------


def test_bn_bias_lr_factor_follows_the_schedule():
    t = trainer(
        "sched.name=onecycle", "optim.lr=0.4", "optim.bn_bias_lr_factor=16", "optim.bn_bias_weight_decay_factor=0.0625"
    )
    t.train_epoch()
    c = t.config
    # the last step of the epoch set the groups' lr: 4 steps of 16 images, step index 3
    lr = schedules.lr_at(3, 0.4, c.sched, 4, c.train.epochs)
    assert t.last_lr == pytest.approx(lr)
    main, biases = t.optimizer.param_groups
    assert main["lr"] == pytest.approx(lr) and biases["lr"] == pytest.approx(16 * lr)
    assert biases["weight_decay"] == pytest.approx(5e-4 / 16)


# --- pure half precision (apex O3) ---------------------------------------------------------------------


def test_half_scaler_static_scales_loss_and_unscales_gradients():
    # static scale 8: the loss 2 w at w = 3 backpropagates 8 * 2 = 16, unscaled to 2; SGD lr 0.5: w' = 3 - 1 = 2
    w = nn.Parameter(torch.tensor([3.0], dtype=torch.float16))
    opt = torch.optim.SGD([w], lr=0.5)
    s = engine.HalfScaler(8.0)
    loss = (2 * w).sum()
    assert s.scale(loss).item() == 48.0
    s.scale(loss).backward()
    assert w.grad.item() == 16.0
    s.step(opt)
    s.update()
    assert w.item() == 2.0 and s.state_dict()["scale"] == 8.0


def test_half_scaler_dynamic_skips_overflow_and_halves():
    w = nn.Parameter(torch.tensor([3.0], dtype=torch.float16))
    opt = torch.optim.SGD([w], lr=0.5)
    s = engine.HalfScaler(0.0)
    assert s.scale_value == 2.0**16
    w.grad = torch.tensor([float("inf")], dtype=torch.float16)
    s.step(opt)
    s.update()
    assert w.item() == 3.0 and s.scale_value == 2.0**15  # step skipped, scale halved
    s.good_steps = s.GROWTH_INTERVAL - 1
    w.grad = torch.tensor([2.0**15], dtype=torch.float16)  # unscaled: 1
    s.step(opt)
    s.update()
    assert w.item() == 2.5 and s.scale_value == 2.0**16  # 2000 finite steps in a row: doubled


def test_fp16_pure_trains_the_whole_model_in_half_on_cpu():
    t = trainer("train.precision=fp16_pure", "train.loss_scale=1.0")
    assert {p.dtype for p in t.model.parameters()} == {torch.float16}
    assert {b.dtype for b in t.model.buffers() if b.is_floating_point()} == {torch.float16}  # BN stats too
    before = [p.detach().clone() for p in t.model.parameters()]
    out = t.train_epoch()
    assert math.isfinite(out["train/loss"])
    assert any(not torch.equal(p.detach(), b) for p, b in zip(t.model.parameters(), before))
    state = t.optimizer.state[next(t.model.parameters())]
    assert state["momentum_buffer"].dtype == torch.float16  # no fp32 master copy anywhere
    assert math.isfinite(t.evaluate()["val/loss"])


# --- validation: one line naming the key ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.precision=fp8", "train.precision"),
        ("train.loss_scale=-1", "train.loss_scale"),
        ("train.loss_scale=128", "train.loss_scale"),  # with fp32
        ("train.activation=gelu", "train.activation"),
        ("train.celu_alpha=0", "train.celu_alpha"),
        ("optim.bn_bias_lr_factor=0", "optim.bn_bias_lr_factor"),
        ("optim.bn_bias_weight_decay_factor=-1", "optim.bn_bias_weight_decay_factor"),
        ("optim.lars_threshold=-0.1", "optim.lars_threshold"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        config.load(None, TINY + [override])
