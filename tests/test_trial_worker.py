"""The inside of a trial, without Ray (runner/worker.py): its folder `trials/<key>/`, its reports, starting
again from its own newest checkpoint that loads, replaying what the ledger lacks, PBT's exploit, failures.

Most tests use a stand-in trainer whose epochs take microseconds but whose checkpoints are real files
(sweeplab/checkpoints.py); one trains the real engine on tiny synthetic data.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from sweep_cli import write_sweep
from sweeplab import config, engine
from sweeplab.runner import worker
from sweeplab.search_spaces import label, load

ROOT = Path(__file__).resolve().parents[1]
SWEEP = load(ROOT / "sweeps" / "quickstart.yaml", smoke=True)  # 3 epochs a trial unless a point says otherwise
POINT = SWEEP.points()[0]


class Trainer(worker.Engine):
    """The engine's interface in microseconds: each epoch's weight is its number, its optimiser settings
    the config's; `fail` makes an epoch raise. What `fit` was handed and when `save` ran are recorded."""

    def __init__(self, fail: int | None = None) -> None:
        self.fail, self.given, self.saves, self.exports = fail, [], [], []

    def fit(self, conf: Any, on_epoch: Callable[..., None], checkpoint: dict[str, Any] | None) -> Any:
        self.given.append(checkpoint)
        start = int(checkpoint["epoch"]) if checkpoint else 0
        groups = checkpoint["optimizer"]["param_groups"] if checkpoint else [group(conf)]
        for epoch in range(start + 1, conf.train.epochs + 1):
            if epoch == self.fail:
                raise ValueError(f"loss is nan at epoch {epoch}")
            m = {"epoch": epoch, "train/loss": 1.0 / epoch, "val/error": 50.0 - epoch, "val/loss": 0.5}
            on_epoch(m, lambda epoch=epoch: state(epoch, conf.to_dict(), groups))
        return {}

    def save(self, folder: Path, s: dict[str, Any]) -> Path:
        lines = (folder / worker.METRICS).read_text().splitlines()
        self.saves.append((s["epoch"], json.loads(lines[-1])["epoch"]))  # (checkpoint's epoch, metrics' last)
        return super().save(folder, s)

    def export(self, folder: Path, conf: Any) -> None:
        self.exports.append(self.newest(folder)[0]["epoch"])  # the MLflow model of the final weights


def group(conf: Any) -> dict[str, Any]:
    return {"weight_decay": conf.optim.weight_decay, "momentum": conf.optim.momentum}


def state(epoch: int, conf: dict[str, Any], groups: list[dict[str, Any]]) -> dict[str, Any]:
    """An engine checkpoint's layout (engine.Trainer.state_dict) with a one-tensor model."""
    return {
        "version": engine.CHECKPOINT_VERSION,
        "epoch": epoch,
        "step": 10 * epoch,
        "model": {"w": torch.full((2,), float(epoch))},
        "optimizer": {"state": {}, "param_groups": [dict(g) for g in groups]},
        "scaler": {},
        "config": conf,
    }


class Reports:
    """The executor's `report`: each epoch's metrics, and what the checkpoint folder it was handed held
    (that folder is gone once report returns, as Tune copies it away)."""

    def __init__(self) -> None:
        self.metrics: list[dict[str, Any]] = []
        self.handed: list[dict[str, Any] | None] = []

    def __call__(self, metrics: dict[str, Any], folder: Path | None) -> None:
        self.metrics.append(metrics)
        if folder is None:
            self.handed.append(None)
        else:
            s = engine.load_checkpoint(folder / "state.pt")
            self.handed.append({"origin": json.loads((folder / worker.ORIGIN).read_text()), "epoch": s["epoch"]})

    @property
    def epochs(self) -> list[int]:
        return [int(m["epoch"]) for m in self.metrics]


def handed_from(h: dict[str, Any] | None) -> tuple[str, int, int] | None:
    """(whose weights, after which epoch, the epoch of the state handed) of a handed checkpoint folder."""
    return None if h is None else (h["origin"]["key"], h["origin"]["epoch"], h["epoch"])


def job(tmp_path: Path, key: str = "0", point: dict | None = None, known: int = 0, rank: int = 0) -> worker.TrialJob:
    return worker.TrialJob(key, dict(POINT if point is None else point), tmp_path / "trials" / key, known, rank)


def run(j: worker.TrialJob, trainer: Trainer | None = None, given: Path | None = None, **kw: Any) -> Reports:
    reports = Reports()
    worker.run_trial(j, SWEEP, reports, given, trainer=trainer or Trainer(), **kw)
    return reports


def metrics_lines(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (folder / worker.METRICS).read_text().splitlines()]


def saved_epoch(path: Path) -> int:
    return int(engine.load_checkpoint(path)["epoch"])


def half(path: Path) -> None:
    """Truncate a checkpoint, as a crash or a full disk would."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ---- a trial's folder and reports -----------------------------------------------------------------


def test_a_trial_writes_its_folder_and_reports_each_epoch_after_its_checkpoint(tmp_path):
    j, trainer = job(tmp_path), Trainer()
    reports = run(j, trainer, extras=lambda conf: {"hardware": "cpu x2", "dataset": {"name": conf.data.name}})
    folder = j.folder
    assert sorted(p.name for p in folder.iterdir()) == [
        "checkpoint.prev.pt",
        "checkpoint.pt",
        "config.yaml",
        "metrics.jsonl",
    ]  # no temporary folder handed to the executor is left behind
    assert yaml.safe_load((folder / "config.yaml").read_text()) == SWEEP.resolve(POINT).to_dict()
    assert saved_epoch(folder / "checkpoint.pt") == 3 and saved_epoch(folder / "checkpoint.prev.pt") == 2
    # each epoch's line is in metrics.jsonl before its checkpoint is written
    assert trainer.saves == [(1, 1), (2, 2), (3, 3)]
    assert [m["epoch"] for m in metrics_lines(folder)] == [1, 2, 3] and "reported_at" not in metrics_lines(folder)[0]
    assert reports.epochs == [1, 2, 3]
    first, second = reports.metrics[:2]
    assert first["hardware"] == "cpu x2" and first["dataset"] == {"name": "fashion_mnist"}
    assert "hardware" not in second and "origin" not in first  # the extras come once; it took no one's weights
    for m in reports.metrics:
        assert m["checkpoint"] == str(folder / "checkpoint.pt") and isinstance(m["reported_at"], float)
    # the folder handed with each report (Tune keeps it for its retries and PBT) says whose weights, of which epoch
    assert [handed_from(h) for h in reports.handed] == [("0", 1, 1), ("0", 2, 2), ("0", 3, 3)]


def test_an_epoch_without_evaluation_carries_the_last_validation_forward_flagged(tmp_path):
    reports, j = Reports(), job(tmp_path)
    r = worker.Reporter(j, reports, Trainer(), {})
    j.folder.mkdir(parents=True)
    (j.folder / worker.METRICS).write_text("")
    r({"epoch": 1, "val/error": 50.0, "val/loss": 1.0}, lambda: state(1, {}, []))
    r({"epoch": 2, "train/loss": 0.5}, lambda: state(2, {}, []))  # eval_every > 1: not evaluated this epoch
    one, two = reports.metrics
    assert two["val/error"] == 50.0 and two["val/loss"] == 1.0 and two["val_stale"] is True and "val_stale" not in one
    assert metrics_lines(j.folder)[1] == {"epoch": 2, "train/loss": 0.5}  # the folder has what was measured


def test_other_ddp_ranks_report_without_writing_anything(tmp_path):
    j = job(tmp_path, rank=1)

    class NoSave(Trainer):
        def save(self, folder: Path, s: dict[str, Any]) -> Path:
            raise AssertionError("rank 1 wrote a checkpoint")

    reports = run(j, NoSave())
    assert reports.epochs == [1, 2, 3] and reports.handed == [None, None, None]
    assert "checkpoint" not in reports.metrics[0] and not j.folder.exists()


# ---- starting again -------------------------------------------------------------------------------


def test_a_trial_continues_from_its_newest_checkpoint_that_loads_and_says_so_once(tmp_path, capsys):
    j = job(tmp_path, known=2)
    with pytest.raises(worker.TrialFailed):
        run(j, Trainer(fail=3))  # checkpoints of epochs 2 and 1, then epoch 3 fails
    assert (j.folder / worker.ERROR_LOG).is_file()
    half(j.folder / "checkpoint.pt")
    capsys.readouterr()
    trainer = Trainer()
    reports = run(j, trainer)
    assert trainer.given[0]["epoch"] == 1 and torch.equal(trainer.given[0]["model"]["w"], torch.ones(2))
    assert reports.epochs == [2, 3]  # the ledger has 2 already (it keeps its first report of an epoch)
    # said once, in the first report (the driver shows it and the ledger keeps it), not on the worker's stderr
    notice = reports.metrics[0]["notice"]
    assert notice.startswith(f"{j.folder / 'checkpoint.pt'}: ") and "\n" not in notice
    assert notice.endswith(f"; continuing from {j.folder / 'checkpoint.prev.pt'} (epoch 1)")
    assert "notice" not in reports.metrics[1] and capsys.readouterr().err == ""
    assert [m["epoch"] for m in metrics_lines(j.folder)] == [1, 2, 3]  # epoch 2's line trimmed, written again
    assert not (j.folder / worker.ERROR_LOG).exists()  # the earlier attempt's
    assert saved_epoch(j.folder / "checkpoint.pt") == 3 and saved_epoch(j.folder / "checkpoint.prev.pt") == 2


def test_a_missing_newest_checkpoint_falls_back_to_the_older(tmp_path):
    j = job(tmp_path, known=2)
    with pytest.raises(worker.TrialFailed):
        run(j, Trainer(fail=3))
    (j.folder / "checkpoint.pt").replace(j.folder / "checkpoint.prev.pt")  # killed between the two renames
    trainer = Trainer()
    reports = run(j, trainer)
    assert reports.epochs == [3] and trainer.given[0]["epoch"] == 2
    assert reports.metrics[0]["notice"].startswith(f"{j.folder / 'checkpoint.pt'}: missing; continuing from ")


def test_a_trial_whose_own_newest_checkpoint_loads_says_nothing(tmp_path):
    j = job(tmp_path, known=2)
    with pytest.raises(worker.TrialFailed):
        run(j, Trainer(fail=3))
    reports = run(j)
    assert reports.epochs == [3] and "notice" not in reports.metrics[0]


def test_a_trial_whose_checkpoints_all_fail_to_load_cannot_be_resumed(tmp_path):
    j = job(tmp_path, known=2)
    with pytest.raises(worker.TrialFailed):
        run(j, Trainer(fail=3))
    half(j.folder / "checkpoint.pt")
    (j.folder / "checkpoint.prev.pt").write_bytes(b"")
    trainer = Trainer()
    with pytest.raises(worker.TrialFailed) as e:
        run(j, trainer)
    assert trainer.given == []  # nothing trained from scratch over the trial's record
    cause = e.value.__cause__
    assert isinstance(cause, worker.Unrecoverable)
    assert str(cause).startswith("this trial cannot be resumed from its checkpoints and must be rerun: ")
    assert f"{j.folder / 'checkpoint.pt'}: " in str(cause) and f"{j.folder / 'checkpoint.prev.pt'}: " in str(cause)
    assert str(e.value).startswith("Unrecoverable: this trial cannot be resumed") and "\n" not in str(e.value)
    assert "Unrecoverable" in (j.folder / worker.ERROR_LOG).read_text()


def test_epochs_the_checkpoint_holds_but_the_ledger_lacks_are_reported_again(tmp_path):
    """The driver died after the trial's epochs 2 and 3 were in its folder, before their reports reached
    the ledger: the next start reports them from metrics.jsonl, then trains on from the checkpoint."""
    point = {**POINT, "train.epochs": 5}
    j = job(tmp_path, point=point, known=1)
    with pytest.raises(worker.TrialFailed):
        run(j, Trainer(fail=4))
    with (j.folder / worker.METRICS).open("a") as f:  # trained past the checkpoint, lost with the kill, and torn
        f.write(json.dumps({"epoch": 4, "val/error": 1.0}) + "\n" + '{"epoch": 5, "val/e')
    trainer = Trainer()
    reports = run(j, trainer)
    assert reports.epochs == [2, 3, 4, 5] and trainer.given[0]["epoch"] == 3
    assert reports.handed[:2] == [None, None]  # a replayed epoch hands no checkpoint
    assert reports.metrics[:2] == metrics_lines(j.folder)[1:3]  # the lines as measured then
    assert reports.metrics[2]["val/error"] == 46.0  # epoch 4 trained again, not the line lost with the kill
    assert [m["epoch"] for m in metrics_lines(j.folder)] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(("known", "want"), [(3, [3]), (1, [2, 3]), (0, [1, 2, 3])])
def test_a_trial_already_at_its_last_epoch_reports_what_the_ledger_lacks_and_ends(tmp_path, known, want):
    j = job(tmp_path)
    run(j)
    j.known_epoch = known
    trainer = Trainer()
    reports = run(j, trainer)
    assert trainer.given == []  # nothing trained
    assert reports.epochs == want and reports.handed == [None] * len(want)
    assert [m["epoch"] for m in metrics_lines(j.folder)] == [1, 2, 3]


def test_a_retried_trial_handed_its_own_checkpoint_continues_from_its_folder(tmp_path):
    """Tune hands a retried trial the folder of its last report: its own key, so its own folder rules."""
    j = job(tmp_path, known=2)
    kept: list[Path] = []

    def keep(metrics: dict[str, Any], folder: Path | None) -> None:
        if folder is not None:
            kept.append(Path(shutil.copytree(folder, tmp_path / f"tune-{metrics['epoch']}")))

    with pytest.raises(worker.TrialFailed):
        worker.run_trial(j, SWEEP, keep, None, trainer=Trainer(fail=3))
    trainer = Trainer()
    reports = run(j, trainer, given=kept[0])  # an older folder than the trial's own newest
    assert trainer.given[0]["epoch"] == 2 and reports.epochs == [3] and "origin" not in reports.metrics[0]


# ---- PBT: continuing from another trial's checkpoint ------------------------------------------------


def test_a_trial_given_another_trials_checkpoint_adopts_it_and_says_so_in_its_first_report(tmp_path):
    donor_point = {**POINT, "optim.weight_decay": 0.005}
    donor = job(tmp_path, key="1", point=donor_point)
    handed: list[Path] = []

    def keep(metrics: dict[str, Any], folder: Path | None) -> None:
        handed.append(Path(shutil.copytree(folder, tmp_path / f"tune-1-{metrics['epoch']}")))

    worker.run_trial(donor, SWEEP, keep, None, trainer=Trainer())
    mine = {**POINT, "optim.lr": 0.123}  # PBT perturbed the donor's point into this trial's
    j = job(tmp_path, key="0", point=mine)
    trainer = Trainer()
    reports = run(j, trainer, given=handed[1])  # the donor's epoch 2
    s = trainer.given[0]
    assert s["epoch"] == 2 and torch.equal(s["model"]["w"], torch.full((2,), 2.0))
    conf = SWEEP.resolve(mine)
    assert s["optimizer"]["param_groups"] == [group(conf)]  # this trial's weight decay, not the donor's 0.005
    assert reports.epochs == [3]
    first = reports.metrics[0]
    assert (first["origin"]["key"], first["origin"]["epoch"]) == ("1", 2)
    assert first["point"] == mine and first["label"] == label(mine)
    assert [m["epoch"] for m in metrics_lines(j.folder)] == [3]  # the donor's history is the donor's
    assert yaml.safe_load((j.folder / "config.yaml").read_text())["optim"]["lr"] == 0.123
    assert [handed_from(h) for h in reports.handed] == [("0", 3, 3)]  # its own weights from here on


def test_adopt_gives_a_donor_checkpoint_this_trials_optimiser_settings():
    donor = config.load(None, ["data.name=synthetic", "optim.weight_decay=0.001", "optim.momentum=0.9"])
    mine = config.load(None, ["data.name=synthetic", "optim.weight_decay=0.0001", "optim.momentum=0.8"])
    groups = [{"weight_decay": 0.001, "momentum": 0.9}, {"weight_decay": 0.0, "momentum": 0.9, "lars_exclude": True}]
    s = {"config": donor.to_dict(), "optimizer": {"param_groups": groups}}
    worker.adopt(s, mine)
    assert groups == [
        {"weight_decay": 0.0001, "momentum": 0.8},
        {"weight_decay": 0.0, "momentum": 0.8, "lars_exclude": True},
    ]
    own = {"config": mine.to_dict(), "optimizer": {"param_groups": [{"weight_decay": 0.5}]}}
    assert worker.adopt(own, mine)["optimizer"]["param_groups"] == [{"weight_decay": 0.5}]  # own checkpoint: untouched


def test_own_key_is_the_key_a_tune_trial_first_started_with(tmp_path):
    """PBT's exploit hands a Tune trial a copy of another trial's config, key included: the first one stays."""
    assert worker.own_key(tmp_path, "abc_00000", "0") == "0"
    assert worker.own_key(tmp_path, "abc_00000", "1") == "0"  # cloned from trial 1: still trial 0
    assert worker.own_key(tmp_path, "abc_00001", "1") == "1"
    assert (tmp_path / worker.TUNE_DIR / "keys" / "abc_00000").read_text() == "0"


# ---- failures -------------------------------------------------------------------------------------


def test_a_failure_is_one_line_and_its_traceback_is_in_error_log(tmp_path):
    j = job(tmp_path)
    with pytest.raises(worker.TrialFailed) as e:
        run(j, Trainer(fail=2))
    assert str(e.value) == "ValueError: loss is nan at epoch 2"
    log = j.folder / worker.ERROR_LOG
    text = log.read_text()
    assert text.startswith("Traceback") and "in fit" in text
    assert worker.error_of(j.folder) == ("ValueError: loss is nan at epoch 2", str(log))
    error, where = worker.error_of(tmp_path / "trials" / "9")  # a worker that died left no log
    assert where is None and error


def test_a_long_or_multi_line_error_is_cut_to_one_line(tmp_path):
    class Loud(Trainer):
        def fit(self, conf: Any, on_epoch: Callable[..., None], checkpoint: dict[str, Any] | None) -> Any:
            raise RuntimeError("x" * 1000 + "\nsecond line")

    with pytest.raises(worker.TrialFailed) as e:
        run(job(tmp_path), Loud())
    assert str(e.value) == "RuntimeError: " + "x" * 300


def test_another_ranks_failure_writes_no_error_log(tmp_path):
    j = job(tmp_path, rank=1)
    with pytest.raises(worker.TrialFailed):
        run(j, Trainer(fail=1))
    assert not j.folder.exists()


# ---- the real engine ------------------------------------------------------------------------------


def test_a_real_trial_cut_after_an_epoch_ends_as_one_run_straight_through(tmp_path):
    """The real engine and checkpoints on tiny synthetic data: a trial cut after its first epoch and
    started again from its folder ends with the weights of one that ran straight through."""
    tiny = {"data.synthetic_classes": 4, "train.channels_last": False, "train.epochs": 2}
    sweep = load(write_sweep(tmp_path, overrides=tiny, space={"optim.lr": {"grid": [0.1]}}))
    point = sweep.points()[0]

    class Cut(BaseException):
        pass

    def cut_after_one(metrics: dict[str, Any], folder: Path | None) -> None:
        if metrics["epoch"] == 1:
            raise Cut()

    straight = worker.TrialJob("0", point, tmp_path / "straight" / "0")
    worker.run_trial(straight, sweep, lambda m, f: None)
    cut = worker.TrialJob("0", point, tmp_path / "cut" / "0")
    with pytest.raises(Cut):
        worker.run_trial(cut, sweep, cut_after_one)
    assert saved_epoch(cut.folder / "checkpoint.pt") == 1
    cut.known_epoch = 1
    reports = Reports()
    worker.run_trial(cut, sweep, reports)
    assert reports.epochs == [2]
    a, b = (engine.load_checkpoint(j.folder / "checkpoint.pt") for j in (straight, cut))
    assert b["epoch"] == 2 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [m["epoch"] for m in metrics_lines(cut.folder)] == [1, 2]


def test_a_finished_trial_exports_its_final_weights_and_a_failed_export_is_a_note(tmp_path):
    sweep, point = SWEEP, POINT
    t = Trainer()
    worker.run_trial(worker.TrialJob("0", point, tmp_path / "0"), sweep, lambda m, f: None, trainer=t)
    assert t.exports == [sweep.resolve(point).train.epochs]  # once, after the last epoch
    assert not (tmp_path / "0" / "model.error").exists()

    class Broken(Trainer):
        def export(self, folder: Path, conf: Any) -> None:
            raise RuntimeError("torch.export cannot trace it\nline two")

    reports: list = []
    job = worker.TrialJob("1", point, tmp_path / "1")
    worker.run_trial(job, sweep, lambda m, f: reports.append(m), trainer=Broken())
    assert (tmp_path / "1" / "model.error").read_text() == "RuntimeError: torch.export cannot trace it\n"
    assert len(reports) == sweep.resolve(point).train.epochs and "trial_failed" not in reports[-1]  # the trial stands


def test_a_sweep_that_logs_no_models_exports_none(tmp_path):
    t = Trainer()
    sweep = dataclasses.replace(SWEEP, log_models=False)
    worker.run_trial(worker.TrialJob("0", POINT, tmp_path / "0"), sweep, lambda m, f: None, trainer=t)
    assert t.exports == [] and saved_epoch(tmp_path / "0" / "checkpoint.pt") == sweep.resolve(POINT).train.epochs
