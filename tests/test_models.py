"""Model zoo: every registered model trains on CIFAR- and MNIST-shaped batches; sizes match the papers."""

from __future__ import annotations

import importlib
import inspect
import math
import pkgutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sweeplab import models
from sweeplab.models import catalog

# Small variants so a forward and backward pass takes milliseconds on a CPU; a model missing
# here is tested with its defaults, so a new registration is never skipped.
SMALL: dict[str, dict] = {
    "densenet": dict(depth=22, growth_rate=4),
    "pyramidnet": dict(depth=11, alpha=12, shakedrop=0.5),
    "resnet": dict(depth=8),
    "resnet9": dict(channels=8),
    "resnet_preact": dict(depth=8),
    "resnext": dict(depth=11, cardinality=2, base_channels=4),
    "se_resnet_preact": dict(depth=8),
    "shake_shake": dict(depth=8, initial_channels=8),
    "vgg": dict(n_channels=8, n_layers=6),
    "wrn": dict(depth=10, widening_factor=1),
}

# The other code paths of each family: block types, regularisers, switches.
VARIANTS: list[tuple[str, dict]] = [
    ("densenet", dict(depth=10, block_type="basic", growth_rate=4, compression_rate=1.0, drop_rate=0.2)),
    ("pyramidnet", dict(depth=8, block_type="basic", alpha=8)),
    ("resnet", dict(depth=11, block_type="bottleneck", initial_channels=4)),
    (
        "resnet_preact",
        dict(
            depth=11,
            block_type="bottleneck",
            initial_channels=4,
            remove_first_relu=True,
            add_last_bn=True,
            preact_stage=[True, False, False],
        ),
    ),
    ("se_resnet_preact", dict(depth=11, block_type="bottleneck", initial_channels=4, se_reduction=4)),
    ("shake_shake", dict(depth=8, initial_channels=8, shake_backward=False, shake_image=False)),
    ("vgg", dict(n_channels=8, n_layers=6, use_bn=False)),
    ("vgg", dict(stage_channels=[8, 8, 16, 16, 16], stage_layers=[1, 1, 2, 1, 1], bn_scale_init="uniform")),
    ("resnet9", dict(channels=8, celu_alpha=0.075)),
    ("wrn", dict(depth=10, widening_factor=1, drop_rate=0.3)),
]


def _id(value: object) -> str:
    return ",".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else str(value)


INPUTS = [pytest.param((2, 3, 32, 32), id="cifar"), pytest.param((2, 1, 28, 28), id="mnist")]


def _train_step(name: str, opts: dict, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    num_classes = 7  # not 10, so a hard-coded head size would show
    model = models.build(name, num_classes=num_classes, in_channels=shape[1], **opts)
    model.train()
    x, y = torch.randn(shape), torch.randint(num_classes, (shape[0],))
    out = model(x)
    assert out.shape == (shape[0], num_classes)
    loss = F.cross_entropy(out, y)
    assert torch.isfinite(loss)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient reaches {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient in {pname}"
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize("name", sorted(catalog.MODELS))
def test_catalog_entry_is_the_builders_signature(name: str) -> None:
    """Validation reads names and options from the table (no torch); they must be what `build` takes."""
    entry = catalog.MODELS[name]
    importlib.import_module(entry.module)
    params = inspect.signature(models._REGISTRY[name]).parameters
    assert {k: p.default for k, p in params.items()} == {**catalog.BUILD_ARGS, **entry.options}
    assert list(params) == [*catalog.BUILD_ARGS, *entry.options], "keep the builder's order (sweeplab models)"


def test_every_registered_model_is_in_the_catalog() -> None:
    """A new `@register_model` (under any spelling) without a catalog row fails here."""
    package = Path(models.__file__).parent
    for info in pkgutil.iter_modules([str(package)]):
        importlib.import_module(f"sweeplab.models.{info.name}")
    assert sorted(models._REGISTRY) == sorted(catalog.MODELS) == models.names()
    for name, fn in models._REGISTRY.items():
        assert fn.__module__ == catalog.MODELS[name].module


def test_catalog_optimizers_are_the_optim_registry() -> None:
    from sweeplab import optim

    assert catalog.OPTIMIZERS == tuple(optim.names()) and "lars" in optim.names()


# `sweeplab models --no-counts` as it printed when the options were read from the builders' source
LISTING = [
    "densenet             depth=100, block_type='bottleneck', growth_rate=12, compression_rate=0.5, drop_rate=0.0",
    "pyramidnet           depth=272, block_type='bottleneck', alpha=200, shakedrop=0.0",
    "resnet               depth=110, block_type='basic', initial_channels=16",
    "resnet9              channels=64, celu_alpha=0.0, output_scale=0.125",
    "resnet_preact        depth=20, block_type='basic', initial_channels=16,"
    " remove_first_relu=False, add_last_bn=False, preact_stage=(True, True, True)",
    "resnext              depth=29, cardinality=8, base_channels=64",
    "se_resnet_preact     depth=110, block_type='basic', initial_channels=16,"
    " remove_first_relu=False, add_last_bn=False, preact_stage=(True, True, True), se_reduction=16",
    "shake_shake          depth=26, initial_channels=96, shake_forward=True, shake_backward=True, shake_image=True",
    "vgg                  n_channels=64, n_layers=15, use_bn=True, stage_channels=(), stage_layers=(),"
    " bn_scale_init='ones'",
    "wrn                  depth=28, widening_factor=10, drop_rate=0.0",
]


def test_models_listing_is_unchanged(capsys: pytest.CaptureFixture[str]) -> None:
    from sweeplab.commands.models import list_models

    assert list_models(counts=False) == 0
    assert capsys.readouterr().out.splitlines() == LISTING


def test_validating_a_sweep_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from sweeplab.search_spaces import load; "
        "s = load('sweeps/quickstart.yaml', smoke=True); s.check(); "
        "assert len(s.trials()) == 8 and 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("shape", INPUTS)
@pytest.mark.parametrize("name", models.names())
def test_every_model_trains(name: str, shape: tuple[int, ...]) -> None:
    _train_step(name, SMALL.get(name, {}), shape)


@pytest.mark.parametrize("shape", INPUTS)
@pytest.mark.parametrize("name,opts", VARIANTS, ids=_id)
def test_variants_train(name: str, opts: dict, shape: tuple[int, ...]) -> None:
    _train_step(name, opts, shape)


def _count(name: str, **opts) -> int:
    with torch.device("meta"):  # no memory, no init cost: big models are counted in milliseconds
        return models.num_parameters(models.build(name, **opts))


def _paper_tolerance(paper_millions: str) -> float:
    """0.3 %, or half a unit of the last printed digit, whichever is larger (papers round)."""
    decimals = len(paper_millions.partition(".")[2])
    return max(0.003 * float(paper_millions) * 1e6, 0.5 * 10 ** (6 - decimals))


# The paper's PyramidNet and ResNet-preact-1001 counts are below what the paper's own architecture
# has: the authors' code (and its independent ports) give the exact counts pinned further down.
_PAPER_LOW = pytest.mark.xfail(strict=True, reason="paper's printed count is below its own architecture's")

# (name, options, parameter count as printed in the paper, in millions)
PAPER_COUNTS = [
    ("resnet", dict(depth=110), "1.7"),  # arXiv:1512.03385 Table 6
    ("resnet_preact", dict(depth=164, block_type="bottleneck"), "1.7"),  # arXiv:1603.05027 Table 2
    pytest.param("resnet_preact", dict(depth=1001, block_type="bottleneck"), "10.2", marks=_PAPER_LOW),
    ("wrn", dict(depth=28, widening_factor=10), "36.5"),  # arXiv:1605.07146 Table 5
    ("densenet", dict(depth=40, block_type="basic", growth_rate=12, compression_rate=1.0), "1.0"),
    ("densenet", dict(depth=100, block_type="basic", growth_rate=12, compression_rate=1.0), "7.0"),
    ("densenet", dict(depth=100, block_type="basic", growth_rate=24, compression_rate=1.0), "27.2"),
    ("densenet", dict(depth=100, growth_rate=12), "0.8"),  # DenseNet-BC, arXiv:1608.06993 Table 2
    ("densenet", dict(depth=250, growth_rate=24), "15.3"),
    ("densenet", dict(depth=190, growth_rate=40), "25.6"),
    pytest.param("pyramidnet", dict(depth=110, block_type="basic", alpha=48), "1.7", marks=_PAPER_LOW),
    pytest.param("pyramidnet", dict(depth=110, block_type="basic", alpha=84), "3.8", marks=_PAPER_LOW),
    pytest.param("pyramidnet", dict(depth=110, block_type="basic", alpha=270), "28.3", marks=_PAPER_LOW),
    pytest.param("pyramidnet", dict(depth=164, alpha=270), "27.0", marks=_PAPER_LOW),
    pytest.param("pyramidnet", dict(depth=272, alpha=200), "26.0", marks=_PAPER_LOW),
    ("resnext", dict(depth=29, cardinality=8, base_channels=64), "34.4"),  # arXiv:1611.05431 Table 7
    ("resnext", dict(depth=29, cardinality=16, base_channels=64), "68.1"),
    ("shake_shake", dict(depth=26, initial_channels=32), "2.9"),  # arXiv:1705.07485 Table 1
    ("shake_shake", dict(depth=26, initial_channels=64), "11.7"),
    ("shake_shake", dict(depth=26, initial_channels=96), "26.2"),
]


@pytest.mark.parametrize("name,opts,paper", PAPER_COUNTS, ids=_id)
def test_parameter_count_matches_paper(name: str, opts: dict, paper: str) -> None:
    ours = _count(name, **opts)
    assert abs(ours - float(paper) * 1e6) <= _paper_tolerance(paper), f"{name} {opts}: {ours:,} vs {paper}M"


# Exact counts of the authors' architectures as published by an independent port (osmr/imgclsmob,
# CIFAR-10 heads), or derived by hand (resnet9: convs 6,563,520 + BN 4,480 + linear 5,120).
EXACT_COUNTS = [
    ("resnet_preact", dict(depth=1001, block_type="bottleneck"), 10_327_706),
    ("wrn", dict(depth=28, widening_factor=10), 36_479_194),
    ("pyramidnet", dict(depth=110, block_type="basic", alpha=48), 1_772_706),
    ("pyramidnet", dict(depth=110, block_type="basic", alpha=84), 3_904_446),
    ("pyramidnet", dict(depth=110, block_type="basic", alpha=270), 28_485_477),
    ("pyramidnet", dict(depth=164, alpha=270), 27_216_021),
    ("pyramidnet", dict(depth=200, alpha=240), 26_752_702),
    ("pyramidnet", dict(depth=236, alpha=220), 26_969_046),
    ("pyramidnet", dict(depth=272, alpha=200), 26_210_842),
    ("densenet", dict(depth=100, growth_rate=12), 769_162),
    ("densenet", dict(depth=190, growth_rate=40), 25_624_430),
    ("densenet", dict(depth=250, growth_rate=24), 15_324_406),
    ("resnext", dict(depth=29, cardinality=32, base_channels=4), 4_775_754),
    ("resnext", dict(depth=29, cardinality=16, base_channels=64), 68_155_210),
    ("shake_shake", dict(depth=26, initial_channels=32), 2_923_162),
    ("resnet9", dict(), 6_573_120),
    # the reference's VGG (configs/vgg.json): 13 biased convs + BN, fc 512 -> 10; benchmarks/source_param_counts.py
    ("vgg", dict(stage_channels=[64, 128, 256, 512, 512], stage_layers=[2, 2, 3, 3, 3]), 14_728_266),
]


@pytest.mark.parametrize("name,opts,exact", EXACT_COUNTS, ids=_id)
def test_parameter_count_exact(name: str, opts: dict, exact: int) -> None:
    assert _count(name, **opts) == exact


def test_shakedrop_off_adds_no_parameters_and_defaults_are_the_reference_ones() -> None:
    assert _count("pyramidnet", shakedrop=0.5) == _count("pyramidnet") == 26_210_842
    assert _count("resnet_preact", depth=110) == 1_730_522  # the SE hook left resnet_preact alone
    assert _count("se_resnet_preact") > _count("resnet_preact", depth=110)


def test_unknown_option_is_named() -> None:
    with pytest.raises(ValueError, match="growth_rat"):
        models.build("densenet", growth_rat=12)
    with pytest.raises(ValueError, match="shakedorp"):
        models.build("pyramidnet", shakedorp=0.5)


def test_unknown_model_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError) as err:
        models.build("resnet1000")
    for name in models.names():
        assert name in str(err.value)


BAD_VALUES = [
    ("vgg", dict(n_layers=14)),
    ("densenet", dict(depth=101)),
    ("pyramidnet", dict(shakedrop=1.0)),
    ("densenet", dict(compression_rate=0)),
    ("resnet9", dict(celu_alpha=-1.0)),
    ("resnet9", dict(output_scale=0.0)),
    ("vgg", dict(stage_channels=[64, 128], stage_layers=[2])),
    ("vgg", dict(stage_channels=[64, 0], stage_layers=[2, 2])),
    ("vgg", dict(bn_scale_init="normal")),
]


@pytest.mark.parametrize("name,opts", BAD_VALUES, ids=_id)
def test_bad_values_are_rejected(name: str, opts: dict) -> None:
    with pytest.raises(ValueError):
        models.build(name, **opts)


STOCHASTIC = [("shake_shake", SMALL["shake_shake"]), ("pyramidnet", SMALL["pyramidnet"])]


@pytest.mark.parametrize("name,opts", STOCHASTIC)
def test_stochastic_depth_models_are_random_in_training_only(name: str, opts: dict) -> None:
    torch.manual_seed(0)
    model = models.build(name, **opts)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        torch.manual_seed(1)
        a = model(x)
        torch.manual_seed(2)
        b = model(x)
    assert torch.equal(a, b)
    model.train()
    with torch.no_grad():
        torch.manual_seed(1)
        c = model(x)
        torch.manual_seed(2)
        d = model(x)
        torch.manual_seed(1)
        e = model(x)
    assert not torch.allclose(c, d)
    assert torch.allclose(c, e)  # and the randomness comes from torch's RNG, so seeds reproduce it


def test_shake_functions_mix_forward_and_backward_with_their_own_coefficients() -> None:
    from sweeplab.models.pyramidnet import ShakeDropFunction
    from sweeplab.models.shake_shake import ShakeShakeFunction

    x1, x2 = torch.ones(2, 3, requires_grad=True), torch.zeros(2, 3, requires_grad=True)
    alpha, beta = torch.tensor([[0.25], [0.75]]), torch.tensor([[0.9], [0.1]])
    y = ShakeShakeFunction.apply(x1, x2, alpha, beta)
    y.sum().backward()
    assert torch.allclose(y, alpha.expand(2, 3))
    assert torch.allclose(x1.grad, beta.expand(2, 3)) and torch.allclose(x2.grad, 1 - beta.expand(2, 3))

    x = torch.ones(2, 3, requires_grad=True)
    gate = torch.tensor([[1.0], [0.0]])
    y = ShakeDropFunction.apply(x, gate, torch.tensor([[-0.5], [-0.5]]), torch.tensor([[0.3], [0.3]]))
    y.sum().backward()
    # kept (gate 1): identity both ways; dropped (gate 0): alpha forward, beta backward
    assert torch.allclose(y[:, 0], torch.tensor([1.0, -0.5]))
    assert torch.allclose(x.grad[:, 0], torch.tensor([1.0, 0.3]))


def test_shakedrop_eval_scales_by_the_keep_probability() -> None:
    from sweeplab.models.pyramidnet import ShakeDrop

    layer = ShakeDrop(0.25).eval()
    assert torch.equal(layer(torch.ones(3)), torch.full((3,), 0.75))
    assert math.isclose(ShakeDrop(0.0).train()(torch.ones(1)).item(), 1.0)


def test_vgg_source_layout_is_the_references_net() -> None:
    """Five stages of conv3x3 (with bias) + BN + ReLU and a max-pool, as configs/vgg.json builds it, with
    BatchNorm scales drawn from U(0, 1) under bn_scale_init uniform (the source's `weight.data.uniform_()`)."""
    torch.manual_seed(0)
    model = models.build("vgg", stage_channels=[64, 128, 256, 512, 512], stage_layers=[2, 2, 3, 3, 3])
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64] * 2 + [128] * 2 + [256] * 3 + [512] * 6
    assert all(c.bias is not None for c in convs)
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules()) == 5
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(b.weight, torch.ones_like(b.weight)) for b in bns)  # this package's init by default
    torch.manual_seed(0)
    uniform = models.build("vgg", stage_channels=[8, 8], stage_layers=[1, 1], bn_scale_init="uniform")
    scales = torch.cat([m.weight.detach() for m in uniform.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert 0 <= scales.min() and scales.max() < 1 and scales.std() > 0.1
    assert models.build("vgg", stage_channels=[8, 8], stage_layers=[1, 1])(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_resnet9_output_scale_multiplies_the_logits() -> None:
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(0)
    eighth = models.build("resnet9", channels=8).eval()
    torch.manual_seed(0)
    sixteenth = models.build("resnet9", channels=8, output_scale=1 / 16).eval()
    with torch.no_grad():
        assert torch.allclose(sixteenth(x), eighth(x) / 2)
