"""`sweeplab ui`: an MLflow server on 127.0.0.1, opened on a sweep's runs page, stopped with sweeplab.

MLflow 3.17's UI shows an experiment in its GenAI view ("Traces") unless the page's URL carries
`workflowType=machine_learning` (or the browser remembers the training view): the experiment's
`mlflow.experimentKind` tag does not decide it, because the UI derives the kind from that URL
parameter. So the URL printed and opened here names the runs tab and the training view.

The runs list shows only the columns a user picks, and its status column says "Finished" for a trial
a scheduler stopped early. So `sweeplab ui` keeps a shared view on the sweep's experiment (MLflow's
"saved views": experiment tag `mlflow.sharedViewState.<key>`, loaded by URL parameter
`viewStateShareKey`): the trials flat (nested under their launch's parent run they start
collapsed), best first by the launch's metric, with columns dataset, the metric, `sweeplab.outcome`
("stopped early at epoch E") and the varied keys. The UI ignores a shared view when the URL names a
filter or sort itself, so the URL carries only the key; where the tag cannot be written (a server
that refuses it) the URL names filter and sort instead.

The server runs in its own process group, which is killed as a whole when `sweeplab ui` is stopped
(Ctrl-C, SIGTERM, SIGHUP): MLflow's uvicorn workers would otherwise keep listening on the port.
"""

from __future__ import annotations

import argparse
import collections
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import webbrowser
from typing import Any
from urllib.parse import quote, urlencode

from sweeplab.analysis import runs
from sweeplab.core import quiet
from sweeplab.core.env import no_telemetry
from sweeplab.core.errors import ConfigError
from sweeplab.core.names import LAUNCH, OUTCOME, PARENT, TRIAL, VARIANT
from sweeplab.tracking.store import resolve_uri, sqlite_path

HOST = "127.0.0.1"
TRAINING_VIEW = "workflowType=machine_learning"
VIEW_KEY = "sweeplab-trials"  # the shared view's key: URL-safe, one per experiment, rewritten when stale
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"  # the experiment tag the UI reads a shared view from
MAX_KEY_COLUMNS = 12  # varied keys shown as columns; the rest stay a click away under "Columns"
START_S = 120.0  # the first start migrates a new store and loads the app: seconds, not minutes
STOP_S = 10.0  # the server's grace after SIGTERM before the whole group is killed
TAIL_LINES = 30  # the server's last output lines kept, shown if it fails


class _Stopped(Exception):
    """SIGTERM or SIGHUP arrived: stop the server as Ctrl-C would."""


def runs_url(
    base: str, experiment_id: str | None, metric: str = "val/error", mode: str = "min", view: bool = False
) -> str:
    """The runs page of an experiment in the training view: with `view`, as the shared view VIEW_KEY
    shows it; else its trials (not nested under their launch's parent run, which a click on the
    filter's x shows again) best first by `metric`. The experiments list when there is no experiment."""
    if experiment_id is None:
        return f"{base}/#/experiments?{TRAINING_VIEW}"
    page = f"{base}/#/experiments/{experiment_id}/runs?{TRAINING_VIEW}"
    if view:
        return f"{page}&viewStateShareKey={VIEW_KEY}"
    return f"{page}&{urlencode(_facets(metric, mode), quote_via=quote)}"


def _facets(metric: str, mode: str) -> dict[str, str]:
    """The runs page's filter and sort as URL parameters: the trials, best first by `metric`."""
    return {
        "searchFilter": f"tags.`{TRIAL}` IS NOT NULL",
        "orderByKey": f"metrics.`{metric}`",
        "orderByAsc": "true" if mode == "min" else "false",
    }


def view_state(metric: str, mode: str, keys: list[str]) -> dict[str, Any]:
    """The runs page's state in the shared view: the trials best first by `metric`, and as columns
    (after run name and created, always shown) the dataset, duration, the metric, the trial's outcome
    and the varied `keys` (params; `variant` is a tag), in that order."""
    shown = [f"tags.`{VARIANT}`" if k == "variant" else f"params.`{k}`" for k in keys[:MAX_KEY_COLUMNS]]
    dataset, outcome = "attributes.`Dataset`", f"tags.`{OUTCOME}`"
    return {
        **_facets(metric, mode),
        "orderByAsc": mode == "min",
        "selectedColumns": [dataset, f"metrics.`{metric}`", outcome, *shown],
        # the outcome beside the metric, not at the far right among the tags; "duration" is that column's id
        "columnOrder": [dataset, "duration", f"metrics.`{metric}`", outcome, *shown],
        "columnWidths": {dataset: 170, outcome: 180},
    }


def share_view(c: runs.MlflowClient, experiment_id: str, state: dict[str, Any], now_ms: int | None = None) -> bool:
    """Write `state` as the experiment's shared view VIEW_KEY unless it holds that state already
    (then nothing is written); False when the store refuses the tag."""
    exp = c.get_experiment(experiment_id)
    old: dict[str, Any] = {}
    try:
        old = json.loads(exp.tags.get(VIEW_TAG, "{}"))
        if json.loads(old["state"]) == state:
            return True
    except (ValueError, KeyError, TypeError):
        pass
    now = int(time.time() * 1000) if now_ms is None else now_ms
    created = old.get("createdAt") if isinstance(old, dict) and isinstance(old.get("createdAt"), int) else now
    # the envelope of MLflow's saved views, so the view is listed (by name) among the page's views too
    value = json.dumps({"name": "sweeplab trials", "createdAt": created, "updatedAt": now, "state": json.dumps(state)})
    try:
        c.set_experiment_tag(experiment_id, VIEW_TAG, value)
    except Exception:  # e.g. a server without write access: the URL then names filter and sort itself
        return False
    return True


def sweep_view(c: runs.MlflowClient | None, experiment_id: str | None, metric: str, mode: str) -> bool:
    """Set the sweep's shared view (the keys its trials vary in as columns); whether the URL may use it."""
    if c is None or experiment_id is None:
        return False
    found = runs.trials(c, c.get_experiment(experiment_id).name)
    keys = runs.varied_keys(runs.kept(found) or found)
    return share_view(c, experiment_id, view_state(metric, mode, keys))


def sweep_metric(c: runs.MlflowClient | None, experiment_id: str | None) -> tuple[str, str]:
    """(metric, mode) of the experiment's latest launch, from its parent run's params; else val/error, min."""
    if c is None or experiment_id is None:
        return "val/error", "min"
    where = f"tags.`{LAUNCH}` IS NOT NULL and tags.`{PARENT}` IS NULL"
    found = c.search_runs([experiment_id], where, order_by=["attributes.start_time DESC"], max_results=1)
    params = found[0].data.params if found else {}
    return params.get("metric", "val/error"), params.get("mode", "min")


def pick_experiment(c: runs.MlflowClient | None, name: str | None) -> str | None:
    """The id of experiment `name` (bad input when missing), else the one with the latest run, else None."""
    exps = list(c.search_experiments(max_results=50000)) if c is not None else []
    if name is not None:
        found = [e for e in exps if e.name == name]
        if not found:
            known = sorted(e.name for e in exps if e.name != "Default")
            raise runs.UnknownTarget(
                f"no sweep named '{name}' in the MLflow store; sweeps: {', '.join(known) or 'none yet'}"
            )
        return found[0].experiment_id
    if c is None or not exps:
        return None
    latest = c.search_runs([e.experiment_id for e in exps], order_by=["attributes.start_time DESC"], max_results=1)
    return latest[0].info.experiment_id if latest else None


def ui(args: argparse.Namespace) -> int:
    """Serve the MLflow UI on 127.0.0.1 until stopped; print (and open) the sweep's runs page."""
    uri = resolve_uri(args.tracking_uri)
    db = sqlite_path(uri)
    c = runs.open_client(uri, must_exist=True)
    experiment = pick_experiment(c, args.experiment)
    metric, mode = sweep_metric(c, experiment)
    if uri.startswith(("http://", "https://")):  # a server is running already: only say where to look
        print(runs_url(uri.rstrip("/"), experiment, metric, mode, sweep_view(c, experiment, metric, mode)))
        return 0
    _check_port(args.port)
    view = sweep_view(c, experiment, metric, mode)
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", uri,
        "--host", HOST,
        "--port", str(args.port),
        "--workers", "1",
    ]  # fmt: skip
    if db is not None:  # artifacts of experiments created from the UI go next to the database
        cmd += ["--artifacts-destination", str(db.resolve().parent / "mlartifacts")]
    env = no_telemetry({**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    quiet.release()  # the input is checked: from here on a warning shows as it comes
    base = f"http://{HOST}:{args.port}"
    url = runs_url(base, experiment, metric, mode, view)
    previous = {s: signal.signal(s, _raise_stopped) for s in (signal.SIGTERM, signal.SIGHUP)}
    proc: subprocess.Popen[bytes] | None = None
    verbose = getattr(args, "verbose", False)
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    try:
        # its own session and process group: a terminal's Ctrl-C reaches only sweeplab, which stops the group;
        # its chatter goes to stderr with --verbose, else only its last lines, if it fails; stdout carries
        # only the URL (`sweeplab ui > url.txt`)
        out = sys.stderr if verbose else subprocess.PIPE
        proc = subprocess.Popen(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=None if verbose else subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        if not verbose:
            threading.Thread(target=_keep_tail, args=(proc, tail), daemon=True).start()
        failed = _wait_ready(proc, base)
        if failed:
            print(f"sweeplab: {failed}", file=sys.stderr)
            _show_tail(tail)
            return 1
        print(url, flush=True)
        print(f"sweeplab: MLflow UI for {uri} (Ctrl-C stops it)", file=sys.stderr, flush=True)
        if not args.no_browser and _has_display():
            webbrowser.open(url)
        code = proc.wait()
        print(f"sweeplab: the MLflow server exited with code {code}", file=sys.stderr)
        _show_tail(tail)
        return 1
    except (KeyboardInterrupt, _Stopped):
        return 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if proc is not None:
            _stop_group(proc)


def _keep_tail(proc: subprocess.Popen[bytes], tail: collections.deque[str]) -> None:
    """Read the server's output to its end, keeping the last lines (a full pipe would stall the server)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        tail.append(line.decode(errors="replace").rstrip())


def _show_tail(tail: collections.deque[str]) -> None:
    """The server's last lines, after it failed: why it did, in its own words."""
    time.sleep(0.2)  # the reader thread's last lines
    if tail:
        print("sweeplab: the MLflow server's last lines (all of them with --verbose):", file=sys.stderr)
        print("\n".join(f"  {line}" for line in tail), file=sys.stderr)


def _raise_stopped(signum: int, frame: object) -> None:
    raise _Stopped(signal.Signals(signum).name)


def _check_port(port: int) -> None:
    """Bad input when the port is taken: MLflow would fail later with a traceback about it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError as e:
            why = "is in use" if e.errno == errno.EADDRINUSE else f"cannot be used ({e.strerror or e})"
            raise ConfigError(f"port {port} on {HOST} {why}: pass another --port") from None


def _wait_ready(proc: subprocess.Popen[bytes], base: str) -> str:
    """Poll the server's /health until it answers OK (""), or why it never will."""
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"the MLflow server exited with code {proc.returncode} before answering"
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                if r.status == 200:
                    return ""
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    return f"the MLflow server did not answer on {base} within {START_S:.0f} s"


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's whole process group, SIGKILL to what is left after STOP_S."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_S
    while time.monotonic() < deadline:
        proc.poll()
        if not _group_alive(proc.pid):
            return
        time.sleep(0.1)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _group_alive(pgid: int) -> bool:
    """Any process of group `pgid` still running (zombies waiting for init to reap them do not count)."""
    if not os.path.isdir("/proc"):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            return True
    return False


def _has_display() -> bool:
    """A graphical browser can open: macOS, Windows, or an X11/Wayland display (not a console browser)."""
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
