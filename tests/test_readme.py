"""The README is a test (issue 23): every fenced command block of README.md runs, in order, in a fresh empty
folder, as a new user would, and what each block promises is checked.

The README itself is parsed (``` blocks are shell, ```python blocks Python), so the test follows it when it
changes. The fresh folder holds only links to the repository's `configs/` and `sweeps/`: the README's paths
are relative to a clone's root. Commands run with the checkout's `sweeplab` (the venv's bin first on PATH),
no $MLFLOW_TRACKING_URI and no display. A shell block runs in one `bash -euo pipefail`, fed one command at a
time as a person types them (so `RUN_ID=$(...)` is there for the next line), each with stdin from /dev/null;
after each command its promises are checked before the next one runs. A Python block runs as a script in the
same folder, followed by a probe (not part of the README) that checks the objects it promises.

Blocks and commands that cannot run as written here, and what is checked instead:

- the set-up block (`make quickstart`, `make test`): running the whole suite from inside the suite would
  recurse (and `make quickstart` is the main job the tour's commands already cover). Checked: both targets
  exist (`make -n -C <repo> quickstart test`), `make test` runs pytest, and `make -n quickstart` runs the
  main job the README's paragraph after the block describes (the `sweeplab ...` commands it names, the sweep
  file it names in smoke mode, one epoch on the full data).
- the "Running on a cluster" block (`ray up cluster.yaml`, `ray job submit`, ...): it needs a cloud account.
  Checked: every `sweeplab ...` command inside it (after `ray job submit ... --`, or inside `ray exec FILE
  "..."`) parses with the real CLI parser, the sweep files it names exist, and the cluster file is YAML.
- commands that serve until stopped (SERVERS: `sweeplab ui`, `optuna-dashboard`): each starts in its own
  session, is awaited (its URL line on stdout, or its port answering), must answer HTTP 200 on 127.0.0.1
  and listen on loopback only, is stopped as Ctrl-C stops it (SIGINT to its process group) and must then be
  gone within 20 s (optuna-dashboard, a gunicorn: 40 s) with nothing left listening on its port (`sweeplab
  ui` must also exit 0: the README says Ctrl-C stops it). A server is not part of its block's bash, so a
  variable set before it in the same block would not reach it (no README server line uses one).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import select
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest
import yaml

from sweep_cli import CTRL_C, LOOPBACK, descendants, listening

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LINKED = ("configs", "sweeps")  # what a clone has that the README's commands name; nothing else of the repo
COMMAND_S = 600  # per command (a smoke sweep takes a minute or two on 2 cores)
SERVER_START_S = 180  # a server's first start (MLflow migrates a new store)
STOP_S = 20  # a stopped server must be gone within this (unless its Server says otherwise)
PORT_WAIT_S = 60  # a server's port taken by someone else: wait this long for it, then fail
SMOKE_TRIALS = 8  # quickstart's smoke grid (README: "the smoke grid's 8 rows")
API_TRIALS = 2  # the README's Python API sweep: two learning rates
TAIL = 3000  # characters of a command's stdout and stderr shown when it fails


# ---------------------------------------------------------------------------------------------- the README


@dataclass
class Command:
    text: str  # as written (continuation lines kept), comments included: bash runs exactly this
    line: int  # README line of its first line

    @property
    def words(self) -> list[str]:
        return shlex.split(self.text.replace("\\\n", " "), comments=True)

    @property
    def code(self) -> str:
        """Its words joined by spaces, comment dropped: what promises and servers are matched against."""
        return " ".join(self.words)


@dataclass
class Block:
    index: int  # counted from 1 over the README's fenced blocks
    total: int
    lang: str  # "" (shell) or "python"
    line: int  # README line of its opening fence
    section: str  # the heading above it
    text: str
    after: str  # the prose up to the next block or heading

    @property
    def name(self) -> str:
        return f"README.md block {self.index}/{self.total} (```{self.lang}, line {self.line}, under '{self.section}')"

    @property
    def commands(self) -> list[Command]:
        """Its command lines, a line ending in a backslash joined with the next; blank and comment lines dropped."""
        out: list[Command] = []
        pending: list[str] = []
        start = 0
        for n, line in enumerate(self.text.splitlines(), self.line + 1):
            if not pending and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if not pending:
                start = n
            pending.append(line)
            if not line.endswith("\\"):
                out.append(Command("\n".join(pending), start))
                pending = []
        if pending:
            out.append(Command("\n".join(pending), start))
        return out


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks, each with the heading above it and the prose after it (up to the next block or heading)."""
    found: list[dict] = []
    lines = text.splitlines()
    section, prose, i = "(top)", [], 0

    def close_prose() -> None:
        if found and found[-1]["after"] is None:
            found[-1]["after"] = "\n".join(prose)

    while i < len(lines):
        line = lines[i]
        fence = re.match(r"^```(\w*)\s*$", line)
        if line.startswith("#"):
            close_prose()
            section, prose = line.lstrip("#").strip(), []
        elif fence:
            close_prose()
            start, body = i + 1, []
            i += 1
            while i < len(lines) and not re.match(r"^```\s*$", lines[i]):
                body.append(lines[i])
                i += 1
            assert i < len(lines), f"README.md line {start}: a ``` block that never closes"
            found.append({"lang": fence.group(1), "line": start, "section": section, "text": "\n".join(body) + "\n"})
            found[-1]["after"], prose = None, []
        else:
            prose.append(line)
        i += 1
    close_prose()
    return [Block(n, len(found), **f) for n, f in enumerate(found, 1)]


# --------------------------------------------------------------------------------------- running commands


def user_env() -> dict[str, str]:
    """A new user's environment: the checkout's sweeplab (and optuna-dashboard, mlflow) first on PATH, no
    tracking URI of the caller's, no display (so nothing opens a browser; BROWSER=true opens nothing either)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DISPLAY", "WAYLAND_DISPLAY")}
    env["PATH"] = f"{Path(sys.executable).absolute().parent}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    env["BROWSER"] = "true"
    return env


def tails(out: str, err: str) -> str:
    return f"--- stdout (tail) ---\n{out[-TAIL:]}\n--- stderr (tail) ---\n{err[-TAIL:]}"


def stop_group(pgid: int) -> None:
    """SIGTERM, then SIGKILL, to what is left of a process group this test started."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        time.sleep(2)


class Shell:
    """One `bash -euo pipefail` for a block, fed one command at a time; each command's output is read up to
    a marker the shell prints after it, so that its promises are checked before the next command runs."""

    PRELUDE = (
        "__readme_done() { printf '\\n@@readme-done %s@@\\n' \"$1\"; printf '\\n@@readme-done %s@@\\n' \"$1\" >&2; }\n"
    )

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            ["bash", "-euo", "pipefail"],
            cwd=folder,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.n = 0
        self._send(self.PRELUDE)

    def _send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def run(self, command: Command, timeout: float = COMMAND_S) -> tuple[int, str, str]:
        """(exit code, stdout, stderr) of `command`; a failing command ends the shell (set -e): its code is bash's."""
        self.n += 1
        mark = f"\n@@readme-done {self.n}@@\n".encode()
        # the braces keep `RUN_ID=$(...)` in this shell; the newline before `}` ends a trailing comment
        self._send(f"{{ {command.text}\n}} </dev/null\n__readme_done {self.n}\n")
        assert self.proc.stdout is not None and self.proc.stderr is not None
        fds = {self.proc.stdout.fileno(): bytearray(), self.proc.stderr.fileno(): bytearray()}
        done: set[int] = set()
        deadline = time.monotonic() + timeout
        exited_at: float | None = None
        while len(done) < len(fds):
            if time.monotonic() > deadline:
                stop_group(self.proc.pid)
                out, err = (fds[f].decode(errors="replace") for f in fds)
                pytest.fail(f"`{command.text}` ran past {timeout:.0f} s; stopped\n{tails(out, err)}", pytrace=False)
            if exited_at is None and self.proc.poll() is not None:
                exited_at = time.monotonic()
            if exited_at is not None and time.monotonic() - exited_at > 2:  # bash is gone: what it wrote is read
                break
            ready, _, _ = select.select([f for f in fds if f not in done], [], [], 0.5)
            for f in ready:
                chunk = os.read(f, 1 << 16)
                if not chunk:
                    done.add(f)  # EOF (bash exited)
                    continue
                fds[f] += chunk
                if mark in fds[f]:
                    done.add(f)
        out, err = (bytes(fds[f]).split(mark)[0].decode(errors="replace") for f in fds)
        if all(mark in fds[f] for f in fds):
            return 0, out.rstrip("\n"), err.rstrip("\n")
        rc = self.proc.wait(timeout=30)
        return rc if rc != 0 else -1, out, err

    def close(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            return self.proc.wait(timeout=60)
        finally:
            stop_group(self.proc.pid)  # anything a command left running in the block's session


# ---------------------------------------------------------------------------------------------- promises


@dataclass
class Ran:
    """A command (or Python block) that ran, for the promise checks."""

    block: Block
    command: str
    out: str
    err: str
    folder: Path
    env: dict[str, str]
    tour: dict[str, int]  # launch name -> its trial count, from each sweep's summary line

    def fail(self, what: str) -> NoReturn:
        pytest.fail(f"{self.block.name}: `{self.command}`: {what}\n{tails(self.out, self.err)}", pytrace=False)

    def expect(self, ok: object, what: str) -> None:
        if not ok:
            self.fail(what)


def _words(ran: Ran) -> list[str]:
    return shlex.split(ran.command.replace("\\\n", " "), comments=True)


def _flag(words: list[str], name: str) -> str | None:
    return words[words.index(name) + 1] if name in words and words.index(name) + 1 < len(words) else None


def _json_values(text: str) -> list[object]:
    """The JSON values of a stream (jq's output)."""
    decoder, values, rest = json.JSONDecoder(), [], text.strip()
    while rest:
        value, end = decoder.raw_decode(rest)
        values.append(value)
        rest = rest[end:].strip()
    return values


def _md_rows(text: str) -> list[list[str]]:
    """The body rows of a Markdown table (header and separator dropped)."""
    rows = [line for line in text.splitlines() if line.startswith("|")]
    return [[c.strip() for c in r.strip("|").split(" | ")] for r in rows[2:]]


def check_train(ran: Ran) -> None:
    """The run folder gets config.yaml, metrics.jsonl and checkpoint.pt, with one metrics line per epoch up to
    the config's train.epochs; `--resume` with another train.epochs says in one line what it re-planned."""
    words = _words(ran)
    out = _flag(words, "--output")
    ran.expect(out, "the test expects `sweeplab train` in the README to name its --output folder")
    folder = ran.folder / str(out)
    missing = [f for f in ("config.yaml", "metrics.jsonl", "checkpoint.pt") if not (folder / f).is_file()]
    ran.expect(not missing, f"the run folder {out} lacks {', '.join(missing)}")
    epochs = yaml.safe_load((folder / "config.yaml").read_text())["train"]["epochs"]
    asked = [w.split("=", 1)[1] for w in words if w.startswith("train.epochs=")]
    ran.expect(not asked or int(asked[-1]) == epochs, f"config.yaml has train.epochs {epochs}, not {asked}")
    logged = [json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    ran.expect(logged == list(range(1, epochs + 1)), f"metrics.jsonl has epochs {logged}, not 1..{epochs}")
    if "--resume" in words and asked:
        ran.expect(
            re.search(r"--resume: train\.epochs \d+ -> " + asked[-1], ran.err + ran.out),
            "`--resume` with a longer train.epochs printed no line saying what it re-planned",
        )


def check_models(ran: Ran) -> None:
    ran.expect("resnet_preact" in ran.out, "`sweeplab models` does not list resnet_preact")


def check_dry_run(ran: Ran) -> None:
    rows = [line for line in ran.out.splitlines() if re.match(r"^\s*\d+\s+\d", line)]  # index, then a value
    ran.expect(
        len(rows) == SMOKE_TRIALS and f"{SMOKE_TRIALS} trials, epoch budget" in ran.out,
        f"the smoke dry-run does not list {SMOKE_TRIALS} trials",
    )


def check_dry_run_jq(ran: Ran) -> None:
    """One JSON object per compiled trial (as many as the dry-run's own JSON has), each with its label and lr."""
    left = shlex.split(ran.command.split(" | ")[0])
    plain = subprocess.run(left, cwd=ran.folder, env=ran.env, capture_output=True, text=True, timeout=COMMAND_S)
    trials = _json_values(plain.stdout)
    trials = trials[0] if len(trials) == 1 and isinstance(trials[0], list) else trials
    try:
        got = _json_values(ran.out)
    except ValueError as e:
        ran.fail(f"jq's output is not JSON: {e}")
    ran.expect(got and len(got) == len(trials), f"{len(got)} JSON objects for {len(trials)} trials")
    bad = [g for g in got if not (isinstance(g, dict) and set(g) == {"label", "lr"} and g["label"] and g["lr"])]
    ran.expect(not bad, f"objects without a label and an lr: {bad[:3]}")


def check_sweep_end(ran: Ran) -> None:
    """A sweep ends with its summary: the trial count, the best trial, and the command that reruns it."""
    tail = [line for line in ran.out.splitlines() if line.strip()][-10:]
    wanted = [r"^sweeplab: (\d+) trials: ", r"^best: trial ", r"^rerun it: sweeplab train --from-run \S+"]
    at, found = 0, []
    for pattern in wanted:
        hit = next((i for i in range(at, len(tail)) if re.match(pattern, tail[i])), None)
        ran.expect(hit is not None, f"the sweep's output does not end with a line matching {pattern!r}")
        assert hit is not None
        found.append(re.match(pattern, tail[hit]))
        at = hit + 1
    trials = int(found[0].group(1))
    words = _words(ran)
    if "sweeps/quickstart.yaml" in words and "--smoke" in words:
        ran.expect(trials == SMOKE_TRIALS, f"the quickstart smoke run has {trials} trials, not {SMOKE_TRIALS}")
    name = _flag(words, "--name")
    if name:
        ran.tour[name] = trials


def check_optuna(ran: Ran) -> None:
    ran.expect(re.search(r"^sweeplab: Optuna study '[^']+' is in ", ran.out, re.M), "it does not name its study")


def check_status(ran: Ran) -> None:
    for name in ran.tour:
        ran.expect(re.search(rf"^{re.escape(name)}\s", ran.out, re.M), f"`sweeplab status` does not list {name}")


def check_status_one(ran: Ran) -> None:
    name = _words(ran)[2]
    n = ran.tour.get(name)
    head = re.search(rf"^{re.escape(name)}\s.*\b(\d+) trials:", ran.out, re.M)
    ran.expect(head and (n is None or int(head.group(1)) == n), f"no head line '{name} ... {n} trials:'")
    lines = [line for line in ran.out.splitlines() if line.startswith("  ")]
    ran.expect(n is None or len(lines) == n, f"{len(lines)} trial lines, not {n}")


def check_resume_finished(ran: Ran) -> None:
    ran.expect("  start  (trial" not in ran.out, "resuming a finished launch started trials")


def check_best(ran: Ran) -> None:
    words = _words(ran)
    top = int(_flag(words, "--top") or 1)
    ranks = [r[0] for r in _md_rows(ran.out)]
    ran.expect(ranks == [str(i) for i in range(1, top + 1)], f"ranks {ranks}, not 1..{top}")
    if "--smoke" in words:
        ran.expect("(smoke run)" in ran.out, "the title does not say '(smoke run)'")


def check_table_list(ran: Ran) -> None:
    ran.expect(re.search(r"^\| quickstart \|", ran.out, re.M), "`table --list` does not list quickstart")


def check_table_smoke(ran: Ran) -> None:
    rows = _md_rows(ran.out)
    ran.expect(len(rows) == SMOKE_TRIALS, f"{len(rows)} rows, not the smoke grid's {SMOKE_TRIALS}")
    titles = [line for line in ran.out.splitlines() if line.startswith("#")]
    ran.expect(titles and "(smoke run)" in titles[0], "the title does not say '(smoke run)'")


def check_summary(ran: Ran) -> None:
    ran.expect(re.search(r"^quickstart \(smoke run\): ", ran.out, re.M), "no verdict line for quickstart")


def check_report(ran: Ran) -> None:
    out = ran.folder / str(_flag(_words(ran), "--out"))
    missing = [f for f in ("index.html", "index.md") if not (out / f).is_file()]
    ran.expect(not missing, f"the report lacks {', '.join(missing)}")
    ran.expect("quickstart" in (out / "index.md").read_text(), "the report's index does not show quickstart")


def check_export(ran: Ran) -> None:
    import pyarrow.parquet as pq

    path = ran.folder / str(_flag(_words(ran), "--out"))
    ran.expect(path.is_file(), f"no {path.name} written")
    rows = pq.read_table(path).num_rows
    ran.expect(rows == SMOKE_TRIALS, f"{path.name} has {rows} rows, not the tour's {SMOKE_TRIALS} trials")


def check_best_jq(ran: Ran) -> None:
    try:
        got = _json_values(ran.out)
    except ValueError as e:
        ran.fail(f"jq's output is not JSON: {e}")
    ran.expect(got and all(isinstance(g, dict) and g.get("run_id") for g in got), "no trial selected")


PROBE_MARK = "@@readme-block-done@@"
PROBE_TRAINED = """
import torch
for name, m in (("model", model), ("same", same)):
    assert isinstance(m, torch.nn.Module), f"{name} is a {type(m).__name__}, not a torch.nn.Module"
assert not model.training, "sweeplab.load_model did not return the model in eval mode"
x = torch.rand(4, 1, 28, 28)
with torch.no_grad():
    a, b = model(x), same(x)
assert a.shape == (4, 10), f"logits of shape {tuple(a.shape)} for 4 images"
assert torch.allclose(a, b, atol=1e-5), "sweeplab.load_model and mlflow.pytorch.load_model disagree on a batch"
"""
PROBE_API = f"""
import mlflow
import mlflow.pytorch
import torch
rows = trials.to_dict("records")
assert len(rows) == {API_TRIALS}, f"sweeplab.run returned {{len(rows)}} trials, not {API_TRIALS}"
assert {{"key", "label", "status", "epochs", "optim.lr", "val/error", "run_id"}} <= set(trials.columns), trials.columns
assert sorted(r["optim.lr"] for r in rows) == sorted(sweep["space"]["optim.lr"]["grid"]), rows
epochs = sweep["overrides"]["train.epochs"]
assert all(r["status"] == "FINISHED" and r["epochs"] == epochs and r["run_id"] for r in rows), rows
assert trials.attrs["status"] == "FINISHED" and trials.attrs["exit_code"] == 0, trials.attrs
top = min(rows, key=lambda r: r["val/error"])
assert best[0]["run_id"] == top["run_id"] and best[0]["value"] == top["val/error"], (best, top)
assert best[0]["config"]["optim"]["lr"] == top["optim.lr"] and best[0]["config"]["train"]["epochs"] == epochs
assert isinstance(model, torch.nn.Module) and not model.training, "load_model gave no nn.Module in eval mode"
mlflow.set_tracking_uri("sqlite:///mlflow.db")
same = mlflow.pytorch.load_model(f"runs:/{{best[0]['run_id']}}/model")
x = torch.rand(5, 1, 28, 28)
with torch.no_grad():
    a, b = model(x), same(x)
assert a.shape == (5, 10) and torch.equal(a, b), "sweeplab.load_model and mlflow.pytorch.load_model disagree"
again = sweeplab.trials(trials.attrs["launch"])[["key", "status", "run_id"]].to_dict("records")
assert again == [{{"key": r["key"], "status": "FINISHED", "run_id": r["run_id"]}} for r in rows], again
"""
PROBE_QUERIES = """
assert len(best) == 1, f"the best-trial query returned {len(best)} runs"
assert len(good) >= 1, "no trial below 90 % validation error"
assert len(row) >= 1, "no run behind row 3 of the quickstart table"
"""


def check_api_table(ran: Ran) -> None:
    lines = ran.out.splitlines()
    head = next((i for i, line in enumerate(lines) if "label" in line and "run_id" in line), None)
    ran.expect(head is not None, "the trials table was not printed")
    assert head is not None
    rows = [line for line in lines[head + 1 :] if line.strip()]
    ran.expect(len(rows) == API_TRIALS, f"{len(rows)} rows printed, not {API_TRIALS}")
    # progress="none" leaves out the live lines, not the end: the best trial and the command that reruns it
    ran.expect(re.search(r"^best: trial .*\n^rerun it: sweeplab train --from-run \w+$", ran.out, re.M), "no summary")


def check_frame(ran: Ran) -> None:
    ran.expect("Empty DataFrame" not in ran.out, "the printed frame is empty")
    ran.expect("val/error" in ran.out and len(ran.out.strip().splitlines()) >= 2, "no frame printed")


@dataclass
class Promise:
    what: str
    pattern: str  # searched in a shell command's words (comment dropped) or in a Python block's code
    check: Callable[[Ran], None]
    python: bool = False
    probe: str = ""  # Python appended to the block: its assertions are the promise
    hits: int = field(default=0)


PROMISES = [
    Promise("train writes its run folder; --resume continues and re-plans", r"^sweeplab train\b", check_train),
    Promise("models lists resnet_preact", r"^sweeplab models\b", check_models),
    Promise(
        "the smoke dry-run lists the 8 trials",
        r"^sweeplab run sweeps/quickstart\.yaml\b(?=.*--smoke)(?=.*--dry-run)(?!.*--json)",
        check_dry_run,
    ),
    Promise(
        "the dry-run's JSON through jq: one object per trial",
        r"^sweeplab run .*--dry-run --json \| jq ",
        check_dry_run_jq,
    ),
    Promise("a sweep ends with its summary and rerun command", r"^sweeplab run (?!.*--dry-run)", check_sweep_end),
    Promise(
        "the Optuna sweep names its study", r"^sweeplab run sweeps/\S*optuna\S*\.yaml(?!.*--dry-run)", check_optuna
    ),
    Promise("status lists every launch", r"^sweeplab status$", check_status),
    Promise("status NAME lists its trials", r"^sweeplab status \S+$", check_status_one),
    Promise("resume of a finished launch trains nothing", r"^sweeplab resume \S+$", check_resume_finished),
    Promise("best prints a ranked table", r"^sweeplab best (?!.*--(json|yaml))", check_best),
    Promise("table --list lists quickstart", r"^sweeplab table --list$", check_table_list),
    Promise(
        "the quickstart smoke table has the grid's rows", r"^sweeplab table quickstart --smoke$", check_table_smoke
    ),
    Promise("table --all --summary: a verdict line per table", r"^sweeplab table --all --summary\b", check_summary),
    Promise("report writes index.html and index.md", r"^sweeplab report .*--out ", check_report),
    Promise("export writes a Parquet file of the trials", r"^sweeplab export .*--out \S+\.parquet", check_export),
    Promise("best --json through jq selects trials", r"^sweeplab best .*--json \| jq ", check_best_jq),
    Promise(
        "the trained network loads from MLflow, both ways, as the same model",
        r"mlflow\.pytorch\.load_model\(",
        lambda ran: None,
        python=True,
        probe=PROBE_TRAINED,
    ),
    Promise("the Python API runs a sweep and loads a model", r"sweeplab\.run\(", check_api_table, True, PROBE_API),
    Promise("the MLflow queries answer", r'experiment_names=\["quickstart"\]', check_frame, True, PROBE_QUERIES),
]


# ----------------------------------------------------------------------------------------------- servers


@dataclass(frozen=True)
class Server:
    """A command that serves until stopped: where it answers, and what stopping it promises."""

    prefix: tuple[str, ...]  # its first words
    default_port: int
    url_on_stdout: bool  # prints its URL once it answers; else its port is polled
    url_pattern: str = r"^http://127\.0\.0\.1:\d+/"
    exit_code: int | None = None  # its promised exit code after Ctrl-C; None: not promised
    stop_s: float = STOP_S  # how long it may take to be gone after Ctrl-C


SERVERS = (
    # "Ctrl-C stops its server"; the URL "opened on the latest sweep's trials": a runs page
    Server(("sweeplab", "ui"), 5000, True, r"^http://127\.0\.0\.1:\d+/#/experiments/\d+/runs\?", exit_code=0),
    # gunicorn waits up to its graceful_timeout (30 s) for a worker that has not exited on Ctrl-C (one still
    # booting, on a busy machine: seen once under two test workers), then kills it
    Server(("optuna-dashboard",), 8080, False, stop_s=40),
)


def server_of(command: Command) -> Server | None:
    words = command.words
    return next((s for s in SERVERS if tuple(words[: len(s.prefix)]) == s.prefix), None)


def _listeners(port: int) -> list[str]:
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line.strip()]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status


def run_server(block: Block, command: Command, server: Server, folder: Path, env: dict[str, str], logs: Path) -> None:
    words = command.words
    port = int(_flag(words, "--port") or server.default_port)
    name = f"{block.name}: `{command.code}` (line {command.line})"
    deadline = time.monotonic() + PORT_WAIT_S
    while _listeners(port):
        if time.monotonic() > deadline:
            pytest.fail(f"{name}: port {port} has been taken by another process for {PORT_WAIT_S} s", pytrace=False)
        time.sleep(2)
    out_path, err_path = logs / f"server{command.line}.out", logs / f"server{command.line}.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(
            [*CTRL_C, "bash", "-euo", "pipefail", "-c", command.text],
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    tree: set[int] = set()

    def fail(what: str) -> NoReturn:
        pytest.fail(f"{name}: {what}\n{tails(out_path.read_text(), err_path.read_text())}", pytrace=False)

    try:
        url, deadline = "", time.monotonic() + SERVER_START_S
        while not url:
            if proc.poll() is not None:
                fail(f"it exited with {proc.returncode} before it answered")
            if time.monotonic() > deadline:
                fail(f"it did not answer within {SERVER_START_S} s")
            if server.url_on_stdout:
                url = next((u for u in out_path.read_text().split() if u.startswith("http")), "")
            else:
                with contextlib.suppress(urllib.error.URLError, OSError):
                    if _get(f"http://127.0.0.1:{port}/") == 200:
                        url = f"http://127.0.0.1:{port}/"
            time.sleep(0.5)
        if not re.match(server.url_pattern, url):
            fail(f"its URL {url} does not match {server.url_pattern}")
        try:
            status = _get(url)
        except (urllib.error.URLError, OSError) as e:
            fail(f"GET {url}: {e}")
        if status != 200:
            fail(f"GET {url}: HTTP {status}")
        tree = descendants(proc.pid)
        sockets = listening(tree)
        if not sockets or not {addr for addr, _ in sockets} <= LOOPBACK:
            fail(f"it listens beyond 127.0.0.1 (or not at all): {sockets}")
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the foreground process group
        try:
            code = proc.wait(timeout=server.stop_s)
        except subprocess.TimeoutExpired:
            fail(f"still running {server.stop_s:g} s after Ctrl-C")
        time.sleep(1)
        if server.exit_code is not None and code != server.exit_code:
            fail(f"exited with {code} after Ctrl-C, not {server.exit_code}")
        left = sorted(p for p in tree if _alive(p))
        if left:
            fail(f"processes left running after it stopped: {left}")
        if _listeners(port):
            fail(f"something still listens on port {port}: {_listeners(port)}")
    finally:
        stop_group(proc.pid)
        for pid in tree:
            if pid != proc.pid and _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


# ------------------------------------------------------------------------------- blocks not run as written


def check_make_block(block: Block, folder: Path, env: dict[str, str], logs: Path) -> None:
    """`make quickstart` / `make test` would run the suite inside the suite: the targets must exist, `make test`
    must run pytest, and `make quickstart` must run the main job the paragraph after the block describes."""
    targets = [c.words[1] for c in block.commands]
    dry = subprocess.run(["make", "-n", "-C", str(ROOT), *targets], capture_output=True, text=True)
    assert dry.returncode == 0, f"{block.name}: `make -n {' '.join(targets)}` fails:\n{dry.stderr}"
    if "test" in targets:
        tests = subprocess.run(["make", "-n", "-C", str(ROOT), "test"], capture_output=True, text=True).stdout
        assert "pytest" in tests, f"{block.name}: `make test` does not run pytest:\n{tests}"
    if "quickstart" not in targets:
        return
    made = subprocess.run(["make", "-n", "-C", str(ROOT), "quickstart"], capture_output=True, text=True).stdout
    job = [re.sub(r"^\S*/bin/(?=sweeplab )", "", line.strip()) for line in made.splitlines()]
    paragraph = block.after.strip().split("\n\n")[0]  # the one that describes the main job
    prose = " ".join(paragraph.split())
    spans = [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", paragraph)]
    for span in spans:
        if span.startswith("sweeplab "):
            assert span in job, f"{block.name}: the README says the main job runs `{span}`; make -n quickstart:\n{made}"
        elif re.fullmatch(r"sweeps/\S+\.yaml", span):
            runs = [j for j in job if j.startswith(f"sweeplab run {span}")]
            assert runs, f"{block.name}: the main job does not run {span}:\n{made}"
            if "smoke mode" in prose:
                assert all("--smoke" in j.split() for j in runs), f"{block.name}: {span} not in smoke mode:\n{made}"
    if "one epoch" in prose:
        trains = [j for j in job if j.startswith("sweeplab train ")]
        assert any("train.epochs=1" in j.split() and "data.train_subset" not in j for j in trains), (
            f"{block.name}: the README says the main job trains one epoch on the full data; make -n quickstart:\n{made}"
        )


def check_cluster_block(block: Block, folder: Path, env: dict[str, str], logs: Path) -> None:
    """The cluster block needs a cloud account: its sweeplab commands must parse, the files it names exist."""
    from sweeplab.cli import parser

    inner: list[tuple[Command, list[str]]] = []
    for c in block.commands:
        words = c.words
        assert words[:1] == ["ray"], f"{block.name}: line {c.line} is not a `ray` command: {c.text}"
        if words[1] in ("up", "down", "exec"):
            path = ROOT / words[2]
            assert path.is_file(), f"{block.name}: line {c.line}: no {words[2]} in the repository"
            assert isinstance(yaml.safe_load(path.read_text()), dict), f"{words[2]} is not a YAML mapping"
        if "--" in words:
            inner.append((c, words[words.index("--") + 1 :]))
        elif words[1] == "exec":
            inner.append((c, shlex.split(words[3])))
    sweeplab = [(c, w) for c, w in inner if w[:1] == ["sweeplab"]]
    assert sweeplab, f"{block.name}: no sweeplab command found inside its ray commands"
    for c, w in sweeplab:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                parser().parse_args(w[1:])
            except SystemExit as e:
                pytest.fail(
                    f"{block.name}: line {c.line}: `{shlex.join(w)}` does not parse ({e.code}): {err.getvalue()}"
                )
        for arg in w:
            if re.fullmatch(r"(sweeps|configs)/\S+\.yaml", arg):
                assert (ROOT / arg).is_file(), f"{block.name}: line {c.line}: no {arg} in the repository"


NOT_RUN: dict[str, Callable[[Block, Path, dict[str, str], Path], None]] = {
    "make": check_make_block,  # the suite inside the suite would recurse
    "ray": check_cluster_block,  # a Ray cluster on a cloud account
}


# ---------------------------------------------------------------------------------------------- the test


def _promises(text: str, python: bool) -> list[Promise]:
    return [p for p in PROMISES if p.python == python and re.search(p.pattern, text)]


def run_python(block: Block, folder: Path, env: dict[str, str], scripts: Path, tour: dict[str, int]) -> None:
    promises = _promises(block.text, python=True)
    probes = "".join(p.probe for p in promises)
    script = scripts / f"block{block.index}.py"
    script.write_text(f"{block.text}\n\n# --- the test's probe, not in the README ---\nprint({PROBE_MARK!r})\n{probes}")
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=folder,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=COMMAND_S)
    except subprocess.TimeoutExpired:
        stop_group(proc.pid)
        out, err = proc.communicate()
        pytest.fail(f"{block.name}: ran past {COMMAND_S} s; stopped\n{tails(out, err)}", pytrace=False)
    finally:
        stop_group(proc.pid)
    shown, _, _ = out.partition(PROBE_MARK)
    if proc.returncode != 0:
        what = "a promise does not hold (the probe failed)" if PROBE_MARK in out else f"it exited {proc.returncode}"
        pytest.fail(f"{block.name}: {what}\n{block.text}\n{tails(out, err)}", pytrace=False)
    for p in promises:
        p.hits += 1
        p.check(Ran(block, block.text.strip(), shown, err, folder, env, tour))


def lap(times: list[tuple[float, str]], start: float, what: str) -> None:
    """How long each command took, printed as it ends (pytest shows it with a failure, or with -rP)."""
    times.append((time.monotonic() - start, what))
    print(f"{times[-1][0]:7.1f} s  {what}", flush=True)


def run_shell(block: Block, folder: Path, env: dict[str, str], logs: Path, tour: dict[str, int], times: list) -> None:
    shell = Shell(folder, env)
    try:
        for c in block.commands:
            start = time.monotonic()
            server = server_of(c)
            if server is not None:
                run_server(block, c, server, folder, env, logs)
                lap(times, start, c.code)
                continue
            rc, out, err = shell.run(c)
            lap(times, start, c.code)
            ran = Ran(block, c.text, out, err, folder, env, tour)
            if rc != 0:
                ran.fail(f"README line {c.line}: exited {rc}")
            for p in _promises(c.code, python=False):
                p.hits += 1
                p.check(ran)
    finally:
        rc = shell.close()
    assert rc == 0, f"{block.name}: its shell exited {rc} after its last command"


@pytest.mark.slow
def test_readme_runs_as_written(tmp_path: Path) -> None:
    """Every block of README.md, in order, in a fresh folder (see the module's docstring for what runs and what
    is checked; the set-up block, the cluster block and the servers are handled as it says)."""
    env = user_env()
    assert (Path(sys.executable).absolute().parent / "sweeplab").exists(), f"no sweeplab next to {sys.executable}"
    folder, scripts, logs = tmp_path / "newuser", tmp_path / "scripts", tmp_path / "logs"
    for d in (folder, scripts, logs):
        d.mkdir()
    for name in LINKED:
        (folder / name).symlink_to(ROOT / name, target_is_directory=True)
    for p in PROMISES:
        p.hits = 0
    blocks = readme_blocks(README.read_text())
    assert blocks, "README.md has no fenced blocks"
    tour: dict[str, int] = {}
    times: list[tuple[float, str]] = []
    for block in blocks:
        start = time.monotonic()
        firsts = {c.words[0] for c in block.commands if c.words} if block.lang == "" else set()
        if len(firsts) == 1 and next(iter(firsts)) in NOT_RUN:
            NOT_RUN[next(iter(firsts))](block, folder, env, logs)
            lap(times, start, f"(checked, not run) {block.name}")
        elif block.lang == "":
            run_shell(block, folder, env, logs, tour, times)
        elif block.lang == "python":
            run_python(block, folder, env, scripts, tour)
            lap(times, start, f"(python) {block.name}")
        else:
            pytest.fail(f"{block.name}: the test does not know how to run a ```{block.lang} block")
    unchecked = [p.what for p in PROMISES if not p.hits]
    assert not unchecked, f"no README command matched these promises any more (update PROMISES): {unchecked}"
    print(f"{sum(s for s, _ in times):7.1f} s  in all")
