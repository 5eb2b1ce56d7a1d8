"""What runs inside a trial, without Ray: its folder, its reports, restoring it, PBT's exploit.

A trial's folder, `STORAGE/LAUNCH/trials/<key>/`, is laid out like a `sweeplab train` run folder
and is sweeplab's own: `config.yaml`, `metrics.jsonl` (one line per epoch, written before the
epoch's checkpoint), the newest two checkpoints (`sweeplab/checkpoints.py`) and, after a failure,
`error.log`. `resume` reads only this folder, never Tune's state. The executor passes in its
`report(metrics, checkpoint_folder)`; the checkpoint folder it is handed (`state.pt` plus
`origin.json`: whose weights, at which epoch) is what Tune keeps for its own retries and for PBT.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from sweeplab.core.errors import first_line
from sweeplab.search_spaces import Sweep, label

ORIGIN, ERROR_LOG, METRICS, MODEL = "origin.json", "error.log", "metrics.jsonl", "model"
TUNE_DIR = "tune"  # Tune's own experiments, one per session, inside the launch folder; never read back
Report = Callable[[dict[str, Any], Path | None], None]


@dataclass
class TrialJob:
    """One trial as its executor starts it: the ledger's key, point and last epoch, and its folder."""

    key: str
    point: dict[str, Any]
    folder: Path  # STORAGE/LAUNCH/trials/<key>
    known_epoch: int = 0  # the last epoch the ledger has of it: later ones in metrics.jsonl are reported again
    rank: int = 0  # a DDP rank; rank 0 alone writes the folder


class Trainer(Protocol):
    """The engine as a trial uses it (tests give a fake one that trains in microseconds)."""

    def fit(self, conf: Any, on_epoch: Callable[..., None], checkpoint: dict[str, Any] | None) -> Any: ...
    def save(self, folder: Path, state: dict[str, Any]) -> Path: ...
    def newest(self, folder: Path) -> tuple[dict[str, Any], Path, list[str]]: ...
    def load(self, path: Path) -> dict[str, Any]: ...
    def export(self, folder: Path, conf: Any) -> None: ...


class Engine:
    """The real engine: `engine.fit` and the checkpoints of `sweeplab/checkpoints.py`."""

    def fit(self, conf: Any, on_epoch: Callable[..., None], checkpoint: dict[str, Any] | None) -> Any:
        from sweeplab import engine

        return engine.fit(conf, on_epoch, checkpoint=checkpoint)

    def save(self, folder: Path, state: dict[str, Any]) -> Path:
        from sweeplab import checkpoints

        return checkpoints.save(folder, state)

    def newest(self, folder: Path) -> tuple[dict[str, Any], Path, list[str]]:
        from sweeplab import checkpoints

        return checkpoints.newest(folder)

    def load(self, path: Path) -> dict[str, Any]:
        from sweeplab.engine import load_checkpoint

        return load_checkpoint(path)

    def export(self, folder: Path, conf: Any) -> None:
        """The finished trial's final weights as an MLflow PyTorch model in `folder/model` (local disk; the
        MLflow follower logs it to the trial's run): the network with its normalisation and tricks inside
        (models/classifier.py), float images in [0, 1] in, logits out."""
        from sweeplab.data import datasets
        from sweeplab.models import classifier
        from sweeplab.tracking import models

        state = self.newest(folder)[0]
        data = datasets.load(conf.data)
        module = classifier.from_state(state, data.shape, data.num_classes, data.mean, data.std)
        example = (data.test_x[:4].float() / 255).numpy()  # a few test images: the batch size stays free
        tmp = folder / "model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        models.save_model(module, example, tmp)
        shutil.rmtree(folder / MODEL, ignore_errors=True)
        os.replace(tmp, folder / MODEL)


class Unrecoverable(RuntimeError):
    """No checkpoint of a trial loads: `resume` would fail the same way, so the trial must be rerun."""


def run_trial(
    job: TrialJob,
    sweep: Sweep,
    report: Report,
    given: Path | None = None,
    trainer: Trainer | None = None,
    extras: Callable[[Any], dict[str, Any]] | None = None,
) -> None:
    """Train one trial, reporting each epoch. It starts from `given` (the checkpoint folder Tune hands
    a retried trial, or another trial's under PBT), else from its own folder's newest checkpoint,
    else from scratch. A failure's traceback goes to `error.log`; the exception raised names it."""
    trainer = trainer or Engine()
    last: dict[str, Any] = {}

    def reporting(metrics: dict[str, Any], folder: Path | None) -> None:
        report(metrics, folder)
        last.clear()
        last.update(metrics)

    try:
        _run(job, sweep, reporting, given, trainer, extras)
    except Exception as e:
        log: str | None = str(job.folder / ERROR_LOG)
        try:
            if job.rank == 0:
                job.folder.mkdir(parents=True, exist_ok=True)
                (job.folder / ERROR_LOG).write_text(traceback.format_exc())
        except OSError:  # a full disk: the one line is all there is
            log = None
        raise TrialFailed(f"{type(e).__name__}: {first_line(e, 300)}", last, log) from e


class TrialFailed(RuntimeError):
    """A trial's one-line failure, its last report, and the error.log holding its traceback (None if unwritten)."""

    def __init__(self, message: str, last: dict[str, Any] | None = None, log: str | None = None) -> None:
        super().__init__(message)
        self.last, self.log = dict(last or {}), log


def _run(
    job: TrialJob,
    sweep: Sweep,
    report: Report,
    given: Path | None,
    trainer: Trainer,
    extras: Callable[[Any], dict[str, Any]] | None,
) -> None:
    conf = sweep.resolve(job.point)
    state, origin, notice, known = _start_state(job, given, trainer)
    if state is not None and origin is not None:
        state = adopt(state, conf)
    saved = int(state["epoch"]) if state is not None else 0
    lines = _kept_lines(job, saved) if origin is None else []
    if job.rank == 0:
        job.folder.mkdir(parents=True, exist_ok=True)
        (job.folder / ERROR_LOG).unlink(missing_ok=True)  # an earlier attempt's
        (job.folder / "config.yaml").write_text(yaml.safe_dump(conf.to_dict(), sort_keys=False))
        _rewrite(job.folder / METRICS, lines)
    # epochs the checkpoint holds that the ledger lacks (the driver died before their reports reached it)
    replay = [m for m in lines if known < int(m["epoch"]) <= saved]
    if saved >= conf.train.epochs:  # over before the driver died (or PBT handed it a finished trial's weights)
        ending = (
            replay or lines[-1:] or ([{**origin.pop("metrics", {}), **_origin_report(origin, job)}] if origin else [])
        )
        for m in ending:
            report(m, None)
        return
    for m in replay:
        report(m, None)
    first = {
        **(extras(conf) if extras else {}),
        **_origin_report(origin, job),
        **({"notice": notice} if notice else {}),
    }
    # the model is exported before the last epoch's report: a scheduler (ASHA at max_t) may end the trial
    # on that report, and nothing after it would run. Not at all under `mlflow: {log_models: false}`: an
    # export costs a trial seconds of CPU (torch.export, and MLflow's own imports in a fresh worker)
    export = (lambda: _export(job, conf, trainer)) if sweep.log_models else None
    reporter = Reporter(job, report, trainer, first, export, conf.train.epochs)
    trainer.fit(conf, reporter, state)


def _export(job: TrialJob, conf: Any, trainer: Trainer) -> None:
    """The finished trial's model (trainer.export); a failure there leaves a note, never fails the trial."""
    try:
        trainer.export(job.folder, conf)
    except Exception as e:
        (job.folder / "model.error").write_text(f"{type(e).__name__}: {first_line(e, 300)}\n")


def _start_state(
    job: TrialJob, given: Path | None, trainer: Trainer
) -> tuple[dict[str, Any] | None, dict | None, str | None, int]:
    """(engine state to continue from, the origin when it is another trial's checkpoint (PBT's exploit),
    a notice when the newest checkpoint did not load and the older one is used, the last epoch the
    driver is known to have: the ledger's, or the epoch of the checkpoint Tune hands a retried trial)."""
    known = job.known_epoch
    if given is not None:
        origin = json.loads((given / ORIGIN).read_text()) if (given / ORIGIN).is_file() else {}
        if str(origin.get("key", job.key)) != job.key:
            return trainer.load(given / "state.pt"), origin, None, known
        known = max(known, int(origin.get("epoch", 0)))  # Tune registered it with its epoch's report
    from sweeplab.engine import CheckpointError

    if not _has_checkpoint(job.folder):
        return None, None, None, known
    try:
        state, path, problems = trainer.newest(job.folder)
    except CheckpointError as e:
        raise Unrecoverable(f"this trial cannot be resumed from its checkpoints and must be rerun: {e}") from None
    notice = f"{problems[0]}; continuing from {path} (epoch {state['epoch']})" if problems else None
    return state, None, notice, known


def _has_checkpoint(folder: Path) -> bool:
    return (folder / "checkpoint.pt").exists() or (folder / "checkpoint.prev.pt").exists()


def _origin_report(origin: dict[str, Any] | None, job: TrialJob) -> dict[str, Any]:
    """What the first report of a trial that took another's checkpoint says about it (the ledger's `origin`)."""
    if origin is None:
        return {}
    return {
        "origin": {k: v for k, v in origin.items() if k != "metrics"},
        "point": dict(job.point),
        "label": label(job.point),
    }


def _kept_lines(job: TrialJob, saved: int) -> list[dict[str, Any]]:
    """The metrics lines of the folder up to the checkpoint's epoch (the first of each epoch); a torn
    line or one past the checkpoint (trained after it, lost with the kill) is dropped."""
    path, out = job.folder / METRICS, dict[int, dict[str, Any]]()
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if isinstance(m, dict) and isinstance(m.get("epoch"), int) and m["epoch"] <= saved:
            out.setdefault(m["epoch"], m)
    return [out[e] for e in sorted(out)]


def _rewrite(path: Path, lines: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(m) + "\n" for m in lines))
    os.replace(tmp, path)


class Reporter:
    """The engine's on_epoch for a trial: the epoch's line in metrics.jsonl, then its checkpoint in the
    folder, after the last epoch the model (`last`), then the report (rank 0; other DDP ranks only
    report, as Train's barrier needs)."""

    def __init__(
        self,
        job: TrialJob,
        report: Report,
        trainer: Trainer,
        first: dict[str, Any],
        last: Callable[[], None] | None = None,
        epochs: int = 0,
    ) -> None:
        self.job, self.report, self.trainer, self.first = job, report, trainer, first
        self.last, self.epochs = last, epochs
        self.val: dict[str, float] = {}

    def __call__(
        self, metrics: dict[str, float], state: Callable[[], dict[str, Any]], extra: dict[str, Any] | None = None
    ) -> None:
        import time

        # when the epoch was measured, on this worker: MLflow logs it with this time
        out = {**metrics, **(extra or {}), "reported_at": time.time()}
        if "val/error" in metrics:
            self.val = {k: v for k, v in metrics.items() if k.startswith("val/")}  # whichever the sweep ranks by
        else:  # eval_every > 1: schedulers need the metric every epoch; flagged so tracking skips it
            out.update(self.val, val_stale=True)
        out.update(self.first)
        self.first = {}
        if self.job.rank != 0:
            self.report(out, None)
            return
        folder = self.job.folder
        with (folder / METRICS).open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        newest = self.trainer.save(folder, state())
        if self.last is not None and int(metrics["epoch"]) >= self.epochs:
            self.last()
        handed = Path(tempfile.mkdtemp(prefix=".report-", dir=folder))
        try:  # Tune copies the folder into its own storage for retries and PBT; a hard link costs nothing
            _link_or_copy(newest, handed / "state.pt")
            # whose weights, after which epoch, measured how (PBT's exploit reads it)
            origin = {"key": self.job.key, "epoch": int(metrics["epoch"]), "metrics": metrics}
            (handed / ORIGIN).write_text(json.dumps(origin))
            self.report({**out, "checkpoint": str(newest)}, handed)
        finally:
            shutil.rmtree(handed, ignore_errors=True)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def own_key(launch_dir: Path, tune_id: str, configured: str) -> str:
    """The ledger key of the Tune trial `tune_id`: the one its config named when it first started. PBT's
    exploit hands a trial a copy of another trial's config, key included, so the first is kept on disk."""
    path = launch_dir / TUNE_DIR / "keys" / tune_id
    try:
        return path.read_text()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(configured)
        return configured


def adopt(state: dict[str, Any], conf: Any) -> dict[str, Any]:
    """A checkpoint of another trial's config (PBT's exploit) continues with this trial's optimiser
    hyperparameters: the loaded optimiser state would otherwise bring the donor's weight decay and
    momentum back (the learning rate is recomputed every step, so it follows the config anyway)."""
    if state["config"].get("optim") == conf.to_dict()["optim"]:
        return state
    for group in state["optimizer"]["param_groups"]:
        if "weight_decay" in group and not group.get("lars_exclude"):
            group["weight_decay"] = conf.optim.weight_decay
        if "momentum" in group:
            group["momentum"] = conf.optim.momentum
    return state


def error_of(folder: Path) -> tuple[str, str | None]:
    """A failed trial's one-line cause and the log that holds its traceback (None when it left none:
    its worker process died, e.g. killed for memory)."""
    log = folder / ERROR_LOG
    try:
        lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
    except OSError:
        return "it failed outside its training code (its worker process died, or Ray could not start it)", None
    return (lines[-1] if lines else "failed"), str(log)
