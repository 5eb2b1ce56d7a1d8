"""The parent run of a launch holds its report: the best-trials table and the figures of its trials."""

from __future__ import annotations

from pathlib import Path

from mlflow_store import fresh_uri, run_trial
from sweeplab.analysis import report, runs
from sweeplab.tracking import Tracker


def test_a_launch_report_lands_on_its_parent_run(tmp_path: Path, tmp_path_factory) -> None:
    uri = fresh_uri(tmp_path, tmp_path_factory)
    t = Tracker(uri, "quickstart", "qs-report", {})
    run_trial(t, "t0", 0.1, 5e-4, 0, [30.0, 20.0, 15.0], label="lr=0.1 weight_decay=0.0005")
    run_trial(t, "t1", 0.4, 5e-4, 0, [40.0], stopped=True, label="lr=0.4 weight_decay=0.0005")
    run_trial(t, "t2", 0.2, 5e-4, 0, [25.0, 18.0, 12.0], label="lr=0.2 weight_decay=0.0005")
    client = runs.open_client(uri)
    assert client is not None
    files = report.launch_report(client, "qs-report", tmp_path / "report")
    assert {f.name for f in files} >= {"best_trials.md", "best_trials.html", "curves.png", "curves.svg"}
    # short names (MLflow's artifact tree cuts long ones), titled by the sweep, not by the launch's stamp
    assert not [f.name for f in files if "qs-report" in f.name]
    svg = (tmp_path / "report" / "curves.svg").read_text()
    assert "quickstart: learning curves" in svg and "qs-report" not in svg
    best = (tmp_path / "report" / "best_trials.md").read_text()
    # ranked by val/error: the lr 0.2 trial (12.0) first, its label shown, the stopped one marked
    lines = [ln for ln in best.splitlines() if ln.startswith("| lr=")]
    assert lines[0].startswith("| lr=0.2 weight_decay=0.0005 | 12.00") and "stopped" in best
    t.launch_artifacts(tmp_path / "report", "report")
    logged = {a.path for a in client.list_artifacts(t.parent_id, "report")}
    assert {"report/best_trials.md", "report/curves.png", "report/curves.svg"} <= logged
    t.close()
    assert report.launch_report(client, "qs-report", tmp_path / "again") != []  # drawn again: same names


def test_no_trials_no_report(tmp_path: Path, tmp_path_factory) -> None:
    uri = fresh_uri(tmp_path, tmp_path_factory)
    t = Tracker(uri, "quickstart", "qs-empty", {})
    client = runs.open_client(uri)
    assert client is not None and report.launch_report(client, "qs-empty", tmp_path / "r") == []
    t.close()
