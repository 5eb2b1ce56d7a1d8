"""benchmarks/gpu_check.py --cpu: the GPU check's plumbing (every stage in its own process, a real
local Ray for the packing stage, the JSON and the BENCHMARKS.md rows), run tiny on the CPU so the
script that is meant for a lent GPU does not rot between the rare sessions that have one."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("env", "matmul", "throughput", "wrn", "packing", "fashion_mnist")


def fake_fashion_mnist(folder: Path, n_train: int = 512, n_test: int = 256) -> Path:
    """The four IDX files of Fashion-MNIST, small and random, in the layout Debian's package has."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        (folder / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">iiii", 0x803, n, 28, 28) + images.tobytes())
        (folder / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 0x801, n) + labels.tobytes())
    return folder


def positive_numbers(tree, path: str = "") -> list[tuple[str, float]]:
    """Every measured number in a stage's rows (images/s, TFLOP/s, seconds), with where it is."""
    found = []
    if isinstance(tree, dict):
        for k, v in tree.items():
            found += positive_numbers(v, f"{path}.{k}")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            found += positive_numbers(v, f"{path}[{i}]")
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        found.append((path, tree))
    return found


@pytest.mark.slow
def test_cpu_mode_runs_every_stage_and_writes_json_and_rows(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    fmnist = fake_fashion_mnist(tmp_path / "fmnist")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks/gpu_check.py"),
            "--cpu",
            "--out",
            str(out),
            "--fashion-mnist",
            str(fmnist),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "cpu"
    stages = report["stages"]
    assert list(stages) == list(STAGES)
    for name, st in stages.items():
        assert st["status"] == "ok", (name, st.get("reason"), st.get("traceback", "")[-1500:], st.get("log_tail"))
    assert stages["env"]["torch"] and stages["env"]["device"].startswith("CPU")
    assert stages["matmul"]["dtype"] == "float32" and stages["matmul"]["tflops"] > 0
    rates = {r["label"]: r for r in stages["throughput"]["rows"]}
    for label in ("plain loop, fp32", "engine, fp32 + channels_last", "engine, bf16 + channels_last"):
        assert rates[label]["images_per_s"] > 0, rates[label]
    assert "skipped" in rates["engine, bf16 + channels_last + compile"]  # --cpu leaves compiling out
    wrn = stages["wrn"]
    assert wrn["train_flops_per_image"] > 0 and 0 < wrn["rows"][0]["fraction_of_matmul"]
    pack = {r["per_device"]: r for r in stages["packing"]["rows"]}
    assert set(pack) == {1, 2} and stages["packing"]["ray_resources"]["CPU"] == 1
    assert pack[2]["resources_per_trial"]["cpus_per_worker"] == 0.5 and pack[2]["trials"] == 2
    assert all(r["aggregate_images_per_s"] > 0 and "errors" not in r for r in pack.values())
    fm = stages["fashion_mnist"]["rows"][0]
    assert 0 <= fm["test_error"] <= 100 and fm["wall_s"] > 0
    measured = positive_numbers([st.get("rows", []) for st in stages.values()])
    assert measured and all(v >= 0 for _, v in measured), [m for m in measured if m[1] < 0]
    # the rows for BENCHMARKS.md: one markdown table per stage with rows
    assert sum(line.startswith("|---") for line in proc.stdout.splitlines()) == 3, proc.stdout
    assert "| engine, bf16 + channels_last |" in proc.stdout and "| 2 |" in proc.stdout
    assert "Fashion-MNIST, 2 epochs: test error" in proc.stdout


def test_a_stage_that_cannot_run_is_recorded_with_its_reason(tmp_path: Path) -> None:
    """No Fashion-MNIST files: that stage says why, the JSON is still written, the command succeeds."""
    out = tmp_path / "check.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(ROOT / "benchmarks/gpu_check.py"), "--cpu", "--out", str(out)]
    cmd += ["--stages", "env", "fashion_mnist", "--fashion-mnist", str(tmp_path / "absent")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stages = json.loads(out.read_text())["stages"]
    assert stages["env"]["status"] == "ok"
    assert stages["fashion_mnist"]["status"] == "skipped"
    assert "no Fashion-MNIST IDX files" in stages["fashion_mnist"]["reason"]
    assert stages["packing"] == {"status": "skipped", "reason": "not asked for (--stages)"}


@pytest.mark.slow
def test_a_crashed_or_hung_stage_keeps_its_rows_and_the_others_results(tmp_path: Path) -> None:
    """env aborts, matmul hangs until the deadline stops it, wrn has no time left: the JSON says each."""
    out = tmp_path / "check.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "GPU_CHECK_FAULT": "env:crash,matmul:hang",
    }
    # 14 s: env (a torch import, then the crash) leaves matmul its 5 s to start even on a busy machine
    cmd = [sys.executable, str(ROOT / "benchmarks/gpu_check.py"), "--cpu", "--out", str(out), "--deadline", "14"]
    cmd += ["--stages", "env", "matmul", "wrn"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stages = json.loads(out.read_text())["stages"]
    assert stages["env"]["status"] == "error" and stages["env"]["reason"] == "exit code -6"
    assert stages["env"]["rows"] == [{"label": "before the crash"}]
    assert stages["matmul"]["status"] == "timeout" and stages["matmul"]["rows"] == [{"label": "before the hang"}]
    assert stages["wrn"]["status"] == "skipped" and stages["wrn"]["reason"].startswith("out of time")
    assert stages["throughput"]["reason"] == "not asked for (--stages)"
    assert "matmul: timeout" in proc.stdout
