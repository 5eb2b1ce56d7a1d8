"""runner/relink: the checkpoint names in Tune's pickled records are found as bytes, never unpickled."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

from sweeplab.runner import relink


def _state(launch: Path, logdir: str, names: list[str]) -> None:
    """An experiment state like Tune's: each trial's checkpoint manager a pickle, hex in JSON."""
    record = {"_checkpoint_results": [{"path": str(launch / logdir / n)} for n in names], "n": 2}
    meta = {"checkpoint_manager": {"_type": "CLOUDPICKLE_FALLBACK", "value": pickle.dumps(record, 5).hex()}}
    trial = {"trial_id": "a_00000", "relative_logdir": logdir}
    data = {"trial_data": [[json.dumps(trial), json.dumps(meta)]], "runner_data": {}}
    (launch / "experiment_state-2026-12-03_00-00-00.json").write_text(json.dumps(data))


def _ckpt(folder: Path, epoch: int) -> None:
    folder.mkdir(parents=True)
    (folder / "state.pt").write_text(f"epoch {epoch}")


def test_a_deleted_checkpoint_is_replaced_by_the_newest_and_said(tmp_path):
    tmp_path = tmp_path / ("d" * 200) / ("e" * 100)  # a path over 255 bytes: pickled with a 4-byte length
    tmp_path.mkdir(parents=True)
    logdir = "train_trial_a_00000_lr=0.1"
    _state(tmp_path, logdir, ["checkpoint_000001", "checkpoint_000002"])
    _ckpt(tmp_path / logdir / "checkpoint_000001", 2)
    _ckpt(tmp_path / logdir / "checkpoint_000003", 4)  # registered after the save; 000002 deleted then
    notes = relink.relink(tmp_path)
    assert notes == [f"{logdir}: checkpoint_000002 deleted after Tune's last saved state; resuming from "
                     "checkpoint_000003"]  # fmt: skip
    assert (tmp_path / logdir / "checkpoint_000002" / "state.pt").read_text() == "epoch 4"
    assert (tmp_path / logdir / "checkpoint_000001" / "state.pt").read_text() == "epoch 2"  # untouched
    assert relink.relink(tmp_path) == []  # nothing missing any more


def test_short_paths_and_trials_with_nothing_left_are_left_alone(tmp_path):
    _state(tmp_path, "t", ["checkpoint_000000"])
    assert relink._pickled_paths(b"no checkpoint_0000 here") == set()
    assert relink.relink(tmp_path) == []  # no checkpoint on disk at all: Tune reports that itself
    _ckpt(tmp_path / "t" / "checkpoint_000000", 1)
    assert relink.relink(tmp_path) == []  # present: nothing to do
    assert relink._pickled_paths(pickle.dumps({"p": str(tmp_path / "t" / "checkpoint_000000")}, 5)) == {
        str(tmp_path / "t" / "checkpoint_000000")
    }


def test_no_saved_state_means_nothing_to_relink(tmp_path):
    assert relink.relink(tmp_path) == []
