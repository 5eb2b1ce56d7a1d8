"""Checkpoints: loaded as tensors and plain data only (a planted payload never runs, in `train` or in a
sweep's trial), the last two kept with a fallback to the older when the newest is unreadable (for a
sweep's trial: tests/test_trial_worker.py), and a full disk during `train`."""

from __future__ import annotations

import json
import os
import pickle
import shlex
import subprocess
import zipfile
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from sweeplab import config, engine
from sweeplab.cli import main
from sweeplab.runner import worker

CONFIG = str(Path(__file__).parents[1] / "configs/fashion_mnist/resnet_preact20.yaml")
# channels_last off: with it, this torch build's oneDNN CPU kernels corrupt the heap on some CPUs
TINY = [
    "data.name=synthetic",
    "data.synthetic_shape=[1,8,8]",
    "data.synthetic_classes=4",
    "data.synthetic_train=128",
    "data.synthetic_test=64",
    "data.batch_size=32",
    "model.name=resnet_preact",
    "model.depth=8",
    "model.initial_channels=4",
    "train.threads=1",
    "train.channels_last=false",
    "data.device=cpu",
]


class Payload:
    """Unpickling this runs `touch MARKER`: what a crafted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def plant(path: Path, marker: Path, how: str) -> None:
    """Write a payload checkpoint the way an attacker might: torch.save, or a bare pickle (protocol 2 or 4)."""
    obj = {"version": engine.CHECKPOINT_VERSION, "epoch": 1, "model": Payload(marker)}
    if how == "torch":
        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=int(how[-1])))


def corrupt(path: Path, how: str) -> None:
    """Damage a checkpoint as a crash, a full disk or bit rot would."""
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "bitflip":  # in the middle of the largest tensor's bytes: torch.load alone would not notice
        with zipfile.ZipFile(path) as z:
            info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        extra = int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
        i = info.header_offset + 30 + len(info.orig_filename.encode()) + extra + info.file_size // 2
        path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :])
    elif how == "missing":
        path.unlink()
    elif how == "garbage":
        path.write_bytes(os.urandom(len(data)))


def real_state(epoch: int, *extra: str) -> dict:
    """A real engine state (untrained), as `train` and the Reporter save it."""
    trainer = engine.Trainer(config.load(None, TINY + list(extra)))
    trainer.epoch, trainer.step = epoch, 4 * epoch
    return trainer.state_dict()


def err_lines(capsys) -> list[str]:
    """The stderr lines that are not the progress bar's."""
    return [ln for ln in capsys.readouterr().err.replace("\r", "\n").splitlines() if ln.startswith("sweeplab")]


# ---- the state itself -----------------------------------------------------------------------------


@pytest.mark.parametrize("optim", ["sgd", "adam", "amsgrad", "lars"])
def test_a_trained_state_of_every_optimiser_loads_with_weights_only(tmp_path, optim):
    states = []
    conf = config.load(
        None,
        TINY + ["train.epochs=1", f"optim.name={optim}", "train.precision=fp16", "optim.no_weight_decay_on_bn=true"],
    )
    engine.fit(conf, lambda m, state: states.append(state()))
    torch.save(states[0], tmp_path / "c.pt")
    back = engine.load_checkpoint(tmp_path / "c.pt")
    assert back["scaler"]["scale"] > 0  # fp16's GradScaler state came through
    assert back["optimizer"]["param_groups"] == states[0]["optimizer"]["param_groups"]
    assert all(torch.equal(back["model"][k], v) for k, v in states[0]["model"].items())


@pytest.mark.parametrize("how", ["truncated", "empty", "bitflip", "missing", "garbage"])
def test_a_damaged_checkpoint_is_reported_not_loaded(tmp_path, how):
    path = tmp_path / "c.pt"
    torch.save(real_state(1), path)
    corrupt(path, how)
    with pytest.raises(engine.CheckpointError, match=str(path)):
        engine.load_checkpoint(path)


# ---- a payload never runs -------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["torch", "pickle2", "pickle4"])
def test_train_resume_refuses_a_payload_checkpoint(tmp_path, capsys, how):
    out, marker = tmp_path / "run", tmp_path / "MARKER"
    args = ["train", CONFIG, *TINY, "train.epochs=2", "--output", str(out), "--no-mlflow"]
    assert main([*args, "--stop-after", "1"]) == 0
    plant(out / "checkpoint.pt", marker, how)
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert not marker.exists()
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("sweeplab: error: ") and f"{out / 'checkpoint.pt'}: refused" in err
    assert "checkpoint.prev.pt: missing" in err  # both files named
    if how != "pickle4":  # protocol 4 frames hide the global from torch's message
        assert "posix.system" in err


@pytest.mark.parametrize("how", ["torch", "pickle2"])
@pytest.mark.parametrize("where", ["own", "given"])
def test_a_sweep_trial_refuses_a_payload_checkpoint(tmp_path, how, where):
    """A trial starts from its own folder's checkpoint, or from one Tune hands it (a retry, PBT's exploit):
    a payload planted in either is refused, never run, and the trial fails with one line."""
    from sweeplab.search_spaces import load

    sweep = load(Path(__file__).parents[1] / "sweeps" / "quickstart.yaml", smoke=True)
    marker, folder = tmp_path / "MARKER", tmp_path / "trials" / "0"
    given = None
    if where == "own":
        folder.mkdir(parents=True)
        plant(folder / "checkpoint.pt", marker, how)
    else:
        given = tmp_path / "handed"
        given.mkdir()
        plant(given / "state.pt", marker, how)
        (given / worker.ORIGIN).write_text(json.dumps({"key": "1", "epoch": 1}))  # another trial's weights
    job = worker.TrialJob("0", sweep.points()[0], folder, known_epoch=1)
    with pytest.raises(worker.TrialFailed) as e:
        worker.run_trial(job, sweep, lambda metrics, handed: None, given)
    assert not marker.exists()
    assert "refused" in str(e.value) and "\n" not in str(e.value)
    if where == "own":
        assert str(e.value).startswith("Unrecoverable: this trial cannot be resumed")


# ---- train: the last two checkpoints --------------------------------------------------------------


def _epochs(out: Path) -> list[int]:
    return [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_train_keeps_two_checkpoints_and_resumes_from_the_older_exactly(tmp_path, capsys):
    args = [CONFIG, *TINY, "augment.mixup=1.0", "train.epochs=3"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", *args, "--output", str(straight), "--no-mlflow"]) == 0
    assert main(["train", *args, "--output", str(split), "--stop-after", "2", "--no-mlflow"]) == 0
    assert engine.load_checkpoint(split / "checkpoint.pt")["epoch"] == 2
    assert engine.load_checkpoint(split / "checkpoint.prev.pt")["epoch"] == 1
    corrupt(split / "checkpoint.pt", "truncated")
    capsys.readouterr()
    assert main(["train", *args, "--output", str(split), "--resume", "--no-mlflow"]) == 0
    warned = err_lines(capsys)
    assert len(warned) == 1 and "checkpoint.pt: truncated or corrupt" in warned[0]
    assert "checkpoint.prev.pt (epoch 1)" in warned[0]
    assert _epochs(split) == [1, 2, 3]  # the epoch-2 line was trimmed and written again
    a, b = (engine.load_checkpoint(d / "checkpoint.pt") for d in (straight, split))
    assert b["epoch"] == 3 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert engine.load_checkpoint(split / "checkpoint.prev.pt")["epoch"] == 2  # not the damaged file
    assert (split / "checkpoint.bad.pt").exists() and not (split / "checkpoint.tmp").exists()
    lines = [json.loads(x) for x in (split / "metrics.jsonl").read_text().splitlines()]
    assert lines == [
        json.loads(x)
        | {
            "time/train_s": y["time/train_s"],
            "time/epoch_s": y["time/epoch_s"],
            "time/images_per_s": y["time/images_per_s"],
        }
        for x, y in zip((straight / "metrics.jsonl").read_text().splitlines(), lines)
    ]


def test_train_resume_with_both_checkpoints_unreadable_names_both(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", CONFIG, *TINY, "train.epochs=3", "--output", str(out), "--no-mlflow"]
    assert main([*args, "--stop-after", "2"]) == 0
    corrupt(out / "checkpoint.pt", "bitflip")
    corrupt(out / "checkpoint.prev.pt", "empty")
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("sweeplab: error: --resume:")
    assert f"{out / 'checkpoint.pt'}: corrupt" in err and f"{out / 'checkpoint.prev.pt'}: truncated" in err
    assert _epochs(out) == [1, 2]  # nothing rewritten


def test_train_resume_after_a_crash_between_the_renames(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", CONFIG, *TINY, "train.epochs=2", "--output", str(out), "--no-mlflow"]
    assert main([*args, "--stop-after", "1"]) == 0
    os.replace(out / "checkpoint.pt", out / "checkpoint.prev.pt")  # killed before the new one went in
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    assert "checkpoint.pt: missing" in err_lines(capsys)[0]
    assert _epochs(out) == [1, 2]


# ---- a full disk ----------------------------------------------------------------------------------


@contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def test_train_on_a_full_disk_stops_with_one_line_and_resumes_once_space_is_freed(tmp_path, capsys):
    args = [CONFIG, *TINY, "train.epochs=4"]
    assert main(["train", *args, "train.epochs=1", "--output", str(tmp_path / "probe"), "--no-mlflow"]) == 0
    size = (tmp_path / "probe" / "checkpoint.pt").stat().st_size
    with tmpfs(tmp_path / "disk", "1m") as disk:
        # room for the config, the metrics and two and a half checkpoints: the third write (epoch 3,
        # while checkpoint.pt and checkpoint.prev.pt are both kept) finds the disk full
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        (disk / "filler").write_bytes(b"\0" * (free - int(2.5 * size) - 3 * 4096))
        out = disk / "run"
        capsys.readouterr()
        assert main(["train", *args, "--output", str(out), "--no-mlflow"]) == 1
        err = err_lines(capsys)
        assert len(err) == 1 and err[0].startswith("sweeplab: error: disk full: could not write ")
        assert str(out) in err[0] and "epoch 2 is kept" in err[0] and "--resume" in err[0]
        assert not (out / "checkpoint.tmp").exists() and not (out / "metrics.tmp").exists()
        assert engine.load_checkpoint(out / "checkpoint.pt")["epoch"] == 2
        (disk / "filler").unlink()
        assert main(["train", *args, "--output", str(out), "--resume", "--no-mlflow"]) == 0
        assert _epochs(out) == [1, 2, 3, 4]
        assert engine.load_checkpoint(out / "checkpoint.pt")["epoch"] == 4
