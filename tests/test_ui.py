"""`sweeplab ui` (a server on 127.0.0.1 only, opened on the runs page in the training view, gone when
stopped) and the README's queries (run as written against a real store, so they cannot rot)."""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from mlflow_store import fresh_uri, grid_point, run_trial
from sweep_cli import CTRL_C, LOOPBACK, descendants, listening
from sweeplab.cli import main
from sweeplab.commands.mlflow_ui import (
    VIEW_TAG,
    pick_experiment,
    runs_url,
    share_view,
    sweep_metric,
    sweep_view,
    view_state,
)
from sweeplab.tracking import Tracker
from sweeplab.tracking.store import client

ROOT = Path(__file__).resolve().parents[1]
# (lr, weight decay, last val/error) of four full-grid trials and one smoke trial
ERRORS = {0: 95.0, 1: 35.0, 2: 12.0, 3: 30.0}  # the README's queries ask for < 90


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A folder whose mlflow.db holds a 'quickstart' sweep: four full trials (rows 0-3) and one smoke trial."""
    folder = tmp_path_factory.mktemp("ui_store")
    uri = fresh_uri(folder, tmp_path_factory)
    full = Tracker(uri, "quickstart", "quickstart-20261128-100000", {"sweeplab.smoke": "false"})
    for row, err in ERRORS.items():
        lr, wd = grid_point(row)
        run_trial(full, f"aaaaa_0000{row}", lr, wd, 0, [err + 10, err], epochs=2)
    full.close()
    smoke = Tracker(uri, "quickstart", "quickstart-20261128-110000", {"sweeplab.smoke": "true"})
    run_trial(smoke, "bbbbb_00000", 0.1, 5e-4, 0, [2.0], epochs=1, smoke=True)  # best of all, but a smoke run
    smoke.close()
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_url_names_the_runs_tab_in_the_training_view_best_trial_first():
    url = runs_url("http://127.0.0.1:5000", "7")
    page, _, query = url.partition("?")
    assert page == "http://127.0.0.1:5000/#/experiments/7/runs"
    assert parse_qs(query) == {
        "workflowType": ["machine_learning"],
        "searchFilter": ["tags.`sweeplab.trial_id` IS NOT NULL"],  # the trials, not nested under their launch
        "orderByKey": ["metrics.`val/error`"],
        "orderByAsc": ["true"],
    }
    assert parse_qs(runs_url("http://h:1", "7", "val/acc", "max").partition("?")[2])["orderByAsc"] == ["false"]
    assert runs_url("http://127.0.0.1:5000", None).endswith("/#/experiments?workflowType=machine_learning")


def test_url_of_the_shared_view_carries_only_its_key():
    # MLflow's UI ignores a shared view when the URL names a filter or sort (searchFilter, orderByKey, ...)
    url = runs_url("http://127.0.0.1:5000", "7", "val/acc", "max", view=True)
    page, _, query = url.partition("?")
    assert page == "http://127.0.0.1:5000/#/experiments/7/runs"
    assert parse_qs(query) == {"workflowType": ["machine_learning"], "viewStateShareKey": ["sweeplab-trials"]}
    assert runs_url("http://h:1", None, view=True).endswith("/#/experiments?workflowType=machine_learning")


# The runs page's state as MLflow 3.17's UI reads it: search facets and ui state in one flat object;
# column ids are `<kind>.\`<key>\``, the duration column's id is its field, "duration".
SWEEP_VIEW = {
    "searchFilter": "tags.`sweeplab.trial_id` IS NOT NULL",
    "orderByKey": "metrics.`val/error`",
    "orderByAsc": True,
    "selectedColumns": [
        "attributes.`Dataset`",
        "metrics.`val/error`",
        "tags.`sweeplab.outcome`",
        "params.`optim.weight_decay`",  # the only key the four full trials vary in (the smoke trial is left out)
    ],
    "columnOrder": [
        "attributes.`Dataset`",
        "duration",
        "metrics.`val/error`",
        "tags.`sweeplab.outcome`",
        "params.`optim.weight_decay`",
    ],
    "columnWidths": {"attributes.`Dataset`": 170, "tags.`sweeplab.outcome`": 180},
}


def test_view_state_shows_outcome_beside_the_metric_and_the_varied_keys():
    state = view_state("val/acc", "max", ["variant", "optim.lr"])
    assert state["orderByKey"] == "metrics.`val/acc`" and state["orderByAsc"] is False
    assert state["selectedColumns"] == [
        "attributes.`Dataset`",
        "metrics.`val/acc`",
        "tags.`sweeplab.outcome`",
        "tags.`sweeplab.variant`",  # a variant's label is a tag, not a param
        "params.`optim.lr`",
    ]
    assert state["columnOrder"][2:4] == ["metrics.`val/acc`", "tags.`sweeplab.outcome`"]


def _view(c, exp: str) -> dict:
    return json.loads(c.get_experiment(exp).tags[VIEW_TAG])


def test_shared_view_is_set_on_the_sweep_once(store: Path, tmp_path):
    db = tmp_path / "mlflow.db"
    shutil.copy(store / "mlflow.db", db)  # the module's store stays as it was
    c = client(f"sqlite:///{db}")
    exp = c.get_experiment_by_name("quickstart").experiment_id
    assert VIEW_TAG == "mlflow.sharedViewState.sweeplab-trials"
    assert sweep_view(c, exp, "val/error", "min") is True
    first = _view(c, exp)
    # the envelope of MLflow's saved views: listed by name on the runs page, its state a JSON string
    assert set(first) == {"name", "createdAt", "updatedAt", "state"} and first["name"] == "sweeplab trials"
    assert json.loads(first["state"]) == SWEEP_VIEW
    assert sweep_view(c, exp, "val/error", "min") is True
    assert _view(c, exp) == first, "the same state is not written again"

    changed = view_state("val/loss", "min", [])
    assert share_view(c, exp, changed, now_ms=first["createdAt"] + 5) is True
    again = _view(c, exp)
    assert json.loads(again["state"]) == changed
    assert (again["createdAt"], again["updatedAt"]) == (first["createdAt"], first["createdAt"] + 5)
    assert sweep_view(None, None, "val/error", "min") is False


def test_a_store_that_refuses_the_view_gets_the_plain_url(store: Path):
    class ReadOnly:
        def __init__(self, real):
            self.real = real

        def get_experiment(self, exp):
            return self.real.get_experiment(exp)

        def set_experiment_tag(self, *args):
            raise PermissionError("read-only")

    c = client(f"sqlite:///{store / 'mlflow.db'}")
    exp = c.get_experiment_by_name("quickstart").experiment_id
    # a state the module's store holds from no other test (one it held already would need no write)
    refused = view_state("val/loss", "max", ["optim.lr"])
    assert share_view(ReadOnly(c), exp, refused) is False


def test_sort_follows_the_launch_metric(store: Path):
    c = client(f"sqlite:///{store / 'mlflow.db'}")
    assert sweep_metric(c, c.get_experiment_by_name("quickstart").experiment_id) == ("val/error", "min")
    assert sweep_metric(None, None) == ("val/error", "min")


def test_experiment_by_name_or_latest(store: Path):
    c = client(f"sqlite:///{store / 'mlflow.db'}")
    quick = c.get_experiment_by_name("quickstart").experiment_id
    assert pick_experiment(c, "quickstart") == quick
    assert pick_experiment(c, None) == quick  # the sweep with runs, not the empty Default experiment
    assert pick_experiment(None, None) is None  # no store yet: the experiments list


def test_unknown_sweep_is_bad_input(store: Path, capsys):
    uri = f"sqlite:///{store / 'mlflow.db'}"
    assert main(["ui", "--no-browser", "--experiment", "nope", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert "no sweep named 'nope'" in err and "quickstart" in err


def test_port_in_use_is_bad_input(store: Path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["ui", "--no-browser", "--port", str(port), "--tracking-uri", f"sqlite:///{store / 'mlflow.db'}"]
        assert main(argv) == 2
    assert f"port {port} on 127.0.0.1 is in use" in capsys.readouterr().err


def _on_port(port: int) -> list[str]:
    """`ss` lines of the TCP sockets listening on `port`, with their owners."""
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line.strip()]


def _owner(line: str) -> int:
    return int(re.search(r"pid=(\d+)", line).group(1))


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _read_url(proc: subprocess.Popen, timeout: float) -> str:
    """The first stdout line of `sweeplab ui`: the URL, printed once the server answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            return proc.stdout.readline().strip()
        assert proc.poll() is None, f"sweeplab ui exited with {proc.returncode}"
    raise AssertionError(f"sweeplab ui printed no URL within {timeout} s")


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_ui_serves_the_runs_page_on_loopback_and_stops_with_its_server(store: Path, stop: signal.Signals):
    port = _free_port()
    argv = [*CTRL_C, sys.executable, "-m", "sweeplab.cli", "ui", "--no-browser", "--port", str(port), "--experiment"]
    argv += ["quickstart", "--tracking-uri", f"sqlite:///{store / 'mlflow.db'}"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = _read_url(proc, timeout=150)
        c = client(f"sqlite:///{store / 'mlflow.db'}")
        exp = c.get_experiment_by_name("quickstart").experiment_id
        assert url == runs_url(f"http://127.0.0.1:{port}", exp, view=True)  # the shared view, set before
        assert json.loads(_view(c, exp)["state"]) == SWEEP_VIEW

        tree = descendants(proc.pid)
        assert len(tree) > 1, "the MLflow server is a child process"
        sockets = listening(tree)
        assert sockets and {addr for addr, _ in sockets} <= LOOPBACK, f"listening beyond loopback: {sockets}"
        assert _on_port(port)
        assert {_owner(line) for line in _on_port(port)} <= tree, "the port is held by the server sweeplab started"

        with urllib.request.urlopen(url, timeout=30) as page:  # the hash route is the app's page
            assert page.status == 200 and "<html" in page.read().decode().lower()
        api = f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/get?experiment_id={exp}"
        with urllib.request.urlopen(api, timeout=30) as r:
            assert json.load(r)["experiment"]["name"] == "quickstart"

        proc.send_signal(stop)  # Ctrl-C reaches only sweeplab: the server is in its own process group
        assert proc.wait(timeout=30) == 0
        time.sleep(0.5)
        assert [p for p in tree if _alive(p)] == []
        assert _on_port(port) == [], "a process still listens on the port"
    finally:  # after a failed assertion: let sweeplab stop its server, then kill whatever is left
        if proc.poll() is None:
            left = descendants(proc.pid)
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for pid in left - {proc.pid}:
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def smoke_store(tmp_path_factory) -> Path:
    """A folder whose mlflow.db holds what the README's tour makes: a 'quickstart' smoke launch whose
    trials fill rows 0-3 of the smoke table (errors as ERRORS), beside a better full run left out."""
    from sweeplab.search_spaces import load

    folder = tmp_path_factory.mktemp("readme_store")
    uri = fresh_uri(folder, tmp_path_factory)
    trials = {t.rows["quickstart"]: t for t in load(ROOT / "sweeps" / "quickstart.yaml", smoke=True).trials()}
    smoke = Tracker(uri, "quickstart", "tour", {"sweeplab.smoke": "true"})
    for row, err in ERRORS.items():
        p = trials[row].point
        run_trial(smoke, f"aaaaa_0000{row}", p["optim.lr"], p["optim.weight_decay"], 0, [err + 10, err], 2, smoke=True)
    smoke.close()
    full = Tracker(uri, "quickstart", "quickstart-20261128-110000", {"sweeplab.smoke": "false"})
    run_trial(full, "bbbbb_00000", 0.1, 5e-4, 0, [2.0], epochs=1)  # best of all, but a full run
    full.close()
    return folder


def _section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


def test_readme_search_runs_queries_answer_on_a_real_store(smoke_store: Path, monkeypatch, capsys):
    block = re.search(r"```python\n(.*?)```", _section("Querying the record"), re.S).group(1)
    monkeypatch.chdir(smoke_store)  # the README's tracking URI is the default store in the current folder
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    best, good, row = scope["best"], scope["good"], scope["row"]
    assert list(best["tags.sweeplab.trial_id"]) == ["aaaaa_00002"]  # the full run's 2.0 is left out
    assert list(good["tags.sweeplab.trial_id"]) == ["aaaaa_00002", "aaaaa_00003", "aaaaa_00001"]
    assert list(row["tags.sweeplab.trial_id"]) == ["aaaaa_00003"]
    assert "val/error" in capsys.readouterr().out  # the printed frame


@pytest.mark.skipif(shutil.which("jq") is None, reason="the README's pipelines use jq")
def test_readme_sweeplab_best_lines_answer_the_same(smoke_store: Path, monkeypatch, capsys):
    lines = re.search(r"```\n(sweeplab best .*?)```", _section("Querying the record"), re.S).group(1).splitlines()
    monkeypatch.chdir(smoke_store)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    answers = []
    for line in lines:
        command, _, pipe = line.partition(" | ")
        capsys.readouterr()
        assert main(shlex.split(command)[1:]) == 0, line
        out = capsys.readouterr().out
        if pipe:
            jq = subprocess.run(shlex.split(pipe), input=out, capture_output=True, text=True, check=True).stdout
            answers.append(sorted(t["trial_id"] for t in _objects(jq)))
        else:
            answers.append(out)
    assert "aaaaa_00002" in answers[0] and "bbbbb" not in answers[0]
    assert answers[1] == ["aaaaa_00001", "aaaaa_00002", "aaaaa_00003"]
    assert answers[2] == ["aaaaa_00003"]


def _objects(text: str) -> list[dict]:
    """The JSON values of jq's output stream."""
    decoder, out, rest = json.JSONDecoder(), [], text.strip()
    while rest:
        value, end = decoder.raw_decode(rest)
        out.append(value)
        rest = rest[end:].strip()
    return out
