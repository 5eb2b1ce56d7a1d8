"""The Ray cluster a sweep runs on: a local one on 127.0.0.1 that sweeplab starts and stops, or a joined one.

Ray reads some settings once, when it is first imported (auth mode, usage stats, binding), so
`environment()` must run before the process's first `import ray`: every Ray import is inside a
function here, as in the rest of the runner.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import logging
import math
import os
import secrets
import signal
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path

from sweeplab.search_spaces import Sweep

LOCAL_DEFAULTS = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # a local node binds 127.0.0.1, not the external address
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # Tune's default TensorBoard logger imports torch in the driver (1.5 s, just as the first trial is
    # scheduled) to write what MLflow already has; `_loggers()` keeps the JSON and CSV ones.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
}

_STARTED = False
_BEFORE: set[tuple[int, str]] = set()  # this process's descendants before Ray started: not Ray's to stop

_LOCAL = False  # this process started the Ray it uses: one machine, so DDP stays on loopback


def environment(storage: str, local: bool) -> None:
    """Ray's environment; call before the first `import ray`. A local Ray gets token auth, with the
    token file under the storage folder instead of ~/.ray."""
    for key, value in LOCAL_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if local and "://" not in storage and "RAY_AUTH_MODE" not in os.environ:
        token = Path(storage) / ".ray_auth_token"
        if not token.exists():
            token.parent.mkdir(parents=True, exist_ok=True)
            tmp = token.with_name(f".ray_auth_token.{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, secrets.token_hex(32).encode())
            os.close(fd)
            try:  # atomic, never overwrites: two first sweeps in one new folder share the winner's token
                os.link(tmp, token)
            except FileExistsError:
                pass
            os.unlink(tmp)
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token.resolve()))


def start(address: str | None, num_cpus: int | None, storage: str, dashboard: bool = True) -> str:
    """Start a local Ray on 127.0.0.1 (address None) or join a cluster; return the address.
    `dashboard` False leaves a local Ray's dashboard modules out (a sweep without DDP trials)."""
    global _STARTED, _LOCAL, _BEFORE
    environment(storage, local=address is None)
    import ray

    _BEFORE = descendants(os.getpid())
    # Importing Tune takes ~1.5 s of CPU; ray.init mostly waits on its daemons: overlap the two.
    tune_import = threading.Thread(target=importlib.import_module, args=("ray.tune",), daemon=True)
    tune_import.start()
    quiet = dict(log_to_driver=False, logging_level=logging.WARNING, configure_logging=True)
    if address is None:
        os.environ["RAY_TMPDIR"] = private_temp_dir()
        # DDP trials need the dashboard (on loopback): Train V2 cleans up after a stopped trial through
        # it. Other sweeps skip its modules: ~2 CPU-seconds that a 2-core laptop would spend while Ray
        # starts, right before the first trial's start-up (BENCHMARKS.md, "command -> first step").
        ctx = ray.init(
            address="local",
            num_cpus=num_cpus,
            object_store_memory=100_000_000,
            dashboard_host="127.0.0.1",
            include_dashboard=dashboard,
            **quiet,
        )
    else:
        ctx = ray.init(address=address, **quiet)
    _STARTED, _LOCAL = True, address is None
    tune_import.join()
    return ctx.address_info.get("gcs_address", address or "local")


def private_temp_dir() -> str:
    """Ray's temp folder, inside a folder of this user's with mode 0700: Ray makes its own folders
    world-writable (sockets, logs, session files), so the folder above them is what keeps them private."""
    path = Path(tempfile.gettempdir()) / f"sweeplab-ray-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    st = path.lstat()
    if st.st_uid != os.getuid() or not path.is_dir() or path.is_symlink():
        raise RuntimeError(f"{path} is not a folder of this user: remove it, or set TMPDIR elsewhere")
    os.chmod(path, 0o700)
    return str(path)  # Ray makes its own `ray` folder in it, mode 0777: the one above it stays private


PROCESSES = "processes.json"  # in a launch folder: the processes its driver's Ray started (pid, start time)


def remember(record: Path) -> None:
    """Write down the processes Ray started from this driver, so that the next driver of the launch (or
    `status`) can stop any that a killed driver left behind."""
    ours = descendants(os.getpid()) - _BEFORE
    tmp = record.with_name(f".{record.name}.{os.getpid()}")
    try:
        tmp.write_text(json.dumps({"host": socket.gethostname(), "processes": sorted([p, s] for p, s in ours)}))
        os.replace(tmp, record)
    except OSError:  # a full disk: the record written last stands (a trial's checkpoint says the disk is full)
        tmp.unlink(missing_ok=True)


def reap(record: Path) -> int:
    """Stop what a killed driver's Ray left running: the processes in `record` that are still the ones it
    wrote down (by start time: never a process that merely reuses a pid), and every process below them
    (workers and agents Ray started after the record was last written); returns how many were stopped."""
    try:
        written = json.loads(record.read_text())
        listed = written["processes"] if written.get("host") == socket.gethostname() else []  # this machine's only
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return 0
    roots = [
        (pid, start)
        for pid, start in (listed if isinstance(listed, list) else [])
        if isinstance(pid, int) and isinstance(start, str) and _running(pid, start)
    ]
    # parents before their children: a raylet whose worker dies first may start another, and a parent that
    # sees its child die may exit by itself before its own turn (it is gone all the same, but uncounted)
    alive = list(dict.fromkeys(roots + _tree(*(pid for pid, _ in roots))))
    stopped = _kill(alive)
    record.unlink(missing_ok=True)
    return stopped


def _kill(processes: Iterable[tuple[int, str]], wait_s: float = 10.0) -> int:
    """SIGKILL `processes`, in their order, and wait until they are gone: a killed process with a large heap
    can take seconds to exit on a busy machine, and whoever said "stopped" next would find it still there;
    returns how many."""
    stopped = set()
    for pid, start in processes:
        if _running(pid, start):
            try:
                os.kill(pid, signal.SIGKILL)
                stopped.add((pid, start))
            except (ProcessLookupError, PermissionError):
                pass
    deadline, left = time.monotonic() + wait_s, set(stopped)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = {p for p in left if _running(*p)}
    return len(stopped)


def shutdown(wait_s: float = 5.0) -> None:
    """Stop what `start` started, and only that: Ray, then every process it started from here that is still up
    `wait_s` seconds later (a trial's worker outlives its raylet for a while; nothing of a launch may)."""
    global _STARTED
    if not _STARTED:
        return
    import ray

    ours = descendants(os.getpid()) - _BEFORE
    ray.shutdown()
    _STARTED = False
    deadline = time.monotonic() + wait_s
    while ours and time.monotonic() < deadline:
        ours = {p for p in ours if _running(*p)}
        time.sleep(0.1)
    _kill(ours)


def descendants(root: int) -> set[tuple[int, str]]:
    """(pid, start time) of every process below `root`, from /proc (none where there is no /proc)."""
    return set(_tree(root))


def _tree(*roots: int) -> list[tuple[int, str]]:
    """(pid, start time) of every process below the `roots`, each after its parent, from one read of /proc."""
    children: dict[int, list[tuple[int, str]]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" (", 1)
            fields = rest.rsplit(") ", 1)[1].split()
            children.setdefault(int(fields[1]), []).append((int(pid), fields[19]))
        except (OSError, IndexError, ValueError):
            continue
    out: list[tuple[int, str]] = []
    todo = deque(roots)
    while todo:  # breadth first: a process's parent is listed before it
        for child in children.get(todo.popleft(), []):
            out.append(child)
            todo.append(child[0])
    return out


def _running(pid: int, started: str) -> bool:
    """Whether the process `pid` that started at `started` is still alive (not a zombie, not a new one)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[19] == started and fields[0] != "Z"


def fit_resources(sweep: Sweep, local: bool) -> tuple[Sweep, str | None]:
    """The sweep with trials this cluster can run, and a note when that changed them. A Ray that
    sweeplab started here, or a smoke run, on a cluster without GPUs runs GPU-requesting trials on CPU
    (same number of workers, so DDP is still exercised, over gloo), and every such run caps a trial's
    CPUs to the largest node: otherwise its trials would wait forever. A joined cluster's full run is
    left alone, as its autoscaler may still add GPU nodes (cluster.yaml's head node has none)."""
    if not (local or sweep.smoke):
        return sweep, None
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    largest = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    was = sweep.resources
    r = was
    if r.gpus_per_worker > 0 and not any(n.get("GPU", 0) for n in nodes):
        r = dataclasses.replace(r, gpus_per_worker=0)
    fits = math.floor(100 * largest / r.workers) / 100  # Ray keeps 4 decimals of a resource
    if fits > 0 and r.cpus_per_worker > fits:
        r = dataclasses.replace(r, cpus_per_worker=int(fits) if fits == int(fits) else fits)
    if r == was:
        return sweep, None
    fitted = copy.copy(sweep)  # the trials and the DDP trainer read `resources` from this copy
    fitted.resources = r
    w = r.workers
    now = f"{w} worker(s) x {r.cpus_per_worker} CPU{' (DDP over gloo)' if w > 1 else ''}"
    before = f"{w} x {was.cpus_per_worker} CPU + {was.gpus_per_worker} GPU"
    if r.gpus_per_worker != was.gpus_per_worker:
        return fitted, f"note: this Ray cluster has no GPU: each trial runs on CPU as {now} instead of {before}"
    return fitted, (
        f"note: each trial runs as {now} instead of {before}, to fit this cluster's largest node ({largest:g} CPU)"
    )


def is_local() -> bool:
    """True when this process started the Ray it uses: one machine, so DDP trials stay on loopback."""
    return _LOCAL
