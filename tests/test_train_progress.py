"""`sweeplab train`'s progress: a per-batch bar with images/s and time left on a terminal, plain lines
elsewhere (no carriage returns into a pipe), the epoch's metrics at its end, and one line saying what a
--resume with another schedule length re-plans."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time
from pathlib import Path

from sweeplab import config, engine
from sweeplab.commands.train import replan
from sweeplab.commands.train_progress import Progress

CONFIG = str(Path(__file__).parents[1] / "configs/fashion_mnist/resnet_preact20.yaml")
TINY = [
    "data.name=synthetic",
    "data.synthetic_shape=[1,12,12]",
    "data.synthetic_classes=4",
    "data.synthetic_train=256",
    "data.synthetic_test=64",
    "data.batch_size=32",
    "model.name=resnet_preact",
    "model.depth=8",
    "model.initial_channels=4",
    "train.threads=1",
]
METRICS = {"epoch": 1, "train/loss": 0.5, "val/error": 12.345, "time/images_per_s": 3120.0, "time/epoch_s": 74.0}


def test_the_engine_reports_every_step_without_knowing_who_listens() -> None:
    steps: list[tuple[int, int, int]] = []
    engine.fit(config.load(None, [*TINY, "train.epochs=2"]), on_step=lambda *a: steps.append(a))
    assert steps == [(i, 8, 32 * i) for i in range(1, 9)] * 2  # 256 images in batches of 32, each epoch


def test_off_a_terminal_progress_is_plain_lines() -> None:
    out = io.StringIO()
    p = Progress(3, start=1, stream=out, bar=False, every_s=0)
    for step in range(1, 5):
        p.step(step, 4, 64 * step)
    p.epoch_end({**METRICS, "epoch": 2})
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0].startswith("epoch 2/3: batch 2/4 (50%), ") and lines[0].endswith("left in epoch")
    assert " img/s, " in lines[0]
    assert lines[-1] == "epoch 2/3: train/loss 0.5  val/error 12.35%  3,120 img/s  1m14s"


def test_on_a_terminal_each_epoch_is_a_bar_ending_with_its_metrics() -> None:
    out = io.StringIO()
    p = Progress(2, stream=out, bar=True)
    for step in range(1, 5):
        time.sleep(0.11)  # tqdm redraws at most every 0.1 s
        p.step(step, 4, 64 * step)
    p.epoch_end(METRICS)
    shown = out.getvalue().split("\r")
    bar = re.compile(r"epoch 1/2: +\d+%\|.*\| [234]/4 \[00:00<00:00, [\d.]+batch/s, [\d,]+ img/s\]")
    assert any(bar.fullmatch(s.rstrip()) for s in shown), shown  # done/total [elapsed<left, speed, img/s]
    assert shown[-1].rstrip() == "epoch 1/2: 4/4 batches in 00:00  train/loss 0.5  val/error 12.35%  3,120 img/s  1m14s"


def test_resume_with_a_longer_schedule_says_what_it_replanned() -> None:
    one, three = config.load(None, [*TINY, "train.epochs=1"]), config.load(None, [*TINY, "train.epochs=3"])
    state = {"config": one.to_dict(), "epoch": 1, "step": 8}
    line = replan(state, three)
    # cosine over 1 epoch ends near 0; over 3 epochs, step 8 is a third of the way down
    assert line == (
        "--resume: train.epochs 1 -> 3: the cosine schedule is re-planned over 3 epochs; at epoch 1 (step 8) "
        "the lr is 0.075, not the 0 of the 1-epoch plan"
    )
    assert replan(state, one) == ""
    constant = config.load(None, [*TINY, "train.epochs=3", "sched.name=constant"])
    state = {
        "config": {**constant.to_dict(), "train": {**constant.to_dict()["train"], "epochs": 1}},
        "epoch": 1,
        "step": 8,
    }
    assert replan(state, constant).endswith("1 of 3 epochs done; the constant schedule's lr stays 0.1")


def test_train_into_a_pipe_prints_lines_and_the_replan(tmp_path: Path) -> None:
    def train(*extra: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "sweeplab.cli", "train", CONFIG, *TINY, *extra, "--output", str(tmp_path / "r")]
        return subprocess.run([*argv, "--no-mlflow"], capture_output=True, text=True, timeout=300)

    first = train("train.epochs=1")
    assert first.returncode == 0, first.stderr
    assert "\r" not in first.stderr and first.stderr.startswith("epoch 1/1: train/loss ")
    again = train("train.epochs=3", "--resume")
    assert again.returncode == 0, again.stderr
    lines = again.stderr.splitlines()
    assert lines[0].startswith("sweeplab: --resume: train.epochs 1 -> 3: the cosine schedule is re-planned")
    assert [ln.split(":")[0] for ln in lines[1:]] == ["epoch 2/3", "epoch 3/3"]
