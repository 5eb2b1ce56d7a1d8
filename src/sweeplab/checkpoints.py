"""A run's checkpoints on disk, for `sweeplab train` and for every trial of a sweep alike.

A folder keeps the newest two: `checkpoint.pt` and the one before it, `checkpoint.prev.pt`. Each is
written to a temporary file, fsynced, then renamed over, so a kill or a full disk never leaves a
torn newest one; and when the newest does not load anyway (a bit flipped, a file cut by hand) the
older one is there. Both load as tensors and plain data only (`load_checkpoint`, which refuses anything
else unread, and a file of another CHECKPOINT_VERSION). The engine re-exports `load_checkpoint` and
`CheckpointError` for its callers.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

from sweeplab.core.errors import first_line

CHECKPOINT, PREVIOUS, TMP = "checkpoint.pt", "checkpoint.prev.pt", "checkpoint.tmp"
CHECKPOINT_VERSION = 1
_STATE_KEYS = {"version", "epoch", "step", "model", "optimizer", "scaler", "config"}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: missing, truncated, corrupt, refused or of another version."""


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's state, read as tensors and plain data only: with weights_only a file that names
    any other object (a crafted pickle calling os.system, say) is refused, never unpickled."""
    import torch

    try:
        # torch.load does not check the zip's CRCs: a flipped bit in the weights would load silently
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                if (bad := z.testzip()) is not None:
                    raise CheckpointError(f"{path}: corrupt (checksum mismatch in {bad})")
        with warnings.catch_warnings():  # torch warns about a crafted file's pickle protocol: say it once, below
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except pickle.UnpicklingError as e:  # torch's safe unpickler met something it does not allow
        code = re.search(r"GLOBAL (\S+)", str(e))
        what = (
            f"it names code ({code.group(1)}), not only tensors and plain data"
            if code
            else "corrupt, or it holds objects other than tensors and plain data"
        )
        raise CheckpointError(f"{path}: refused: {what}; it was not unpickled") from None
    except Exception as e:  # a truncated zip, an empty file, a read error: torch raises many kinds
        raise CheckpointError(f"{path}: truncated or corrupt ({first_line(e, 120) or type(e).__name__})") from None
    if not isinstance(state, dict) or not _STATE_KEYS <= state.keys():
        raise CheckpointError(f"{path}: not a sweeplab checkpoint")
    if state["version"] != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {state['version']!r}, this sweeplab reads {CHECKPOINT_VERSION}"
        )
    return state


def save(folder: Path, state: dict[str, Any]) -> Path:
    """Write `state` as `folder/checkpoint.pt`, keeping the one before as `checkpoint.prev.pt`; an OSError
    (full disk) leaves the two there were, and no temporary file."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    newest, tmp = folder / CHECKPOINT, folder / TMP
    try:
        with tmp.open("wb") as f:  # through a Python file: a full disk raises OSError, not torch's RuntimeError
            try:
                torch.save(state, f)
            except RuntimeError as e:
                raise _write_error(e, tmp) from e
            f.flush()
            os.fsync(f.fileno())  # on disk before it replaces anything
        if newest.exists():
            os.replace(newest, folder / PREVIOUS)
        os.replace(tmp, newest)  # atomic: a crash mid-write never leaves a torn checkpoint
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return newest


def _write_error(e: RuntimeError, path: Path) -> BaseException:
    """torch's zip writer reports a failed write as a RuntimeError ("unexpected pos ..."), sometimes with the
    OSError behind it, sometimes without: the OSError when there is one, ENOSPC when the disk is full."""
    cause: BaseException | None = e
    while cause is not None:
        if isinstance(cause, OSError):
            return cause
        cause = cause.__context__
    try:
        full = os.statvfs(path.parent).f_bavail == 0
    except OSError:
        full = False
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) if full else e


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
