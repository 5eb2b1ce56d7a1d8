"""Tune's launch state, kept in verified copies: a pickle in a shared folder never reaches an unpickler.

`Tuner.restore` and `ExperimentAnalysis` unpickle what a launch folder holds (`tuner.pkl`, the
cloudpickled trials in `experiment_state-*.json`, the searcher's state). Anyone who can write to the
storage folder could plant code there. So while a sweep runs, the driver copies Tune's top-level state
files into `.sweeplab-state/<n>/` with an HMAC-SHA256 of each, keyed by a secret kept outside the
storage folder (`~/.config/sweeplab/state.key`, or $SWEEPLAB_KEY_FILE). `resume` and `status` use the
newest copy whose every digest verifies and never read the live files otherwise. The copies double as
the last good state: a Tune state torn by a full disk or a kill is replaced by the copy, never read.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import shutil
import sys
import time
from pathlib import Path

STATE_DIR = ".sweeplab-state"
DIGESTS = "digests.json"
KEEP = 2  # the newest copy and one before it, in case the newest is torn
SKIP = {".validate_storage_marker"}


class StateError(Exception):
    """No verified copy of a launch's Tune state can be used. `refused`: copies exist but none is this
    key's (planted, tampered or another account's: bad input); else there is no copy at all."""

    def __init__(self, message: str, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


def key_file() -> Path:
    """Where the signing key lives: $SWEEPLAB_KEY_FILE, else ~/.config/sweeplab/state.key."""
    return Path(os.environ.get("SWEEPLAB_KEY_FILE") or Path.home() / ".config" / "sweeplab" / "state.key")


def key(create: bool) -> bytes | None:
    """The signing key, created (0600, race-free) when asked and missing; None when missing."""
    path = key_file()
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, secrets.token_bytes(32))
        os.close(fd)
        try:
            os.link(tmp, path)  # atomic and never overwrites: a concurrent first launch keeps its key
        except FileExistsError:
            pass
        os.unlink(tmp)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return data if len(data) >= 16 else None


def _digest(k: bytes, path: Path) -> str:
    mac = hmac.new(k, digestmod=hashlib.sha256)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            mac.update(block)
    return mac.hexdigest()


def _state_files(launch_dir: Path) -> list[Path]:
    return sorted(p for p in launch_dir.iterdir() if p.is_file() and p.name not in SKIP)


class Keeper:
    """Copies a running launch's state files when they change (called from the driver's event loop)."""

    def __init__(self, launch_dir: str | Path, min_interval_s: float = 1.0) -> None:
        self.dir = Path(launch_dir)
        self.key = key(create=True)
        self.min_interval_s = min_interval_s
        self._seen: dict[str, tuple[int, int]] = {}
        self._last = 0.0
        self._warned = False
        existing = (
            [int(p.name) for p in (self.dir / STATE_DIR).glob("[0-9]*")] if (self.dir / STATE_DIR).is_dir() else []
        )
        self._seq = max(existing, default=0)

    def maybe_copy(self, force: bool = False) -> bool:
        """Copy the state if a file changed since the last copy (at most every min_interval_s)."""
        now = time.monotonic()
        if not force and now - self._last < self.min_interval_s:
            return False
        self._last = now
        if not self.dir.is_dir():
            return False
        files = _state_files(self.dir)
        stamp = {p.name: (st.st_mtime_ns, st.st_size) for p in files for st in [p.stat()]}
        if stamp == self._seen or not any(p.name.startswith("experiment_state") for p in files):
            return False
        try:
            if not self._copy(files):  # caught mid-write: the next step copies it whole
                return False
        except OSError as e:  # a full disk: the older copies stay; the sweep goes on, and tries again
            shutil.rmtree(self.dir / STATE_DIR / f"tmp-{self._seq}", ignore_errors=True)
            if not self._warned:
                print(
                    f"sweeplab: warning: could not copy Tune's state ({e}); `resume` would continue from "
                    "the last copy that was made",
                    file=sys.stderr,
                    flush=True,
                )
                self._warned = True
            return False
        self._seen = stamp
        return True

    def newest(self) -> Path | None:
        """The newest copy this keeper made (None before its first)."""
        copy = self.dir / STATE_DIR / f"{self._seq:06d}"
        return copy if copy.is_dir() else None

    def _copy(self, files: list[Path]) -> bool:
        assert self.key is not None
        root = self.dir / STATE_DIR
        root.mkdir(mode=0o700, exist_ok=True)
        self._seq += 1
        tmp = root / f"tmp-{self._seq}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        digests = {}
        for f in files:  # copy first, then sign the copy: a file Tune rewrites meanwhile stays consistent
            shutil.copy2(f, tmp / f.name)
            if not _whole(tmp / f.name):  # Tune's syncer uploads in the background: never sign a torn file
                shutil.rmtree(tmp, ignore_errors=True)
                return False
            digests[f.name] = _digest(self.key, tmp / f.name)
        (tmp / DIGESTS).write_text(json.dumps(digests, indent=1))
        os.replace(tmp, root / f"{self._seq:06d}")  # a copy is complete, or it does not exist
        for old in sorted(root.glob("[0-9]*"))[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
        return True


def ended_trials(folder: str | Path) -> set[str]:
    """Ids of the trials that a folder's newest experiment state (a launch or one of its copies) holds as
    ended, TERMINATED or ERROR. JSON only: the pickled parts are not read."""
    states = sorted(Path(folder).glob("experiment_state-*.json"))
    if not states:
        return set()
    out = set()
    for trial, _ in json.loads(states[-1].read_text())["trial_data"]:
        t = json.loads(trial)
        if t.get("status") in ("TERMINATED", "ERROR"):
            out.add(str(t["trial_id"]))
    return out


def _whole(path: Path) -> bool:
    """False for a state file caught part-written: empty, a pickle without its final STOP opcode, or
    JSON that does not parse. Other content is taken as it is."""
    data = path.read_bytes()
    if not data:
        return False
    if data[:1] == b"\x80":  # pickle protocol 2+
        return data.endswith(b".")
    if data[:1] in (b"{", b"["):
        try:
            json.loads(data)
        except ValueError:
            return False
    return True


def verified(launch_dir: str | Path) -> Path:
    """The newest copy of the launch's state whose files all verify; StateError if there is none."""
    root = Path(launch_dir) / STATE_DIR
    copies = sorted(root.glob("[0-9]*"), reverse=True) if root.is_dir() else []
    if not copies:
        raise StateError(f"{launch_dir} has no saved Tune state (its driver died before Tune saved any)")
    k = key(create=False)
    if k is None:
        raise StateError(
            f"no signing key at {key_file()}: this launch's state cannot be verified here "
            "(resume it on the machine and account that started it, or set SWEEPLAB_KEY_FILE)",
            refused=True,
        )
    problems = []
    for copy in copies:
        try:
            digests = json.loads((copy / DIGESTS).read_text())
            files = {p.name for p in copy.iterdir() if p.name != DIGESTS}
            ok = files == set(digests) and all(
                hmac.compare_digest(_digest(k, copy / n), d) and _whole(copy / n) for n, d in digests.items()
            )
        except (OSError, ValueError, AttributeError, TypeError):
            ok = False
        if ok:
            return copy
        problems.append(copy.name)
    raise StateError(
        f"the saved Tune state of {launch_dir} does not verify (copies {', '.join(problems)}): "
        "it was changed by someone else or is torn; it was not read",
        refused=True,
    )


def differing(launch_dir: str | Path, copy: Path) -> list[str]:
    """Names of the launch's live state files that are not byte-identical to those of `copy`."""
    launch = Path(launch_dir)
    names = {p.name for p in _state_files(launch)} | set(json.loads((copy / DIGESTS).read_text()))
    return sorted(
        n
        for n in names
        if not (launch / n).is_file()
        or not (copy / n).is_file()
        or (launch / n).read_bytes() != (copy / n).read_bytes()
    )


def reinstate(launch_dir: str | Path) -> tuple[Path, list[str]]:
    """Put the newest verified copy back as the launch's live state before `Tuner.restore`; live files
    that differ from it are moved aside (returned by name), never read."""
    launch = Path(launch_dir)
    copy = verified(launch)
    aside = launch / STATE_DIR / f"unverified-{time.strftime('%Y%m%d-%H%M%S')}"
    moved = []
    for name in differing(launch, copy):
        if (launch / name).is_file():
            aside.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.replace(launch / name, aside / name)
            moved.append(name)
        if (copy / name).is_file():
            shutil.copy2(copy / name, launch / name)
    return copy, moved
