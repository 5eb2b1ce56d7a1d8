"""cluster.yaml passes Ray's own cluster-launcher validator (offline) and keeps its promises.

Nothing is started: `prepare_config` fills the provider's defaults from Ray's packaged YAML and
`validate_config` checks the result against Ray's JSON schema.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster.yaml"


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load(CLUSTER.read_text()))
    validate_config(config)  # raises on any schema violation
    return config


def commands(cluster: dict[str, Any], *keys: str) -> str:
    return "\n".join(cmd for key in keys for cmd in cluster.get(key, []))


def test_head_has_no_gpu_and_takes_no_trials(cluster: dict[str, Any]) -> None:
    head = cluster["available_node_types"][cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert head["resources"].get("CPU") == 0, "trials must not be scheduled on the head"
    assert not head["node_config"]["InstanceType"].startswith(("g", "p")), "the head is a CPU instance"


def test_workers_have_gpus_and_autoscale(cluster: dict[str, Any]) -> None:
    workers = {name: t for name, t in cluster["available_node_types"].items() if name != cluster["head_node_type"]}
    assert workers
    for name, t in workers.items():
        assert t["resources"].get("GPU", 0) >= 1, f"{name} has no GPU"
        assert t.get("min_workers", 0) == 0 < t["max_workers"], f"{name} must scale from zero"
    # an 8-GPU node exists for the DDP rows (8 workers x 1 GPU) of the multi-GPU tables
    assert max(t["resources"]["GPU"] for t in workers.values()) >= 8
    assert cluster["idle_timeout_minutes"] > 0


def test_token_authentication_is_on(cluster: dict[str, Any]) -> None:
    head = commands(cluster, "head_start_ray_commands")
    worker = commands(cluster, "worker_start_ray_commands")
    for text in (head, worker):
        starts = [line for line in text.splitlines() if "ray start" in line]
        assert starts and all("RAY_AUTH_MODE=token" in line for line in starts)
    assert "~/.ray/auth_token" in cluster["file_mounts"], "every node needs the cluster's token"
    assert "RAY_AUTH_MODE=token" in commands(cluster, "setup_commands")
    assert "--dashboard-host=127.0.0.1" in head, "the dashboard stays on loopback (reach it by port-forward)"


def test_setup_installs_sweeplab_from_the_synced_checkout(cluster: dict[str, Any]) -> None:
    assert cluster["file_mounts"].get("~/sweeplab") == "."
    assert "pip install -q -e ~/sweeplab" in commands(cluster, "setup_commands")
    assert ".gitignore" in cluster.get("rsync_filter", []), "keep .venv, runs/ and mlflow.db off the nodes"


def test_mlflow_server_and_shared_storage(cluster: dict[str, Any]) -> None:
    head = commands(cluster, "head_start_ray_commands")
    assert "mlflow server --host 127.0.0.1 --port 5000" in head
    assert "/shared" in commands(cluster, "initialization_commands")
    assert any("/shared:/shared" in opt for opt in cluster["docker"]["run_options"])
    assert "/shared/ray" in commands(cluster, "head_setup_commands")


def test_docs_show_the_cluster_workflow() -> None:
    text = (ROOT / "docs" / "cluster.md").read_text()
    for needle in (
        "ray up cluster.yaml",
        "ray job submit",
        "sweeplab run",
        "--storage /shared/ray",
        "sweeplab status",
        "sweeplab resume",
        "ray down cluster.yaml",
    ):
        assert needle in text, needle


def test_shared_folder_belongs_to_a_group_not_to_everyone(cluster: dict[str, Any]) -> None:
    init = " ".join(cluster["initialization_commands"])
    assert "1777" not in init and "777" not in init  # a world-writable folder lets anyone plant state
    assert "chmod 2770 /shared" in init and "chgrp 2000 /shared" in init
    assert "--group-add 2000" in cluster["docker"]["run_options"]


def _mlflow_server(cluster: dict[str, Any]) -> list[str]:
    (line,) = [c for c in cluster["head_start_ray_commands"] if "mlflow server" in c]
    return shlex.split(line.split(">", 1)[0])  # the command, before its redirections


def test_run_database_lives_outside_the_head(cluster: dict[str, Any]) -> None:
    """MLflow's runs are in PostgreSQL (a managed database), not in a file in the head's container,
    which `ray down` or a replaced head would take with it."""
    argv = _mlflow_server(cluster)
    store = argv[argv.index("--backend-store-uri") + 1]
    assert store.startswith(("postgresql://", "postgresql+psycopg://")), store
    host = re.match(r"[a-z+]+://(?:[^@/]*@)?([^:/?]+)", store).group(1)
    assert host not in ("localhost", "127.0.0.1", "::1"), "a database on the head dies with the head"
    assert argv[argv.index("--artifacts-destination") + 1].startswith("/shared/")
    head = commands(cluster, "head_setup_commands", "head_start_ray_commands")
    assert "sqlite" not in head, "no run database inside the head's container"


def test_no_password_in_cluster_yaml(cluster: dict[str, Any]) -> None:
    """The database password comes from a libpq password file that `file_mounts` copies from outside
    the repository: not in a URI (it would sit in git and on every command line), not in the environment."""
    text = CLUSTER.read_text()
    assert not re.search(r"://[^\s/@:]+:[^\s/@]+@", text), "a URI with a password"
    assert not re.search(r"(?i)(PGPASSWORD|MLFLOW_TRACKING_PASSWORD|password\s*[:=])", text)
    argv = _mlflow_server(cluster)
    pgpass = next(a.split("=", 1)[1] for a in argv if a.startswith("PGPASSFILE="))
    source = cluster["file_mounts"][pgpass]
    assert source.startswith(("~/", "/")), f"{source}: a file of the user's, not of the repository"
    assert not Path(source).expanduser().resolve().is_relative_to(ROOT), source
    assert f"chmod 600 {pgpass}" in commands(cluster, "head_setup_commands"), "libpq ignores a readable file"


def test_docs_show_the_run_database() -> None:
    text = (ROOT / "docs" / "cluster.md").read_text()
    for needle in ("PostgreSQL", "mlflow.pgpass", "chmod 600", "postgresql+psycopg://", "mlflow db upgrade"):
        assert needle in text, needle
    assert "mlflow.db" not in text.split("## Stop", 1)[1], "the run database is not on the head any more"
