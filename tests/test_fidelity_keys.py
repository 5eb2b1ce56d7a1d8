"""The general keys that encode the sources' recipes: pure fp16 (apex O3) and its float32-BatchNorm variant (the
reference's argparse-era `--fp16`), CELU for ReLU, frozen BatchNorm scales, BatchNorm-bias lr factors that follow
the schedule, which tensors weight decay applies to. Checked by hand on toy tensors and through a `Trainer` on a
few synthetic images (on the CPU)."""

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


# --- fp16 with BatchNorm in float32 (the reference's `--fp16`) ------------------------------------------


def _half_conv_bn() -> nn.Sequential:
    """conv1x1 (weight 1) -> BatchNorm, halved, then the BatchNorm back in float32 as the reference did."""
    net = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.BatchNorm2d(1))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
    net.half()
    assert tweaks.float_batchnorm(net) == 1
    return net


def test_fp32_batchnorm_by_hand():
    net = _half_conv_bn()
    assert net[0].weight.dtype == torch.float16
    assert {t.dtype for t in (net[1].weight, net[1].bias, net[1].running_mean, net[1].running_var)} == {torch.float32}
    # a batch of 1, 2, 3, 10: mean 4, biased variance 12.5, unbiased 50/3
    x = torch.tensor([1.0, 2.0, 3.0, 10.0]).view(4, 1, 1, 1).half()
    y = net(x)
    assert y.dtype == torch.float16  # half in, half out: the next half layer takes it as is
    hand = [(v - 4) / math.sqrt(12.5 + 1e-5) for v in (1, 2, 3, 10)]
    assert y.flatten().tolist() == pytest.approx(hand, abs=1e-3)
    # running statistics kept in float32: 0.1 x 4 and 0.9 x 1 + 0.1 x 50/3 = 2.5666667 (fp16 would store 2.5664)
    assert net[1].running_mean.item() == pytest.approx(0.4, abs=1e-7)
    assert net[1].running_var.item() == pytest.approx(0.9 + 5 / 3, abs=1e-6)
    # one SGD step of lr 0.01 on the scale 1 with gradient 0.01: 1 - 1e-4 = 0.9999 in float32; in fp16 (spacing
    # 2^-11 just below 1) the step would be lost and the scale would stay 1
    net[1].weight.grad = torch.tensor([0.01])
    torch.optim.SGD([net[1].weight], lr=0.01).step()
    assert net[1].weight.item() == pytest.approx(0.9999, abs=1e-7)
    half_scale = torch.ones(1, dtype=torch.float16)
    assert (half_scale - torch.tensor([1e-4], dtype=torch.float16)).item() == 1.0


def test_fp32_batchnorm_in_a_trainer():
    t = trainer("train.precision=fp16_pure", "train.fp32_batchnorm=true", "train.loss_scale=1.0")
    bn = {id(p) for m in t.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for p in m.parameters()}
    assert bn and {p.dtype for p in t.model.parameters() if id(p) in bn} == {torch.float32}
    assert {p.dtype for p in t.model.parameters() if id(p) not in bn} == {torch.float16}
    assert {b.dtype for b in t.model.buffers() if b.is_floating_point()} == {torch.float32}  # BN statistics
    out = t.train_epoch()
    assert math.isfinite(out["train/loss"])
    state = {id(p): s["momentum_buffer"].dtype for p, s in t.optimizer.state.items()}
    assert {state[i] for i in bn} == {torch.float32} and torch.float16 in set(state.values())
    assert math.isfinite(t.evaluate()["val/loss"])


# --- which tensors weight decay applies to ---------------------------------------------------------------


def test_weight_decay_on_kernels_and_not_bn_in_a_trainer():
    # resnet9 here: bias-free convs, BatchNorm, a bias-free linear layer; kernels = everything but BN
    t = trainer("optim.weight_decay_on=kernels")
    decay = {id(p): g["weight_decay"] for g in t.optimizer.param_groups for p in g["params"]}
    for name, p in t.model.named_parameters():
        assert decay[id(p)] == (5e-4 if p.ndim > 1 else 0.0), name
    same = trainer("optim.weight_decay_on=not_bn")  # no other 1-D tensor in this net: the same split
    sizes = [len(g["params"]) for g in t.optimizer.param_groups]
    assert [len(g["params"]) for g in same.optimizer.param_groups] == sizes


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
        ("train.fp32_batchnorm=true", "train.fp32_batchnorm"),  # with fp32
        ("optim.weight_decay_on=bn", "optim.weight_decay_on"),
        ("optim.no_weight_decay_on_bn=true optim.weight_decay_on=not_bn", "optim.weight_decay_on"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        config.load(None, TINY + override.split())
