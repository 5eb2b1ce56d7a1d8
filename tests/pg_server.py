"""A throwaway PostgreSQL cluster on 127.0.0.1 and an `mlflow server` on top of it, as cluster.yaml's head runs one.

The cluster lives in a temporary folder owned by an unprivileged account (initdb and postgres refuse root),
listens on 127.0.0.1 only (its unix socket in the same folder), and asks for passwords (scram-sha-256). The
MLflow server reaches it as a non-superuser whose password is only in a libpq password file ($PGPASSFILE),
never in a URI or a command line: the route cluster.yaml takes. Artifacts are served by the server
(`--artifacts-destination`), so drivers upload checkpoints over HTTP as they do on a cluster.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sweep_cli import descendants
from sweeplab.core.env import no_telemetry

INSTALL = "apt-get install postgresql (`make setup` does it as root)"
DB, USER = "mlflow", "mlflow"


@dataclass(frozen=True)
class Server:
    """Where the MLflow server answers, and what a client needs to reach its database directly."""

    url: str  # http://127.0.0.1:PORT
    db_uri: str  # postgresql+psycopg://mlflow@127.0.0.1:PORT/mlflow, no password
    artifacts: Path  # --artifacts-destination
    env: dict[str, str] = field(repr=False)  # the environment with PGPASSFILE set: for a client given db_uri


def bindir() -> Path | None:
    """The folder of PostgreSQL's server binaries (Debian keeps them out of PATH), None when not installed."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_owner(owner: str | None) -> list[str]:
    """The prefix that runs a command as `owner` (None: as ourselves, not root)."""
    return ["runuser", "-u", owner, "--"] if owner else []


@contextmanager
def postgres(folder: Path) -> Iterator[tuple[int, Path]]:
    """A PostgreSQL cluster in `folder`/pg on a free 127.0.0.1 port with database `mlflow` owned by role
    `mlflow` (password in the returned pgpass file); stopped (fast) and its files left for the caller."""
    bins = bindir()
    if bins is None:
        raise RuntimeError(f"PostgreSQL's server binaries (initdb, pg_ctl) are not installed: {INSTALL}")
    owner = None
    if os.geteuid() == 0:  # initdb and postgres refuse root: the package's own account, else nobody
        owner = next((u for u in ("postgres", "nobody") if _has_user(u)), None)
        if owner is None:
            raise RuntimeError("running as root with neither a 'postgres' nor a 'nobody' account to run PostgreSQL")
    pg = folder / "pg"
    pg.mkdir()
    if owner:
        entry = pwd.getpwnam(owner)
        os.chown(pg, entry.pw_uid, entry.pw_gid)
    pg.chmod(0o700)
    admin_pw, user_pw = secrets.token_hex(16), secrets.token_hex(16)
    pwfile = pg / "admin.pw"
    pwfile.write_text(admin_pw + "\n")
    if owner:
        os.chown(pwfile, entry.pw_uid, entry.pw_gid)
    run = [*_as_owner(owner)]
    subprocess.run(
        [*run, str(bins / "initdb"), "-D", str(pg / "data"), "-U", "admin", "--pwfile", str(pwfile)]
        + ["--auth=scram-sha-256", "-E", "UTF8", "--no-instructions"],
        check=True,
        capture_output=True,
    )
    pwfile.unlink()
    port = free_port()
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {pg} -c fsync=off -c max_connections=200"
    log = pg / "server.log"
    start = [*run, str(bins / "pg_ctl"), "-D", str(pg / "data"), "-l", str(log), "-o", options, "-w", "start"]
    started = subprocess.run(start, capture_output=True, text=True)
    if started.returncode != 0:
        raise RuntimeError(f"pg_ctl start failed: {started.stdout}{started.stderr}{_tail(log)}")
    try:
        _sql(port, "admin", admin_pw, "postgres", f"CREATE ROLE {USER} LOGIN PASSWORD '{user_pw}'")
        _sql(port, "admin", admin_pw, "postgres", f"CREATE DATABASE {DB} OWNER {USER}")
        pgpass = folder / "pgpass"  # host:port:database:user:password; libpq ignores it unless 0600
        pgpass.write_text(f"127.0.0.1:{port}:{DB}:{USER}:{user_pw}\n")
        pgpass.chmod(0o600)
        yield port, pgpass
    finally:
        stop = [*run, str(bins / "pg_ctl"), "-D", str(pg / "data"), "-m", "fast", "-w", "stop"]
        if subprocess.run(stop, capture_output=True).returncode != 0:
            _kill_postmaster(pg / "data")


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _sql(port: int, user: str, password: str, db: str, statement: str) -> None:
    import psycopg

    # autocommit: CREATE DATABASE refuses to run inside a transaction
    with psycopg.connect(host="127.0.0.1", port=port, user=user, password=password, dbname=db, autocommit=True) as c:
        c.execute(statement)


def _kill_postmaster(data: Path) -> None:
    """SIGINT (fast shutdown) to the postmaster pg_ctl could not stop: the pid in its own pid file."""
    try:
        pid = int((data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGINT)
    except (OSError, ValueError, IndexError):
        pass


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n" + "\n".join(path.read_text().splitlines()[-n:])
    except OSError:
        return ""


@contextmanager
def mlflow_server(folder: Path, workers: int = 2, timeout: float = 240) -> Iterator[Server]:
    """`mlflow server` on 127.0.0.1 with its runs in a fresh PostgreSQL database and artifacts in
    `folder`/artifacts served through it; everything it started is stopped on exit."""
    with postgres(folder) as (pg_port, pgpass):
        db_uri = f"postgresql+psycopg://{USER}@127.0.0.1:{pg_port}/{DB}"
        env = no_telemetry({**os.environ, "PGPASSFILE": str(pgpass), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        env.pop("MLFLOW_TRACKING_URI", None)
        port, artifacts, log = free_port(), folder / "artifacts", folder / "mlflow-server.log"
        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", db_uri,
            "--artifacts-destination", str(artifacts),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--workers", str(workers),
        ]  # fmt: skip
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(proc, url, log, timeout)
            yield Server(url, db_uri, artifacts, dict(env))
        finally:
            _stop(proc)


def _wait_healthy(proc: subprocess.Popen, url: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout  # the first start migrates an empty database: tens of seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}:{_tail(log)}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server did not answer on {url} within {timeout:.0f} s:{_tail(log)}")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server and the workers it forked, SIGKILL to what is left after 20 s."""
    tree = descendants(proc.pid)
    for pid in tree:
        _signal(pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for pid in tree - {proc.pid}:
        _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


@contextmanager
def temp_folder() -> Iterator[Path]:
    """A folder under the system's temp dir that the PostgreSQL account can enter (pytest's tmp_path
    under /tmp/pytest-of-root is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="sweeplab-pg-"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
