"""A run's checkpoints on disk, for `sweeplab train` and for every trial of a sweep alike.

A folder keeps the newest two: `checkpoint.pt` and the one before it, `checkpoint.prev.pt`. Each is
written to a temporary file, fsynced, then renamed over, so a kill or a full disk never leaves a
torn newest one; and when the newest does not load anyway (a bit flipped, a file cut by hand) the
older one is there. Both load as tensors and plain data only (`engine.load_checkpoint`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sweeplab.engine import CheckpointError, load_checkpoint

CHECKPOINT, PREVIOUS, TMP = "checkpoint.pt", "checkpoint.prev.pt", "checkpoint.tmp"


def save(folder: Path, state: dict[str, Any]) -> Path:
    """Write `state` as `folder/checkpoint.pt`, keeping the one before as `checkpoint.prev.pt`; an OSError
    (full disk) leaves the two there were, and no temporary file."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    newest, tmp = folder / CHECKPOINT, folder / TMP
    try:
        with tmp.open("wb") as f:  # through a Python file: a full disk raises OSError, not torch's RuntimeError
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before it replaces anything
        if newest.exists():
            os.replace(newest, folder / PREVIOUS)
        os.replace(tmp, newest)  # atomic: a crash mid-write never leaves a torn checkpoint
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return newest


def exists(folder: Path) -> bool:
    """Whether `folder` holds a checkpoint (loadable or not)."""
    return (folder / CHECKPOINT).exists() or (folder / PREVIOUS).exists()


def newest(folder: Path) -> tuple[dict[str, Any], Path, list[str]]:
    """The newest checkpoint of `folder` that loads, its path, and why each newer one did not (e.g. a
    crash between the two renames leaves no checkpoint.pt, while the older one is whole).
    CheckpointError naming every problem when none loads, or when there is none."""
    problems = []
    for path in (folder / CHECKPOINT, folder / PREVIOUS):
        if not path.exists() and path.name == CHECKPOINT and (folder / PREVIOUS).exists():
            problems.append(f"{path}: missing")
            continue
        try:
            return load_checkpoint(path), path, problems
        except CheckpointError as e:
            problems.append(str(e))
    raise CheckpointError("; ".join(problems))
