"""`sweeplab train` (one run, no Ray) and `sweeplab models`.

A run folder holds config.yaml (the resolved config), metrics.jsonl (one line per epoch) and
checkpoint.pt (rewritten after every epoch, atomically); `--resume` continues from it.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from sweeplab import config as cfg
from sweeplab.config import ConfigError


class _Pause(Exception):
    """Raised after the checkpoint of the `--stop-after` epoch is written."""


def train(config_path: str, overrides: list[str], output: str | None, resume: bool,
          stop_after: int | None = None) -> int:
    """Validate, train with a per-epoch progress bar, write the run folder; return the exit code."""
    conf = cfg.load(config_path, overrides)  # validation first: nothing is touched if it fails
    if stop_after is not None and stop_after < 1:
        raise ConfigError(f"--stop-after {stop_after}: must be an epoch >= 1 (it stops after that epoch's checkpoint)")
    out = Path(output or Path("runs") / Path(config_path).stem)
    ckpt_path, metrics_path = out / "checkpoint.pt", out / "metrics.jsonl"
    checkpoint = _resume_state(out, conf) if resume else None
    if not resume and ckpt_path.exists():
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --output")

    import torch  # heavy imports after validation, so bad input fails in well under a second
    from tqdm import tqdm

    from sweeplab import engine
    from sweeplab.data import datasets

    data = datasets.load(conf.data)  # a missing dataset fails here, before the folder is written
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(conf, out / "config.yaml")
    if checkpoint is None:
        metrics_path.write_text("")
    else:  # keep the epochs the checkpoint holds: a killed run may have logged more, or half a line
        keep = [ln for ln in _lines(metrics_path) if json.loads(ln)["epoch"] <= checkpoint["epoch"]]
        metrics_path.write_text("".join(f"{ln}\n" for ln in keep))

    start_epoch = checkpoint["epoch"] if checkpoint else 0
    bar = tqdm(total=conf.train.epochs, initial=start_epoch, unit="epoch", file=sys.stderr,
               dynamic_ncols=True)

    def on_epoch(metrics: dict[str, float], state: Callable[[], dict[str, Any]]) -> None:
        with metrics_path.open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save(state(), tmp)
        os.replace(tmp, ckpt_path)  # atomic: a crash mid-write never leaves a torn checkpoint
        shown = {k: metrics[k] for k in ("train/loss", "val/error", "time/images_per_s") if k in metrics}
        bar.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in shown.items()}, refresh=False)
        bar.update(1)
        if stop_after is not None and metrics["epoch"] >= stop_after:
            raise _Pause(int(metrics["epoch"]))

    try:
        last = engine.fit(conf, on_epoch, checkpoint=checkpoint, data=data)
    except _Pause as paused:  # e.g. a time-sliced queue: the run continues later with --resume
        last = {}
        print(f"stopped after epoch {paused.args[0]}; continue with --resume", file=sys.stderr)
    bar.close()
    if last:
        print(" ".join(f"{k}={v:.4g}" for k, v in last.items()))
    print(f"run folder: {out}")
    return 0


def _lines(path: Path) -> list[str]:
    """The complete JSON lines of a metrics file (none if it is missing)."""
    good = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            json.loads(line)
            good.append(line)
        except ValueError:
            pass
    return good


def _resume_state(out: Path, conf: cfg.Config) -> dict[str, Any]:
    """Load OUTPUT/checkpoint.pt, refusing one trained with a different config (bar the epoch count)."""
    path = out / "checkpoint.pt"
    if not path.exists():
        raise ConfigError(f"--resume: no checkpoint at {path}")
    import torch

    state = torch.load(path, map_location="cpu", weights_only=False)
    old, new = cfg.flatten(state["config"]), conf.flat()
    old.pop("train.epochs", None)
    changed = sorted(k for k in old.keys() | new.keys() if k != "train.epochs" and old.get(k) != new.get(k))
    if changed:
        raise ConfigError(f"--resume: {path} was trained with a different config ({', '.join(changed[:5])}); "
                          "only train.epochs may change")
    return state


def list_models(counts: bool) -> int:
    """Print each registered model with its options and its parameter count at the defaults."""
    from sweeplab import models

    for name in models.names():
        opts = ", ".join(f"{k}={v!r}" for k, v in models.options(name).items())
        size = f"{models.num_parameters(models.build(name)) / 1e6:8.2f}M" if counts else ""
        print(f"{name:18s} {size}  {opts}")
    return 0
