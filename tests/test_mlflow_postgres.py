"""MLflow on a real database server, as on a cluster: a throwaway PostgreSQL and `mlflow server` on it
(tests/pg_server.py), two real sweeps at once, one logging over HTTP (checkpoints uploaded through the
server), one given the database's URI directly. The record must read back as with SQLite."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import sweeplab.tracking  # noqa: F401 - first: it turns MLflow telemetry off before mlflow loads
from mlflow_layout import check_parent, check_trials
from pg_server import INSTALL, Server, bindir, mlflow_server, temp_folder
from ray_head import ray_head
from sweep_cli import child_runs, cli, write_sweep
from sweeplab.core.errors import ConfigError
from sweeplab.tracking import resolve_uri

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    if bindir() is None:  # fail, not skip: CI must run this test, and `make setup` installs the server
        pytest.fail(f"PostgreSQL's server binaries (initdb, pg_ctl) are missing: {INSTALL}")
    with temp_folder() as folder, mlflow_server(folder) as s:
        yield s


def _sweep(tmp_path: Path, launch: str, epochs: int, name: str = "pg", train: int = 256) -> Path:
    """A two-trial sweep file of its own folder (the launches share the sweep's name, so its experiment)."""
    folder = tmp_path / launch
    folder.mkdir()
    return write_sweep(
        folder,
        name=name,
        overrides={"train.epochs": epochs, "data.synthetic_train": train},
        space={"optim.lr": {"grid": [0.1, 0.01]}},
        max_concurrent=2,
    )


@pytest.mark.slow
def test_the_database_and_the_server_listen_on_loopback_only(server: Server) -> None:
    ports = {urlsplit(server.url).port, urlsplit(server.db_uri).port}
    out = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout
    local = [line.split()[3] for line in out.splitlines()]
    found = {addr.rsplit(":", 1)[0] for addr in local if int(addr.rsplit(":", 1)[1]) in ports}
    assert found == {"127.0.0.1"}, found


@pytest.mark.slow
def test_two_sweeps_at_once_through_the_server_and_on_the_database_lose_nothing(server: Server, tmp_path: Path) -> None:
    """Two drivers on one Ray cluster logging to one database at the same time (cluster.yaml's head with two
    jobs): one through `mlflow server` over HTTP (checkpoints uploaded through it to its artifact store),
    one given the database's URI directly (`postgresql://USER@HOST/DB`, the password in $PGPASSFILE;
    artifacts where MLflow puts them, ./mlruns). Both launches read back whole, as with SQLite, every
    epoch of every trial once; `sweeplab best` reads the runs from the database itself."""
    # epochs long enough (~1 s) that one driver's start-up skew does not let the other finish first
    # two sweeps (two experiments): one made by the server, its artifacts behind it (mlflow-artifacts:/),
    # which a client of the database alone cannot write; the other made by that client, artifacts in ./mlruns
    launches = {
        "via-http": _sweep(tmp_path, "via-http", epochs=3, train=1024),
        "direct": _sweep(tmp_path, "direct", epochs=3, train=1024, name="pg-direct"),
    }
    uris = {"via-http": server.url, "direct": server.db_uri.replace("+psycopg", "")}  # SQLAlchemy picks psycopg 3
    outs = {}
    # a CPU for each trial of both sweeps: neither waits for the other's trials to end
    with ray_head(tmp_path / "ray-head.log", num_cpus=4) as (address, env):
        procs = {
            name: subprocess.Popen(
                cli(tmp_path, "run", str(sweep), "--name", name, "--address", address, tracking_uri=uris[name]),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env={**env, **server.env},
                cwd=tmp_path,
            )
            for name, sweep in launches.items()
        }
        try:
            for name, proc in procs.items():
                outs[name] = proc.communicate(timeout=1200)[0]
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    for name, proc in procs.items():
        assert proc.returncode == 0, f"{name}:\n{outs[name]}"
        assert "View run" not in outs[name], "MLflow's links to each run, amid the progress lines"
    spans = []
    for name, sweep in launches.items():
        client, runs = child_runs(tmp_path, name, server.url)
        check_trials(client, runs, ["lr=0.1", "lr=0.01"], 3, sweep)
        check_parent(client, runs, name, sweep, tmp_path / name / "download")
        spans.append((min(r.info.start_time for r in runs), max(r.info.end_time for r in runs)))
    (a0, a1), (b0, b1) = spans
    assert a0 < b1 and b0 < a1, f"the two launches' trials never logged at the same time: {spans}"
    client, runs = child_runs(tmp_path, "via-http", server.url)
    for r in runs:  # uploaded through the server to its --artifacts-destination, not written by the driver
        assert r.info.artifact_uri.startswith("mlflow-artifacts:/"), r.info.artifact_uri
        stored = server.artifacts / r.info.experiment_id / r.info.run_id / "artifacts" / "checkpoint"
        assert sorted(p.name for p in stored.iterdir()) == ["metrics.json", "state.pt"]
    for r in child_runs(tmp_path, "direct", server.url)[1]:
        assert r.info.artifact_uri.startswith(str(tmp_path / "mlruns") + "/"), r.info.artifact_uri
    # the same runs, read from the database itself (the route of `sweeplab table` on the head)
    argv = [sys.executable, "-m", "sweeplab.cli", "best", "via-http", "--json", "--tracking-uri", server.db_uri]
    best = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=server.env)
    assert best.returncode == 0, best.stdout + best.stderr
    assert min(runs, key=lambda r: r.data.metrics["val/error"]).info.run_name in best.stdout


def test_a_password_in_the_tracking_uri_is_refused_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # it would be printed, saved with the launch's state and tagged on every run (sweeplab.command)
    for uri in ("postgresql://mlflow:s3cret@db:5432/mlflow", "https://me:s3cret@mlflow.example.com"):
        with pytest.raises(ConfigError) as e:
            resolve_uri(uri)
        assert "s3cret" not in str(e.value) and "password" in str(e.value), str(e.value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql+psycopg://mlflow:s3cret@db/mlflow")
    with pytest.raises(ConfigError, match="PGPASSFILE"):
        resolve_uri(None)
    # no password: accepted as given (libpq finds it in ~/.pgpass or $PGPASSFILE)
    assert resolve_uri("postgresql://mlflow@db:5432/mlflow") == "postgresql://mlflow@db:5432/mlflow"
    assert (
        resolve_uri("postgresql+psycopg://db/mlflow?sslmode=require")
        == "postgresql+psycopg://db/mlflow?sslmode=require"
    )


def test_the_cli_refuses_it_with_exit_2(tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path)
    argv = cli(tmp_path, "run", str(sweep), tracking_uri="postgresql://mlflow:s3cret@127.0.0.1:1/mlflow")
    run = subprocess.run(argv, capture_output=True, text=True, timeout=120, env={**os.environ})
    assert run.returncode == 2, run.stdout + run.stderr
    assert "s3cret" not in run.stdout + run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "ray").exists(), "nothing is written before the input is checked"
