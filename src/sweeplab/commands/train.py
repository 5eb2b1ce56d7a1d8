"""`sweeplab train` (one run, no Ray) and `sweeplab models`.

A run folder holds config.yaml (the resolved config), metrics.jsonl (one line per epoch),
checkpoint.pt (rewritten after every epoch, atomically) and checkpoint.prev.pt (the one before);
`--resume` continues from the newest of the two that loads.

`--from-run RUN_ID` trains a sweep trial's config read back from its MLflow run; with `--resume` it
starts from the run's checkpoint artifact (when OUTPUT holds no checkpoint of its own yet).
"""

from __future__ import annotations

import argparse
import copy
import errno
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeplab import config as cfg
from sweeplab.core import quiet
from sweeplab.core.errors import ConfigError
from sweeplab.schema import Config, flatten
from sweeplab.tracking.store import resolve_uri

CHECKPOINT, PREVIOUS = "checkpoint.pt", "checkpoint.prev.pt"  # as sweeplab.checkpoints names them


class _Pause(Exception):
    """Raised after the checkpoint of the `--stop-after` epoch is written."""


class _WriteFailed(Exception):
    """Writing a file of the run folder failed (a full disk, typically); carries the path and the OSError."""


@dataclass(frozen=True)
class Tracking:
    """Where `sweeplab train` logs its run: MLflow store and experiment; `enabled=False` logs nothing."""

    uri: str | None = None
    experiment: str = "train"
    enabled: bool = True


def command(args: argparse.Namespace) -> int:
    """`sweeplab train`: CONFIG [key=value ...], or --from-run RUN_ID [key=value ...]."""
    tracking = Tracking(args.tracking_uri, getattr(args, "experiment", "train"), not getattr(args, "no_mlflow", False))
    if args.from_run is None:
        if args.config is None:
            raise ConfigError("give a CONFIG file to train, or --from-run RUN_ID to rerun a trial logged in MLflow")
        return train(args.config, args.overrides, args.output, args.resume, args.stop_after, tracking)
    overrides = list(args.overrides)
    if args.config is not None:  # argparse fills the optional CONFIG with the first key=value
        if "=" not in args.config:
            raise ConfigError(f"give a CONFIG file ({args.config}) or --from-run {args.from_run}, not both")
        overrides.insert(0, args.config)
    return train_from_run(
        args.from_run, overrides, args.output, args.resume, args.stop_after, args.tracking_uri, tracking
    )


def train(
    config_path: str,
    overrides: list[str],
    output: str | None,
    resume: bool,
    stop_after: int | None = None,
    tracking: Tracking = Tracking(enabled=False),
) -> int:
    """Validate, train with a per-batch progress bar, write the run folder (and the MLflow run); return
    the exit code."""
    conf = cfg.load(config_path, overrides)  # validation first: nothing is touched if it fails
    out = Path(output or Path("runs") / Path(config_path).stem)
    return _train(conf, out, resume, stop_after, tracking=tracking, source=str(config_path))


def train_from_run(
    run_id: str,
    overrides: list[str],
    output: str | None,
    resume: bool,
    stop_after: int | None = None,
    tracking_uri: str | None = None,
    tracking: Tracking = Tracking(enabled=False),
) -> int:
    """Train the config of a trial's MLflow run (its config.yaml, else its params) with `overrides`; with
    `resume`, continue from the run's checkpoint artifact unless OUTPUT holds a checkpoint already."""
    from sweeplab.analysis import rerun

    found = rerun.trial_run(tracking_uri, run_id)
    tree = copy.deepcopy(found.config)
    items = [_split(o) for o in overrides]
    for key, value in items:
        cfg.set_dotted(tree, key, value)
    where = f" in run {run_id}" + (f" (with {' '.join(f'{k}={v}' for k, v in items)})" if items else "")
    cfg.check_tree(tree, where)
    conf = cfg.from_dict(tree, where)  # the trial's resolved config: equal to the Config the trial trained
    out = Path(output or Path("runs") / rerun.folder_name(found))
    if not resume or (out / CHECKPOINT).exists() or (out / PREVIOUS).exists():
        # a rerun stopped part-way (--stop-after) continues from its own, newer checkpoint
        return _train(conf, out, resume, stop_after, tracking=tracking, source=f"runs:/{run_id}")
    with tempfile.TemporaryDirectory(prefix="sweeplab-run-") as tmp:
        path, metrics = rerun.download_checkpoint(found, Path(tmp))
        from sweeplab import engine

        try:
            state = engine.load_checkpoint(path)  # weights_only: tensors and plain data, nothing else unpickled
        except engine.CheckpointError as e:
            raise ConfigError(f"--resume: the checkpoint artifact of run {run_id} cannot be used: {e}") from None
        _same_config(state, conf, f"the checkpoint of run {run_id}")
        print(f"continuing run {run_id} from its checkpoint (epoch {state['epoch']})", file=sys.stderr)
        seed = (state, path, {**metrics, "epoch": state["epoch"]})
        return _train(conf, out, False, stop_after, seed=seed, tracking=tracking, source=f"runs:/{run_id}")


def _split(override: str) -> tuple[str, Any]:
    """'key=value' as (key, parsed value), as `config.load` reads an override."""
    key, eq, value = override.partition("=")
    if not eq or not key:
        raise ConfigError(f"override '{override}' must look like key=value, e.g. optim.lr=0.1")
    return key.strip(), cfg.parse_value(value)


def _train(
    conf: Config,
    out: Path,
    resume: bool,
    stop_after: int | None,
    seed: tuple[dict[str, Any], Path, dict[str, Any]] | None = None,
    tracking: Tracking = Tracking(enabled=False),
    source: str = "",
) -> int:
    """Train `conf` into the run folder `out` (and its MLflow run, per `tracking`); `seed` (state, its file,
    its metrics) starts it from a checkpoint that is not in `out` yet (a run's artifact), copied there
    once the data has loaded."""
    uri = resolve_uri(tracking.uri) if tracking.enabled else ""  # a bad URI is bad input, before any work
    if stop_after is not None and stop_after < 1:
        raise ConfigError(f"--stop-after {stop_after}: must be an epoch >= 1 (it stops after that epoch's checkpoint)")
    ckpt_path, prev_path, metrics_path = out / CHECKPOINT, out / PREVIOUS, out / "metrics.jsonl"
    checkpoint, used = _resume_state(out, conf) if resume else (None, None)
    if not resume and (ckpt_path.exists() or prev_path.exists()):
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --output")
    if seed is not None:
        checkpoint = seed[0]

    from sweeplab import checkpoints, engine
    from sweeplab.commands.train_mlflow import Logger
    from sweeplab.commands.train_progress import Progress
    from sweeplab.data import datasets

    data = datasets.load(conf.data)  # a missing dataset fails here, before the folder is written
    saved = checkpoint["epoch"] if checkpoint else 0  # the epoch of the newest complete checkpoint
    final: Callable[[], dict[str, Any]] | None = (lambda: checkpoint) if checkpoint else None  # the last state

    def on_epoch(metrics: dict[str, float], state: Callable[[], dict[str, Any]]) -> None:
        nonlocal saved, final
        with _writing(metrics_path), metrics_path.open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        with _writing(ckpt_path):
            checkpoints.save(out, state())  # the last two kept, atomically (sweeplab/checkpoints.py)
        saved, final = int(metrics["epoch"]), state
        progress.epoch_end(metrics)
        if log is not None:
            log.epoch(metrics)
        if stop_after is not None and metrics["epoch"] >= stop_after:
            raise _Pause(int(metrics["epoch"]))

    progress = Progress(conf.train.epochs, saved)
    log: Logger | None = None
    if checkpoint is not None:
        replanned = replan(checkpoint, conf)
        if replanned:
            print(f"sweeplab: {replanned}", file=sys.stderr)
    last: dict[str, float] = {}
    quiet.release()  # the input is checked: a warning from here on (torch's, say) shows as it comes
    try:
        out.mkdir(parents=True, exist_ok=True)
        with _writing(out / "config.yaml"):
            cfg.save(conf, out / "config.yaml")
        if used is not None and used != ckpt_path and ckpt_path.exists():
            # set aside, so the next epoch's rotation does not make it the kept older checkpoint
            with _writing(ckpt_path):
                os.replace(ckpt_path, out / "checkpoint.bad.pt")
        if seed is not None:  # the run's checkpoint becomes this folder's, as if trained here
            tmp = ckpt_path.with_suffix(".tmp")
            with _writing(ckpt_path, tmp):
                shutil.copyfile(seed[1], tmp)
                os.replace(tmp, ckpt_path)
            # earlier epochs stay in the MLflow run; the folder's history starts at the checkpoint's
            keep = [json.dumps(seed[2])]
        else:  # keep the epochs the checkpoint holds: a killed run may have logged more, or half a line
            keep = [ln for ln in _lines(metrics_path) if json.loads(ln)["epoch"] <= saved] if checkpoint else []
        _replace_text(metrics_path, "".join(f"{ln}\n" for ln in keep))
        log = Logger(uri, out, conf, source, tracking.experiment) if tracking.enabled else None
        last = engine.fit(conf, on_epoch, checkpoint=checkpoint, data=data, on_step=progress.step)
        if log is not None and final is not None:
            log.finish(final(), data)
    except _Pause as paused:  # e.g. a time-sliced queue: the run continues later with --resume
        progress.close()
        print(f"stopped after epoch {paused.args[0]}; continue with --resume", file=sys.stderr)
        if log is not None:
            log.stop("KILLED")
    except _WriteFailed as failed:
        progress.close()
        if log is not None:
            log.stop("FAILED")
        path, err = failed.args
        what = (
            f"disk full: could not write {path}"
            if err.errno in (errno.ENOSPC, errno.EDQUOT)
            else f"could not write {path} ({err.strerror or err})"
        )
        then = (
            f"the checkpoint of epoch {saved} is kept: free some space and continue with --resume"
            if saved
            else "no epoch was checkpointed: free some space and run it again"
        )
        print(f"sweeplab: error: {what}; {then}", file=sys.stderr)
        return 1
    except BaseException:  # Ctrl-C or a failure inside the training: the MLflow run says so too
        if log is not None:
            log.stop("KILLED")
        raise
    finally:
        progress.close()
    if last:
        print(" ".join(f"{k}={v:.4g}" for k, v in last.items()))
    print(f"run folder: {out}")
    return 0


@contextmanager
def _writing(path: Path, tmp: Path | None = None) -> Iterator[None]:
    """Turn an OSError while writing `path` into _WriteFailed naming it; remove the half-written `tmp`."""
    try:
        yield
    except BaseException as e:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        cause: BaseException | None = e
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__context__  # torch.save's zip writer raises a RuntimeError over the OSError
        if isinstance(e, Exception) and cause is not None:
            raise _WriteFailed(path, cause) from e
        raise


def _replace_text(path: Path, text: str) -> None:
    """Write a file whole or not at all: a full disk must not leave the kept metrics truncated."""
    tmp = path.with_suffix(".tmp")
    with _writing(path, tmp):
        tmp.write_text(text)
        os.replace(tmp, path)


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


def _resume_state(out: Path, conf: Config) -> tuple[dict[str, Any], Path]:
    """The newest checkpoint of OUTPUT that loads (checkpoint.pt, else checkpoint.prev.pt) and its path,
    refusing one trained with a different config (bar the epoch count)."""
    from sweeplab import checkpoints, engine

    if not checkpoints.exists(out):
        raise ConfigError(f"--resume: no checkpoint at {out / CHECKPOINT}")
    try:
        state, path, problems = checkpoints.newest(out)
    except engine.CheckpointError as e:
        raise ConfigError(f"--resume: no checkpoint of {out} can be used: {e}") from None
    _same_config(state, conf, str(path))
    if problems:  # e.g. a crash between the two renames leaves no checkpoint.pt: the older one is whole
        print(f"sweeplab: warning: {problems[0]}; continuing from {path} (epoch {state['epoch']})", file=sys.stderr)
    return state, path


def replan(state: dict[str, Any], conf: Config) -> str:
    """One line saying what a resume with another train.epochs re-plans ('' when the length is the same):
    the schedule is a function of the step and the run's length, so its lr at the checkpoint moves."""
    from sweeplab import schedules

    old_epochs, epoch, step = state["config"]["train"]["epochs"], state["epoch"], state["step"]
    new_epochs = conf.train.epochs
    if old_epochs == new_epochs:
        return ""
    head = f"--resume: train.epochs {old_epochs} -> {new_epochs}"
    if epoch >= new_epochs:
        return f"{head}: the checkpoint is at epoch {epoch} already; nothing is left to train"
    per_epoch = max(1, step // max(1, epoch))
    old_conf = cfg.from_dict({**conf.to_dict(), "train": {**conf.to_dict()["train"], "epochs": old_epochs}})

    def lr(c: Config) -> float:
        return schedules.lr_at(step, c.optim.lr, c.sched, per_epoch, c.train.epochs)

    before, after = lr(old_conf), lr(conf)
    if before == after:
        return f"{head}: {epoch} of {new_epochs} epochs done; the {conf.sched.name} schedule's lr stays {after:.3g}"
    return (
        f"{head}: the {conf.sched.name} schedule is re-planned over {new_epochs} epochs; at epoch {epoch} "
        f"(step {step}) the lr is {after:.3g}, not the {before:.3g} of the {old_epochs}-epoch plan"
    )


def _same_config(state: dict[str, Any], conf: Config, what: str) -> None:
    """Refuse a checkpoint trained with a different config than `conf` (bar the epoch count)."""
    old, new = flatten(state["config"]), conf.flat()
    changed = sorted(k for k in old.keys() | new.keys() if k != "train.epochs" and old.get(k) != new.get(k))
    if changed:
        raise ConfigError(
            f"--resume: {what} was trained with a different config ({', '.join(changed[:5])}); "
            "only train.epochs may change"
        )
