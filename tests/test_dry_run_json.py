"""`sweeplab run SWEEP --dry-run --json`: the compiled trials as data, one JSON object per line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sweeplab.schema import valid_keys
from sweeplab.search_spaces import load

ROOT = Path(__file__).resolve().parents[1]


def dry_run_json(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "sweeplab.cli", "run", *args, "--dry-run", "--json"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_each_trial_is_one_json_line_with_its_whole_config():
    r = dry_run_json("sweeps/quickstart.yaml", "--smoke")
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines()]
    trials = load("sweeps/quickstart.yaml", smoke=True).trials()
    assert len(records) == len(trials) == 8
    for rec, t in zip(records, trials):
        assert rec["index"] == t.index and rec["smoke"] is True
        assert rec["config"] == json.loads(json.dumps(t.config.flat()))  # every key, as the trial runs it
        assert rec["point"] == t.values and rec["tables"] == t.rows and rec["seed"] == t.config.train.seed
        assert rec["config"]["optim.lr"] == t.values["optim.lr"]
        model_options = {k for k in rec["config"] if k.startswith("model.")}
        assert set(valid_keys()) - {"model.name"} <= set(rec["config"]) and "model.name" in model_options


def test_a_variant_sweep_shows_each_variants_settings():
    r = dry_run_json("sweeps/precision.yaml")
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines()]
    by_label = {}
    for rec in records:
        by_label.setdefault(rec["point"]["variant"], set()).add(rec["config"]["train.precision"])
    assert set(by_label) == {"FP32", "FP16", "mixed"}
    assert all(len(precisions) == 1 for precisions in by_label.values())  # one precision per variant label
    # the FP16 table's code (the reference's `--fp16`): a half model with BatchNorm in float32, no loss scaling
    fp16 = [rec["config"] for rec in records if rec["point"]["variant"] == "FP16"]
    assert len(fp16) == 7 and all(c["train.fp32_batchnorm"] and c["train.loss_scale"] == 1.0 for c in fp16)
    assert not any(rec["config"]["train.fp32_batchnorm"] for rec in records if rec["point"]["variant"] != "FP16")


def _configs(sweep: str) -> list[dict]:
    r = dry_run_json(sweep)
    assert r.returncode == 0, r.stderr
    return [json.loads(line)["config"] for line in r.stdout.splitlines()]


def test_the_sources_settings_reach_the_trials():
    # the Flax example's L2 sums over tensors with more than one dimension
    for sweep in ROOT.glob("sweeps/flax_*.yaml"):
        assert {c["optim.weight_decay_on"] for c in _configs(str(sweep.relative_to(ROOT)))} == {"kernels"}, sweep
    # the reference's 5-stage VGG
    (vgg,) = _configs("sweeps/cifar10_paper_settings_vgg.yaml")[:1]
    assert vgg["model.stage_channels"] == [64, 128, 256, 512, 512] and vgg["model.stage_layers"] == [2, 2, 3, 3, 3]
    # DAWNBench: no cutout at 10 epochs, 5x5 at 13, the frozen-scale net's output scale 1/16; row 3 as before
    dawn = {c["train.epochs"]: c for c in _configs("sweeps/dawnbench_resnet9.yaml")}
    assert [dawn[e]["augment.cutout"] for e in (10, 13, 30)] == [0, 5, 8]
    assert [dawn[e]["model.output_scale"] for e in (10, 13, 30)] == [0.0625, 0.0625, 0.125]
    # no decay on BN: the reference spared BatchNorm's parameters only
    rules = {c["optim.weight_decay_on"] for c in _configs("sweeps/no_wd_on_bn.yaml")}
    assert rules == {"all", "not_bn"}


def test_json_without_dry_run_is_bad_input():
    cmd = [sys.executable, "-m", "sweeplab.cli", "run", "sweeps/quickstart.yaml", "--json"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--dry-run" in r.stderr and "Traceback" not in r.stderr and r.stdout == ""
