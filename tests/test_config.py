"""The config loader: a typed model section with the flat YAML layout, a pure `from_dict`, unchanged messages."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest

from sweeplab import config
from sweeplab.core.errors import ConfigError
from sweeplab.schema import Config, ModelConfig

TREE = {
    "data": {"name": "synthetic", "synthetic_shape": [1, 8, 8], "batch_size": 32},
    "model": {"depth": 10, "name": "wrn", "widening_factor": 1},  # name need not come first
    "optim": {"lr": 1, "betas": [0.8, 0.9]},  # an int for a float: coerced in the Config, not in the tree
    "sched": {"milestones": [0.3, 0.6]},
}


def test_model_section_is_typed_and_the_dict_layout_is_flat() -> None:
    c = config.from_dict(copy.deepcopy(TREE))
    assert c.model == ModelConfig("wrn", {"depth": 10, "widening_factor": 1})
    assert c.to_dict()["model"] == {"name": "wrn", "depth": 10, "widening_factor": 1}
    flat = c.flat()
    assert (flat["model.name"], flat["model.depth"], flat["model.widening_factor"]) == ("wrn", 10, 1)
    assert not any(k.startswith("model.options") for k in flat)
    assert Config().to_dict()["model"] == {"name": "resnet_preact"}
    assert config.from_dict(c.to_dict()) == c


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    c = config.from_dict(copy.deepcopy(TREE))
    config.save(c, tmp_path / "c.yaml")
    assert "model:\n  name: wrn\n  depth: 10\n" in (tmp_path / "c.yaml").read_text()
    assert config.load(tmp_path / "c.yaml") == c


def test_from_dict_leaves_its_input_alone_and_shares_nothing_with_it() -> None:
    tree = copy.deepcopy(TREE)
    tree["model"]["preact_stage"] = [True, True, True]
    tree["model"]["name"] = "resnet_preact"
    tree["model"].pop("widening_factor")
    tree["model"]["depth"] = 8
    before = copy.deepcopy(tree)
    c = config.from_dict(tree)
    assert tree == before and type(tree["optim"]["lr"]) is int  # not coerced in place
    # the Config's lists and options are its own: changing them leaves the tree as it was
    c.data.synthetic_shape.append(9)
    c.optim.betas[0] = 0.5
    c.sched.milestones.clear()
    c.model.options["preact_stage"][0] = False
    c.model.options["depth"] = 20
    assert tree == before
    assert config.from_dict(tree) == config.from_dict(before)  # and it can be read again


def test_from_dict_leaves_its_input_alone_when_it_fails() -> None:
    tree = {"optim": {"lr": 1, "momentum": "x"}, "model": {"name": "wrn"}}
    before = copy.deepcopy(tree)
    with pytest.raises(ConfigError):
        config.from_dict(tree)
    assert tree == before


# Messages as they were with the untyped model dict (the CLI prints them as the one-line error).
VALID = "densenet, pyramidnet, resnet, resnet9, resnet_preact, resnext, se_resnet_preact, shake_shake, vgg, wrn"
MESSAGES = [
    ({"model": {"name": "resnet_preakt"}}, f"'model.name' in c.yaml is 'resnet_preakt'; valid: {VALID}"),
    ({"model": {"name": 3}}, f"'model.name' in c.yaml must be a model name; valid: {VALID}"),
    ({"model": {"depth": 20}}, "'model.name' is missing in c.yaml: a model section needs a name"),
    (
        {"model": {"name": "wrn", "dept": 28}},
        "model 'wrn' has no option 'model.dept'; did you mean 'model.depth'? in c.yaml",
    ),
    (
        {"model": {"name": "wrn", "zzz": 28}},
        "model 'wrn' has no option 'model.zzz'; valid: depth, drop_rate, widening_factor in c.yaml",
    ),
    (
        {"model": {"name": "wrn", "depth": 27}},
        "'model.depth' in c.yaml must be 6n+4 for basic blocks (10, 16, 22, ...), got 27",
    ),
    (
        {"model": {"name": "wrn", "depth": "x"}},
        "'model.depth' in c.yaml must be an integer (like the default 28), got str 'x'",
    ),
    (
        {"model": {"name": "resnet_preact", "preact_stage": [1, 2, 3]}},
        "'model.preact_stage' in c.yaml must be a list of true/false (like the default (True, True, True)), "
        "got list [1, 2, 3]",
    ),
    (
        {"model": {"name": "vgg", "n_layers": 7}},
        "'model.n_layers' in c.yaml must be 3n+3 (n convs in each of 3 stages: 6, 9, 12, ...), got 7",
    ),
    ({"optim": {"name": "sdg"}}, "'optim.name' in c.yaml is 'sdg'; valid: adam, amsgrad, lars, sgd"),
    ({"model": "wrn"}, "'model' in c.yaml must be a mapping of keys, got 'wrn'"),
]


@pytest.mark.parametrize("tree,message", MESSAGES, ids=[str(m[0]) for m in MESSAGES])
def test_config_error_messages_are_unchanged(tree: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.from_dict(tree, " in c.yaml")
    assert str(err.value) == message


def test_validating_a_config_does_not_import_torch() -> None:
    code = (
        "import sys; from sweeplab import config, models; "
        "c = config.load('configs/cifar10/densenet.yaml', ['model.depth=40']); "
        "assert models.options('densenet')['depth'] == 100 and c.model.options['depth'] == 40, c.model; "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
