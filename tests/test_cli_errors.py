"""Bad input to `sweeplab train`: exit 2, one line naming the key or file, no traceback, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = str(Path(__file__).parents[1] / "configs/fashion_mnist/resnet_preact20.yaml")


def sweeplab(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sweeplab.cli", *args], capture_output=True, text=True, timeout=60, cwd=cwd
    )


@pytest.mark.parametrize(
    "override, culprit",
    [
        ("optim.lrr=0.1", "did you mean 'optim.lr'"),
        ("optim.lr=-0.1", "optim.lr"),
        ("data.batch_size=0", "data.batch_size"),
        ("data.batch_size=abc", "data.batch_size"),
        ("train.precision=fp8", "train.precision"),
        ("data.name=imagenet", "fashion_mnist"),  # lists the valid names
        ("model.name=resnet_preakt", "resnet_preact"),
        ("model.dept=20", "model.depth"),
        ("augment.mixup=true augment.cutmix=true", "augment"),
        ("nonsense", "key=value"),
        ("--stop-after 0", "--stop-after"),
    ],
)
def test_bad_values_exit_2_naming_the_key(tmp_path, override, culprit):
    out = tmp_path / "run"
    r = sweeplab("train", CONFIG, *override.split(), "--output", str(out))
    assert r.returncode == 2, r.stderr
    assert culprit in r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()
    # a bad key=value override is named as one, after the file it overrode; a bad flag or a malformed override is not
    assert ("(with " in r.stderr) == ("=" in override), r.stderr


def test_missing_and_malformed_yaml_name_the_file(tmp_path):
    r = sweeplab("train", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "nope.yaml" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: [0.1\n")
    r = sweeplab("train", str(bad))
    assert r.returncode == 2 and "bad.yaml" in r.stderr and "Traceback" not in r.stderr


def test_missing_dataset_names_where_it_looked(tmp_path):
    out = tmp_path / "run"
    r = sweeplab(
        "train", CONFIG, "data.name=kmnist", f"data.root={tmp_path}", "data.download=false", "--output", str(out)
    )
    assert r.returncode == 2
    assert str(tmp_path) in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()
