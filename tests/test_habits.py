"""The habits of the ecosystem: `--version`, help on every flag, "did you mean" that knows other tools'
names, JSON Schemas for editors, and `--smoke` that refuses a sweep it cannot shrink."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jsonschema
import pytest

from sweeplab import config
from sweeplab.cli import main, parser
from sweeplab.core.errors import ConfigError
from sweeplab.core.yamlio import load_text
from sweeplab.search_spaces.json_schema import SCHEMAS

ROOT = Path(__file__).resolve().parents[1]


def _commands(ap: argparse.ArgumentParser, prefix: str = "sweeplab") -> list[tuple[str, argparse.ArgumentParser]]:
    """Every parser of the command tree, the top one included, with its command line."""
    out = [(prefix, ap)]
    for action in ap._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _commands(sub, f"{prefix} {name}")
    return out


def test_every_argument_of_every_command_has_help() -> None:
    missing = [
        f"{cmd} {'/'.join(a.option_strings) or a.dest}"
        for cmd, p in _commands(parser())
        for a in p._actions
        if not isinstance(a, argparse._SubParsersAction) and not (a.help or "").strip()
    ]
    assert missing == []
    assert len(_commands(parser())) >= 13  # the walk reached the subcommands


def test_version(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("sweeplab ") and "Python 3." in out and out.count("\n") == 1


@pytest.mark.parametrize(
    "override, meant",
    [
        ("optim.learning_rate=0.1", "optim.lr"),  # difflib alone says optim.lars_eps
        ("learning_rate=0.1", "optim.lr"),
        ("lr=0.1", "optim.lr"),
        ("wd=0.0005", "optim.weight_decay"),
        ("optim.wd=0.0005", "optim.weight_decay"),
        ("batch_size=64", "data.batch_size"),
        ("train.batch_size=64", "data.batch_size"),
        ("epochs=3", "train.epochs"),
        ("max_epochs=3", "train.epochs"),
        ("train.max_epochs=3", "train.epochs"),
        ("optim.lrr=0.1", "optim.lr"),  # a typo still finds its key
    ],
)
def test_did_you_mean_knows_other_tools_names(override: str, meant: str) -> None:
    with pytest.raises(ConfigError, match=f"did you mean '{meant}'\\?"):
        config.load(ROOT / "configs/fashion_mnist/resnet_preact20.yaml", [override])


def test_smoke_without_a_smoke_block_is_bad_input_naming_the_fix(tmp_path: Path, capsys) -> None:
    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        f"config: {ROOT / 'configs/fashion_mnist/resnet_preact20.yaml'}\nspace: {{optim.lr: {{grid: [0.1]}}}}\n"
    )
    assert main(["run", str(sweep), "--smoke", "--dry-run"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert "--smoke needs a 'smoke:' block" in err and "smoke: {overrides: {train.epochs: 1" in err
    assert main(["run", str(sweep), "--dry-run"]) == 0  # without --smoke it is a good sweep


# ---- JSON Schemas ---------------------------------------------------------------------------------------


def _validator(kind: str, capsys: pytest.CaptureFixture) -> jsonschema.Draft202012Validator:
    """The schema as `sweeplab schema KIND` prints it, checked as a JSON Schema itself."""
    assert main(["schema", kind]) == 0
    schema = json.loads(capsys.readouterr().out)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema == SCHEMAS[kind]()
    return jsonschema.Draft202012Validator(schema)


def _problems(v: jsonschema.Draft202012Validator, text: str) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(load_text(text))]


@pytest.mark.parametrize("kind, folder", [("config", "configs"), ("sweep", "sweeps")])
def test_every_shipped_file_follows_its_schema(kind: str, folder: str, capsys) -> None:
    v = _validator(kind, capsys)
    files = sorted((ROOT / folder).rglob("*.yaml"))
    assert len(files) >= 20
    assert {f.name: _problems(v, f.read_text()) for f in files} == {f.name: [] for f in files}


@pytest.mark.parametrize(
    "text, where",
    [
        ("optim: {lrr: 0.1}\n", "optim"),  # an unknown key
        ("optim: {lr: fast}\n", "optim.lr"),  # a wrong type
        ("data: {name: imagenet}\n", "data.name"),  # a name no registry has
        ("model: {name: wrn, growth_rate: 12}\n", "model"),  # densenet's option on a wrn
        ("model: {name: resnet_preakt}\n", "model.name"),
        ("trian: {epochs: 3}\n", ""),
    ],
)
def test_config_schema_catches_what_the_loader_refuses(text: str, where: str, capsys) -> None:
    problems = _problems(_validator("config", capsys), text)
    assert problems and problems[0].startswith(f"{where}: "), problems
    with pytest.raises(ConfigError):
        config.from_dict(load_text(text))


@pytest.mark.parametrize(
    "text, where",
    [
        ("space: {optim.lr: {grid: [0.1]}}\n", ""),  # no config
        ("config: c.yaml\nmethod: bayes\n", ""),  # a W&B key
        ("config: c.yaml\nspace: {optim.lrr: {grid: [0.1]}}\n", "space"),
        ("config: c.yaml\nspace: {optim.lr: {gird: [0.1]}}\n", "space.optim.lr"),
        ("config: c.yaml\nspace: {optim.lr: {loguniform: [0, 1]}}\n", "space.optim.lr.loguniform.0"),
        ("config: c.yaml\nspace: {data.batch_size: {grid: [64.5]}}\n", "space.data.batch_size.grid.0"),
        ("config: c.yaml\nscheduler: {name: asha, perturbation_interval: 2}\n", "scheduler"),  # pbt's option
        ("config: c.yaml\nmetric: val/acc\n", "metric"),
        ("config: c.yaml\ntables: {no_such_table: {}}\n", "tables"),
        ("config: c.yaml\nsmoke: {epochs: 1}\n", "smoke"),
    ],
)
def test_sweep_schema_catches_mistakes(text: str, where: str, capsys) -> None:
    problems = _problems(_validator("sweep", capsys), text)
    assert problems and problems[0].startswith(f"{where}: "), problems


def test_schema_describes_keys_from_the_code(capsys) -> None:
    """Descriptions and defaults come from schema.py, names from the registries: an editor shows them."""
    props = json.loads((main(["schema", "config"]), capsys.readouterr().out)[1])["properties"]
    assert props["optim"]["properties"]["lr"] == {"type": "number", "default": 0.1}
    assert "epsilon" in props["augment"]["properties"]["label_smoothing"]["description"]
    assert "cosine" in props["sched"]["properties"]["name"]["enum"]
    assert "wrn" in props["model"]["properties"]["name"]["enum"]
