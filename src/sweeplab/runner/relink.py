"""Checkpoints that Tune's saved state names but that no longer exist, put back before a resume.

Tune deletes a trial's older checkpoints (`CheckpointConfig.num_to_keep`) as soon as a newer one is
registered, yet saves its experiment state at most every TUNE_GLOBAL_CHECKPOINT_S, and sweeplab keeps
a verified copy of that state at most every second (launch_state). A driver killed in between leaves
a state whose trial restores from a deleted checkpoint: "Could not recover from checkpoint as it does
not exist on storage anymore", and the trial fails twice on every resume. The newer checkpoint that
replaced it is still there, so it takes the missing one's place: the trial carries on from the epoch
it had really reached (epochs are read from the checkpoint, and every scheduler counts epochs).

The state's checkpoint records are pickles; they are read here as bytes, never unpickled.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

CKPT = re.compile(rb"checkpoint_\d{6}")
SHORT_STR, STR = 0x8C, 0x58  # pickle's SHORT_BINUNICODE (1-byte length) and BINUNICODE (4-byte length)


def _pickled_paths(data: bytes) -> set[str]:
    """The pickled strings in `data` that end in a checkpoint folder's name."""
    found = set()
    for m in CKPT.finditer(data):
        end = m.end()
        for p in range(end - len(m.group()) - 1, max(end - 4096, 0) - 1, -1):
            if data[p] == SHORT_STR and data[p + 1] == end - p - 2:
                found.add(data[p + 2 : end].decode("utf-8", "replace"))
                break
            if data[p] == STR and int.from_bytes(data[p + 1 : p + 5], "little") == end - p - 5:
                found.add(data[p + 5 : end].decode("utf-8", "replace"))
                break
    return found


def _referenced(launch: Path) -> dict[Path, set[str]]:
    """Trial folder -> the checkpoint folder names its saved checkpoint records hold."""
    states = sorted(launch.glob("experiment_state-*.json"))
    if not states:
        return {}
    out: dict[Path, set[str]] = {}
    for trial, meta in json.loads(states[-1].read_text())["trial_data"]:
        trial, meta = json.loads(trial), json.loads(meta)
        manager = meta.get("checkpoint_manager")
        logdir = trial.get("relative_logdir")
        if not isinstance(manager, dict) or not isinstance(logdir, str) or not manager.get("value"):
            continue
        paths = _pickled_paths(bytes.fromhex(manager["value"]))
        out[launch / logdir] = {Path(p).name for p in paths if Path(p).parent.name == logdir}
    return out


def relink(launch_dir: str | Path) -> list[str]:
    """Copy each trial's newest checkpoint into every checkpoint folder its saved state names that is
    gone; return one line per trial that needed it. A trial with no checkpoint left is not touched."""
    notes = []
    for trial_dir, names in _referenced(Path(launch_dir)).items():
        missing = sorted(n for n in names if not (trial_dir / n).is_dir())
        present = sorted(p for p in trial_dir.glob("checkpoint_[0-9]*") if p.is_dir()) if trial_dir.is_dir() else []
        if not missing or not present:
            continue
        for name in missing:
            shutil.copytree(present[-1], trial_dir / name)
        notes.append(f"{trial_dir.name}: {', '.join(missing)} deleted after Tune's last saved state; "
                     f"resuming from {present[-1].name}")  # fmt: skip
    return notes
