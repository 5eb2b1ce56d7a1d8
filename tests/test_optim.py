"""Optimisers, weight-decay groups, LARS, gradient clipping, ghost batch norm and flip TTA.

Updates are checked against hand computations on toy tensors; the engine's parts (clipping,
ghost BN, flip TTA) run through a `Trainer` on a few synthetic images.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sweeplab import config, engine, ghost_bn, optim
from sweeplab.schema import OptimConfig

TINY = [
    "data.name=synthetic",
    "data.synthetic_shape=[1,8,8]",
    "data.synthetic_classes=4",
    "data.synthetic_train=64",
    "data.synthetic_test=40",
    "data.batch_size=16",
    "data.eval_batch_size=16",
    "data.device=cpu",
    "model.name=resnet_preact",
    "model.depth=8",
    "model.initial_channels=4",
    "train.epochs=1",
    "train.threads=1",
]


def trainer(*extra: str) -> engine.Trainer:
    return engine.Trainer(config.load(None, TINY + list(extra)))


def toy(w: list[float], g: list[float], bias: float | None = None, bias_grad: float = 0.0) -> nn.Linear:
    """A 2 -> 1 linear layer with weight `w` and gradient `g` set by hand."""
    layer = nn.Linear(2, 1, bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([w]))
        if bias is not None:
            layer.bias.fill_(bias)
    layer.weight.grad = torch.tensor([g])
    if bias is not None:
        layer.bias.grad = torch.tensor([bias_grad])
    return layer


def small_net() -> nn.Sequential:
    """conv (4-D weight, bias), BN (scale, shift), linear (2-D weight, bias)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))


# --- the registry --------------------------------------------------------------------------


def test_registry_has_the_promised_optimisers():
    assert {"sgd", "adam", "amsgrad", "lars"} <= set(optim.names())


@pytest.mark.parametrize("name", optim.names())
def test_every_optimiser_descends_a_quadratic(name):
    torch.manual_seed(0)
    layer = nn.Linear(4, 1)
    x = torch.randn(32, 4)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.3
    opt = optim.build(layer, OptimConfig(name=name, lr=0.05, weight_decay=0.0))
    loss = lambda: ((layer(x).squeeze(1) - y) ** 2).mean()  # noqa: E731
    first = loss().item()
    for _ in range(20):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < 0.5 * first


# --- SGD and Adam ----------------------------------------------------------------------------


def test_sgd_nesterov_step():
    # torch SGD with coupled L2: d = g + wd w; first step buf = d; Nesterov d' = d + m buf = 1.9 d.
    # d = [0.6, 0.8] + 0.01 [3, 4] = [0.63, 0.84]; w' = w - 0.1 * 1.9 * d.
    layer = toy([3.0, 4.0], [0.6, 0.8])
    opt = optim.build(layer, OptimConfig(name="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01))
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["momentum"] == 0.9 and opt.param_groups[0]["nesterov"] is True
    opt.step()
    assert layer.weight.detach()[0].tolist() == pytest.approx([2.8803, 3.8404])


def test_sgd_plain_momentum_step():
    layer = toy([3.0, 4.0], [0.6, 0.8])
    opt = optim.build(layer, OptimConfig(name="sgd", lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.01))
    opt.step()
    assert layer.weight.detach()[0].tolist() == pytest.approx([2.937, 3.916])  # w - 0.1 * d


def test_sgd_without_momentum_drops_nesterov():
    # torch refuses nesterov without momentum; a sweep over momentum must not crash at 0.
    opt = optim.build(toy([1.0, 1.0], [0.0, 0.0]), OptimConfig(name="sgd", momentum=0.0, nesterov=True))
    assert opt.param_groups[0]["nesterov"] is False


@pytest.mark.parametrize("name, amsgrad", [("adam", False), ("amsgrad", True)])
def test_adam_and_amsgrad(name, amsgrad):
    layer = toy([3.0, -4.0], [0.6, 0.8])
    opt = optim.build(layer, OptimConfig(name=name, lr=0.01, betas=[0.8, 0.99], weight_decay=0.0))
    assert isinstance(opt, torch.optim.Adam)
    assert opt.param_groups[0]["amsgrad"] is amsgrad
    assert tuple(opt.param_groups[0]["betas"]) == (0.8, 0.99)
    opt.step()
    # Adam's bias-corrected first step is lr * g / |g| (up to eps): -0.01 per coordinate.
    assert layer.weight.detach()[0].tolist() == pytest.approx([2.99, -4.01], abs=1e-6)


# --- LARS (https://arxiv.org/abs/1708.03888, Algorithm 1) ----------------------------------------


def test_lars_without_trust_coefficient_two_steps():
    # w = [3, 4] (|w| = 5), g = [0.6, 0.8] (|g| = 1), wd = 0.01, lr = 0.1, momentum 0.9.
    # step 1: ratio = 5 / (1 + 0.01 * 5) = 4.7619; d = ratio * (g + wd w) = 4.7619 * [0.63, 0.84] = [3, 4]
    #         buf = d; w1 = w - 0.1 * buf = [2.7, 3.6]
    # step 2: |w1| = 4.5; ratio = 4.5 / 1.045; d = ratio * ([0.6, 0.8] + 0.01 * w1) = [2.7, 3.6]
    #         buf = 0.9 * [3, 4] + [2.7, 3.6] = [5.4, 7.2]; w2 = w1 - 0.1 * buf = [2.16, 2.88]
    layer = toy([3.0, 4.0], [0.6, 0.8])
    opt = optim.build(
        layer,
        OptimConfig(name="lars", lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.01, lars_trust_coefficient=0.0),
    )
    opt.step()
    assert layer.weight.detach()[0].tolist() == pytest.approx([2.7, 3.6], rel=1e-6)
    assert opt.param_groups[0]["weight_decay"] == 0.01  # restored after the step
    layer.weight.grad = torch.tensor([[0.6, 0.8]])
    opt.step()
    assert layer.weight.detach()[0].tolist() == pytest.approx([2.16, 2.88], rel=1e-6)


def test_lars_with_trust_coefficient():
    # local lr = eta * |w| / (|g| + wd |w|) = 0.001 * 5 / 1.05; update = 0.1 * local lr * [0.63, 0.84]
    layer = toy([3.0, 4.0], [0.6, 0.8])
    opt = optim.build(
        layer,
        OptimConfig(name="lars", lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.01, lars_trust_coefficient=0.001),
    )
    opt.step()
    assert layer.weight.detach()[0].tolist() == pytest.approx([2.9997, 3.9996], rel=1e-7)


def test_lars_leaves_excluded_bias_to_plain_sgd():
    # With no decay on BN/bias, 1-D tensors skip the layer-wise ratio: b' = b - lr * g_b.
    layer = toy([3.0, 4.0], [0.6, 0.8], bias=1.0, bias_grad=0.5)
    opt = optim.build(
        layer,
        OptimConfig(name="lars", lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.01, no_weight_decay_on_bn=True),
    )
    opt.step()
    assert layer.bias.item() == pytest.approx(0.95)
    assert layer.weight.detach()[0].tolist() == pytest.approx([2.7, 3.6], rel=1e-6)


# --- weight decay groups ---------------------------------------------------------------------


def _decay_of(opt: torch.optim.Optimizer) -> dict[int, float]:
    return {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}


@pytest.mark.parametrize("exclude", [True, False])
def test_weight_decay_groups(exclude):
    net = small_net()
    conv, bn, lin = net[0], net[1], net[3]
    opt = optim.build(net, OptimConfig(name="sgd", weight_decay=0.1, no_weight_decay_on_bn=exclude))
    decay = _decay_of(opt)
    assert len(decay) == len(list(net.parameters()))  # every parameter in exactly one group
    off = 0.0 if exclude else 0.1
    # Linear weights are decayed too (the reference decayed only tensors named `conv.weight`).
    assert decay[id(conv.weight)] == decay[id(lin.weight)] == 0.1
    assert decay[id(bn.weight)] == decay[id(bn.bias)] == decay[id(conv.bias)] == decay[id(lin.bias)] == off


@pytest.mark.parametrize(
    ("rule", "decayed"),
    [
        ("all", {"0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"}),
        # the Flax example's `x.ndim > 1`: conv and linear weights only
        ("kernels", {"0.weight", "3.weight"}),
        # the reference's `--no_weight_decay_on_bn` ('bn' not in the name): all but BatchNorm, biases included
        ("not_bn", {"0.weight", "0.bias", "3.weight", "3.bias"}),
    ],
)
def test_weight_decay_on(rule, decayed):
    net = small_net()
    opt = optim.build(net, OptimConfig(name="sgd", weight_decay=0.1, weight_decay_on=rule))
    decay = _decay_of(opt)
    assert {n for n, p in net.named_parameters() if decay[id(p)] == 0.1} == decayed
    spared = {n for n, _ in net.named_parameters()} - decayed
    assert {n for n, p in net.named_parameters() if decay[id(p)] == 0.0} == spared
    if rule == "kernels":  # the older key says the same
        legacy = optim.build(net, OptimConfig(name="sgd", weight_decay=0.1, no_weight_decay_on_bn=True))
        assert _decay_of(legacy) == decay
    # BatchNorm-bias factors: the shift group is spared under every rule but `all`
    factors = OptimConfig(name="sgd", weight_decay=0.1, weight_decay_on=rule, bn_bias_weight_decay_factor=0.5)
    shift = next(g for g in optim.build(net, factors).param_groups if any(p is net[1].bias for p in g["params"]))
    assert shift["weight_decay"] == (pytest.approx(0.05) if rule == "all" else 0.0)


@pytest.mark.parametrize("name", optim.names())
def test_excluded_parameters_are_not_decayed_by_any_optimiser(name):
    # With zero gradients only weight decay moves a parameter.
    net = small_net()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt = optim.build(net, OptimConfig(name=name, lr=0.5, momentum=0.0, weight_decay=0.1, no_weight_decay_on_bn=True))
    opt.step()
    moved = {n for n, p in net.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert moved == {"0.weight", "3.weight"}
    if name == "sgd":  # w' = w - lr * wd * w
        assert torch.allclose(net[3].weight.detach(), 0.95 * before["3.weight"])


# --- the engine: gradient clipping, ghost BN, flip TTA ----------------------------------------


def _grad_norms(t: engine.Trainer) -> list[float]:
    norms: list[float] = []

    def record(opt, args, kwargs):
        grads = [p.grad.flatten() for p in t.model.parameters() if p.grad is not None]
        norms.append(torch.cat(grads).norm().item())

    t.optimizer.register_step_pre_hook(record)
    t.train_epoch()
    return norms


def test_grad_clip_limits_the_global_norm():
    free = _grad_norms(trainer("optim.grad_clip=0"))
    clipped = _grad_norms(trainer("optim.grad_clip=0.05"))
    assert len(clipped) == 4 and min(free) > 0.1  # the limit binds on this run
    assert clipped == pytest.approx([0.05] * 4, rel=1e-4)


def test_ghost_bn_normalises_each_chunk_separately():
    torch.manual_seed(0)
    ghost = ghost_bn.apply(nn.Sequential(nn.BatchNorm2d(3)), 4)[0]
    assert isinstance(ghost, ghost_bn.GhostBatchNorm2d)
    with torch.no_grad():
        ghost.weight.uniform_(0.5, 2.0)
        ghost.bias.uniform_(-1.0, 1.0)
    plain = nn.BatchNorm2d(3)
    plain.load_state_dict(ghost.state_dict())
    # Chunks with very different statistics, so per-chunk and whole-batch BN disagree.
    x = torch.randn(12, 3, 5, 5) * torch.arange(1, 13.0).view(12, 1, 1, 1) + torch.arange(12.0).view(12, 1, 1, 1)
    out = ghost(x)
    expected = torch.cat([plain(chunk) for chunk in x.split(4)])  # BN run on each chunk in turn
    assert torch.allclose(out, expected, atol=1e-5)
    assert not torch.allclose(out, nn.functional.batch_norm(x, None, None, ghost.weight, ghost.bias, True), atol=1e-2)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.allclose(getattr(ghost, name).float(), getattr(plain, name).float()), name
    ghost.eval(), plain.eval()
    assert torch.allclose(ghost(x), plain(x))  # evaluation uses the running statistics as usual


@pytest.mark.parametrize("g", [0, 8])
def test_trainer_applies_ghost_batch_size(g):
    bns = [m for m in trainer(f"train.ghost_batch_size={g}").model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns
    assert all(isinstance(m, ghost_bn.GhostBatchNorm2d) == (g > 0) for m in bns)
    assert all(m.ghost_batch_size == g for m in bns if g)


@pytest.mark.parametrize("tta", [True, False])
def test_flip_tta_averages_logits_of_image_and_mirror(tta):
    t = trainer(f"train.flip_tta={str(tta).lower()}")
    torch.manual_seed(1)
    # A linear read-out of the raw pixels: its logits change when the image is mirrored.
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    t.model = t.forward = net
    got = t.evaluate()
    loss, wrong, n = 0.0, 0, 0
    with torch.no_grad():
        for x, y in t.test_loader.epoch():
            logits = net(x)
            mirrored = net(x.flip(3))  # horizontal mirror: NCHW width axis
            assert not torch.allclose(logits, mirrored, atol=1e-3)
            if tta:
                logits = (logits + mirrored) / 2
            loss += nn.functional.cross_entropy(logits, y, reduction="sum").item()
            wrong += (logits.argmax(1) != y).sum().item()
            n += len(y)
    assert n == 40
    assert got["val/loss"] == pytest.approx(loss / n, rel=1e-5)
    assert got["val/error"] == pytest.approx(100.0 * wrong / n)


# --- the reference's LARS: plain momentum, weight-norm threshold (optim/lars.py) --------------------


def test_lars_reference_form_two_steps():
    # w = [3, 4] (|w| 5), g = [0.6, 0.8] (|g| 1), wd 0.1, lr 0.1, momentum 0.9, no Nesterov.
    # step 1: local = 5 / (1 + 0.5) = 10/3; d = g + wd w = [0.9, 1.2]; buf = 0.1 * 10/3 * d = [0.3, 0.4]
    #         w1 = [2.7, 3.6]
    # step 2: |w1| = 4.5; local = 4.5 / 1.45; d = [0.87, 1.16]; 0.1 * local * d = [0.27, 0.36]
    #         buf = 0.9 * [0.3, 0.4] + [0.27, 0.36] = [0.54, 0.72]; w2 = [2.16, 2.88]
    layer = toy([3.0, 4.0], [0.6, 0.8])
    opt = optim.build(layer, OptimConfig(name="lars", lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.1))
    opt.step()
    assert layer.weight.detach()[0].tolist() == pytest.approx([2.7, 3.6], rel=1e-6)
    layer.weight.grad = torch.tensor([[0.6, 0.8]])
    opt.step()
    assert layer.weight.detach()[0].tolist() == pytest.approx([2.16, 2.88], rel=1e-6)


@pytest.mark.parametrize(("threshold", "expected"), [(0.01, [-0.057, -0.076]), (0.0, [0.0027, 0.0036])])
def test_lars_threshold_gives_small_weights_local_lr_one(threshold, expected):
    # w = [0.003, 0.004] (|w| 0.005 < 0.01), g = [0.6, 0.8], wd 0, lr 0.1.
    # threshold 1e-2: local lr 1, w' = w - 0.1 g = [-0.057, -0.076]
    # threshold 0:    local lr |w| / |g| = 0.005, w' = w - 0.1 * 0.005 * g = [0.0027, 0.0036]
    layer = toy([0.003, 0.004], [0.6, 0.8])
    cfg = OptimConfig(name="lars", lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.0, lars_threshold=threshold)
    optim.build(layer, cfg).step()
    assert layer.weight.detach()[0].tolist() == pytest.approx(expected, rel=1e-5)


# --- BatchNorm-bias lr and weight-decay factors ---------------------------------------------------


def test_bn_bias_group_has_its_own_lr_and_decay():
    # lr 0.4, wd 5e-4, factors 16 and 1/16: the BN shift's group has lr 6.4 and wd 3.125e-5.
    # One plain SGD step on the shift b = 0.5 with gradient 1: b' = 0.5 - 6.4 * (1 + 3.125e-5 * 0.5) = -5.9001
    net = small_net()
    bn = net[1]
    cfg = OptimConfig(
        name="sgd", lr=0.4, momentum=0.0, weight_decay=5e-4, bn_bias_lr_factor=16, bn_bias_weight_decay_factor=1 / 16
    )
    opt = optim.build(net, cfg)
    group = next(g for g in opt.param_groups if any(p is bn.bias for p in g["params"]))
    assert [id(p) for p in group["params"]] == [id(bn.bias)]  # conv and linear biases stay with the weights
    assert group["lr"] == pytest.approx(6.4) and group["weight_decay"] == pytest.approx(3.125e-5)
    optim.set_lr(opt, 0.2)  # the schedule moves every group; the factor stays
    assert group["lr"] == pytest.approx(3.2) and opt.param_groups[0]["lr"] == pytest.approx(0.2)
    optim.set_lr(opt, 0.4)
    with torch.no_grad():
        bn.bias.fill_(0.5)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    bn.bias.grad = torch.ones_like(bn.bias)
    opt.step()
    assert bn.bias.detach().tolist() == pytest.approx([-5.9001, -5.9001], rel=1e-6)


def test_without_factors_the_groups_keep_their_old_layout():
    # checkpoints of older runs hold one or two groups: factors of 1 must not add a third
    net = small_net()
    assert len(optim.build(net, OptimConfig(name="sgd")).param_groups) == 1
    assert len(optim.build(net, OptimConfig(name="sgd", no_weight_decay_on_bn=True)).param_groups) == 2
