"""Checks at the door: the URIs, paths, addresses and names a command is given, before anything starts.

Each check is a pure function of the text it is given (and, for a path, of what the file system holds
there already): it returns the value as given or raises ConfigError with one line naming the flag.
Only the standard library is imported, so a refusal costs no MLflow, Ray or torch import. A value that
passes can still fail later for reasons no check can see in advance (a server or bucket that does not
answer): that is a runtime failure, exit 1. docs/robustness.md ("Bad input") lists what is checked.
"""

from __future__ import annotations

import functools
import os
import re
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import SplitResult, urlsplit

from sweeplab.core.errors import ConfigError

MAX_CPUS = 1024  # hardware threads of the largest single machines; torch fails to start ~16k threads, 100k segfault
MAX_GPUS = 16  # GPUs one machine holds (HGX-2 boards: 16)
MAX_WORKERS = 1024  # DDP workers of one trial
NAME_MAX, PATH_MAX = 255, 4096  # bytes of one path component and of a whole path (Linux)
# Kernel file systems: nothing of a run belongs there (/dev/shm is a plain tmpfs and allowed).
PSEUDO = ("/proc", "/sys", "/dev")
TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")
# What pyarrow.fs.FileSystem.from_uri (Ray Tune's storage) opens for writing; buckets where it needs one.
SQLITE_MAGIC = b"SQLite format 3\x00"
# Query parameters that carry a secret (password=, sslpassword=, token=, secret_key=, api_key=, ...).
SECRET_KEY = re.compile(r"pass|pwd|secret|token|credential|signature|api[-_]?key|access[-_]?key", re.IGNORECASE)
# A URI's userinfo password as SQLAlchemy reads it (`[^@]*`: a raw '/' does not end it).
_USERINFO = re.compile(r"^([A-Za-z][\w+.-]*://[^:/@?#]*:)([^@]*)@")
RUN_ID = re.compile(r"[A-Za-z0-9][\w-]{0,255}")  # MLflow's own rule for a run id
Check = TypeVar("Check", bound=Callable[..., Path])


def _on_disk(check: Check) -> Check:
    """A path check (value, flag, ...) whose file-system errors (a folder it may not look into) are bad input."""

    @functools.wraps(check)
    def run(value: str, flag: str, *args: object, **kwargs: object) -> Path:
        try:
            return check(value, flag, *args, **kwargs)
        except OSError as e:
            raise ConfigError(f"{flag} {shown(value)!r} cannot be checked: {e.strerror or e}") from None

    return run  # type: ignore[return-value]


def given(value: str, flag: str, show: str | None = None) -> str:
    """`value` unless it is empty or blank (a flag given '' must not fall back to its default) or holds a
    control character (a newline would end up in a file name or forge a log line)."""
    if not value.strip():
        raise ConfigError(f"{flag} is empty: give a value, or leave the flag out for its default")
    show = value if show is None else show
    bad = next((c for c in value if unicodedata.category(c)[0] == "C"), None)
    if bad is not None:
        raise ConfigError(f"{flag} {show!r} contains a control character ({bad!r})")
    if value != value.strip():
        raise ConfigError(f"{flag} {show!r} starts or ends with a space")
    return value


def secrets(uri: str) -> list[str]:
    """The secrets written into `uri`: its userinfo password and the values of secret query parameters."""
    found = []
    m = _USERINFO.match(uri)
    database = uri.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "mysql", "mssql", "sqlite")
    if m and m.group(2) and (database or not any(c in m.group(2) for c in "/?#")):  # URLs end it at a '/'
        found.append(m.group(2))
    query = uri.partition("#")[0].partition("?")[2]
    for item in re.split(r"[&;]", query):
        key, eq, value = item.partition("=")
        if eq and value and SECRET_KEY.search(key):
            found.append(value)
    return found


def shown(uri: str) -> str:
    """`uri` with its secrets (and any #fragment) replaced by ***: safe to print, log or keep."""
    head, hash_, fragment = uri.partition("#")
    for secret in sorted(secrets(uri), key=len, reverse=True):
        head = head.replace(secret, "***")
    return head + ("#***" if hash_ and fragment else hash_)


def tracking_uri(uri: str, flag: str = "--tracking-uri") -> str:
    """A tracking URI MLflow can use here (scheme, host, port, SQLite file, no credentials), returned as given."""
    show = shown(uri)
    given(uri, flag, show)
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower() if ":" in uri else ""
    if scheme not in TRACKING_SCHEMES:
        raise ConfigError(
            f"{flag} {show!r} is not a tracking URI MLflow can use here: give sqlite:///PATH/mlflow.db, "
            f"http(s)://HOST:PORT or a database URI ({', '.join(TRACKING_SCHEMES)})"
        )
    if secrets(uri):
        where = (
            "$MLFLOW_TRACKING_USERNAME and $MLFLOW_TRACKING_PASSWORD (or $MLFLOW_TRACKING_TOKEN)"
            if scheme in ("http", "https")
            else "the database client's password file (PostgreSQL: ~/.pgpass, or the file $PGPASSFILE names, mode 600)"
        )
        raise ConfigError(
            f"{flag} {show} carries a password or token; drop it from the URI (it would be printed and kept "
            f"with the launch) and keep it in {where}"
        )
    if "#" in uri:
        raise ConfigError(f"{flag} {show!r} has a #fragment, which means nothing to MLflow")
    if scheme == "sqlite":
        sqlite_file(uri, flag)
        return uri
    if any(c.isspace() for c in uri):
        raise ConfigError(f"{flag} {show!r} contains a space")
    parts = _split(uri, show, flag)
    if scheme in ("http", "https") and not parts.hostname:
        raise ConfigError(f"{flag} {show!r} names no host: give {scheme}://HOST:PORT")
    return uri


def _split(uri: str, show: str, flag: str) -> SplitResult:
    """urlsplit, with a malformed host or port ('http://[::1', ':99999') as ConfigError."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"{flag} {show!r} is not a valid URI ({e})") from None
    if port == 0:
        raise ConfigError(f"{flag} {show!r}: port 0 is not a port a server listens on (1-65535)")
    return parts


@_on_disk
def sqlite_file(uri: str, flag: str = "--tracking-uri") -> Path:
    """The database file of a sqlite:/// URI: a path that is, or can become, an SQLite file."""
    if not uri.startswith("sqlite:///"):
        raise ConfigError(
            f"{flag} {uri!r} names no database file: give sqlite:///mlflow.db (relative) or sqlite:////abs/mlflow.db"
        )
    text = uri[len("sqlite:///") :]
    if not text:
        raise ConfigError(f"{flag} {uri!r} names no file: give sqlite:///mlflow.db or sqlite:////abs/mlflow.db")
    if "?" in text or "#" in text:
        raise ConfigError(f"{flag} {uri!r}: sweeplab takes sqlite:///PATH without a query or fragment")
    path = _path(text, flag, uri, expand=False)  # MLflow opens the path as written
    if path.is_dir():
        raise ConfigError(f"{flag} {uri!r}: {path} is a folder; name the database file in it (e.g. {path}/mlflow.db)")
    if path.exists() or path.is_symlink():
        if not path.is_file():
            raise ConfigError(f"{flag} {uri!r}: {path} is not a regular file")
        try:
            with path.open("rb") as f:
                head = f.read(len(SQLITE_MAGIC))
        except OSError as e:
            raise ConfigError(f"{flag} {uri!r}: cannot read {path}: {e.strerror or e}") from None
        if head and head != SQLITE_MAGIC:
            raise ConfigError(f"{flag} {uri!r}: {path} is not an SQLite database")
        return path
    _can_exist(path, flag, uri, file=True)
    return path


def storage(value: str, flag: str = "--storage", write: bool = True) -> str:
    """The storage folder: one that can exist (and be written, with `write`). A launch's ledger is appended to
    and its checkpoints renamed into place, which an object store cannot do: a URI is refused, naming the
    way out (a folder every node sees, such as a mounted bucket or NFS)."""
    show = shown(value)
    given(value, flag, show)
    if "://" in value:
        raise ConfigError(
            f"{flag} {show!r}: sweeplab keeps each launch's ledger and checkpoints in a folder, not at a URI; "
            "give a local folder, or on a cluster a folder every node sees (NFS, or the bucket mounted there)"
        )
    folder(value, flag, write)
    return value


@_on_disk
def folder(value: str, flag: str, write: bool = True) -> Path:
    """A folder to write into (with `write`) or read from: an existing folder, or one that can be made."""
    given(value, flag)
    path = _path(value, flag, value)
    if (path.exists() or path.is_symlink()) and not path.is_dir():
        raise ConfigError(f"{flag} {value!r} is {'a file' if path.is_file() else 'not a folder'}, not a folder")
    _can_exist(path, flag, value, write=write)
    return path


@_on_disk
def out_file(value: str, flag: str, suffix: str, force: bool) -> Path:
    """A new file to write (`suffix` its extension): never a folder, never an existing file unless `force`."""
    given(value, flag)
    if not value.endswith(suffix):
        raise ConfigError(f"{flag} must name a {suffix} file, got {value!r}")
    path = _path(value, flag, value)
    if path.is_dir():
        raise ConfigError(f"{flag} {value!r} is a folder; name a FILE{suffix} (in it, or elsewhere)")
    if path.exists() or path.is_symlink():
        if not path.is_file():
            raise ConfigError(f"{flag} {value!r} exists and is not a regular file")
        if not force:
            raise ConfigError(f"{flag} {value!r} exists already; pass --force to replace it, or name another file")
    _can_exist(path, flag, value, file=True)
    return path


def _path(value: str, flag: str, shown_as: str, expand: bool = True) -> Path:
    """`value` as a path (with ~ expanded), refused when no file system would take it: too long, or in /proc."""
    path = Path(value).expanduser() if expand else Path(value)
    absolute = Path(os.path.abspath(path))
    if len(os.fsencode(absolute)) > PATH_MAX or any(len(os.fsencode(p)) > NAME_MAX for p in absolute.parts):
        raise ConfigError(f"{flag} {shown_as!r} is too long a path ({NAME_MAX} bytes a name, {PATH_MAX} a path)")
    _pseudo(path, flag, shown_as)
    return path


def _can_exist(path: Path, flag: str, shown_as: str, write: bool = True, file: bool = False) -> None:
    """`path` (a folder, or with `file` the folder of a file) exists or can be made: the nearest existing
    folder on the way is a folder, writable with `write`."""
    for p in path.parents if file else (path, *path.parents):
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                what = "a file" if p.is_file() else "a broken link" if not p.exists() else "not a folder"
                raise ConfigError(f"{flag} {shown_as!r} cannot be made: {p} is {what}")
            if write and not os.access(p, os.W_OK | os.X_OK):
                raise ConfigError(f"{flag} {shown_as!r} cannot be written: {p} is not writable by you")
            return


def _pseudo(path: Path, flag: str, shown_as: str) -> None:
    """Refuse a path inside /proc, /sys or /dev (after links): a kernel file system, not a place for files."""
    real = os.path.realpath(path)
    for root in PSEUDO:
        shm = real == "/dev/shm" or real.startswith("/dev/shm/")
        if (real == root or real.startswith(root + "/")) and not shm:
            raise ConfigError(f"{flag} {shown_as!r} is inside {root}, a kernel file system: give a path on a disk")


def address(value: str, flag: str = "--address") -> str:
    """A Ray cluster to join: auto, HOST:PORT (its GCS) or ray://HOST:PORT (Ray Client)."""
    given(value, flag)
    if value == "auto":
        return value
    if value == "local":
        raise ConfigError(f"{flag} local: leave --address out and sweeplab starts a local Ray on 127.0.0.1")
    rest = value[len("ray://") :] if value.startswith("ray://") else value
    host, colon, port = rest.rpartition(":")
    ok_host = re.fullmatch(r"[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\]", host) is not None
    if "://" in rest or not colon or not ok_host or not port.isdigit():
        raise ConfigError(
            f"{flag} {value!r} is not a Ray address: give auto, HOST:PORT (the head's GCS port, 6379 by default) "
            "or ray://HOST:PORT (Ray Client)"
        )
    if not 1 <= int(port) <= 65535:
        raise ConfigError(f"{flag} {value!r}: port {int(port)} is out of range (1-65535)")
    return value


def http_url(value: str, flag: str) -> str:
    """An http(s) URL to link to (the MLflow UI): host required, no credentials."""
    show = shown(value)
    given(value, flag, show)
    if not value.startswith(("http://", "https://")) or any(c.isspace() for c in value):
        raise ConfigError(f"{flag} {show!r} must be an http:// or https:// URL")
    if secrets(value):
        raise ConfigError(f"{flag} {show} carries a password or token; the report would show it to every reader")
    if not _split(value, show, flag).hostname:
        raise ConfigError(f"{flag} {show!r} names no host")
    return value


def run_id(value: str, flag: str = "--from-run") -> str:
    """An MLflow run id (32 hex characters as MLflow makes them; its own rule allows letters, digits, _ and -)."""
    given(value, flag)
    if not RUN_ID.fullmatch(value):
        raise ConfigError(f"{flag} {value!r} is not an MLflow run id (e.g. the run_id of `sweeplab best --json`)")
    return value
