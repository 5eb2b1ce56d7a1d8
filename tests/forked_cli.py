"""`python -m sweeplab.cli ARGS` run many times for the price of one interpreter start-up.

A case of tests/test_bad_input.py is mostly start-up: Python and sweeplab's imports (~0.2 CPU-s of the
~0.25 a case takes, 427 cases). A `Server` is one Python process that imports `sweeplab.cli` once and
then forks a child per case. The child is what `python -m sweeplab.cli` would be from there on: its own
session, working folder, environment, memory limit, stdin from /dev/null, stdout and stderr to files,
`sweeplab.cli` run afresh as `__main__` (runpy, as `-m` does), and an ordinary interpreter exit (atexit
hooks run, an uncaught exception prints its traceback and exits 1). What start-up itself prints is
checked once: the server's stderr after its imports must be empty (`Server.__init__`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SERVE = r"""
import json, os, resource, runpy, signal, sys, time
import sweeplab.cli  # the imports every case shares, done once

def child(req):
    os.setsid()
    resource.setrlimit(resource.RLIMIT_AS, (req["memory"], req["memory"]))
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", closefd=False)
    sys.argv = ["sweeplab", *req["argv"]]
    del sys.modules["sweeplab.cli"]  # run afresh as __main__, as `-m` does (what it imports stays imported)
    runpy.run_module("sweeplab.cli", run_name="__main__", alter_sys=True)
    sys.exit(0)

def wait(pid, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), False
        time.sleep(0.005)
    os.killpg(pid, signal.SIGKILL)  # the case's own session, which this server started
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), True

print("ready", flush=True)
for line in sys.stdin:
    req = json.loads(line)
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        child(req)  # never returns: the interpreter exits as `python -m sweeplab.cli` would
    code, timed_out = wait(pid, req["timeout"])
    print(json.dumps({"code": code, "timed_out": timed_out}), flush=True)
"""


class Server:
    """One forking server of `sweeplab.cli` (see the module doc); not thread-safe: one per thread."""

    def __init__(self, env: dict[str, str], scratch: Path) -> None:
        self.scratch = scratch
        self.scratch.mkdir(parents=True, exist_ok=True)
        err = scratch / "server.err"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err.open("w"),
            env=env,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline() == "ready\n", err.read_text()
        assert err.read_text() == "", f"importing sweeplab.cli printed on stderr: {err.read_text()}"
        self.n = 0

    def run(self, argv: list[str], cwd: Path, env: dict[str, str], memory: int, timeout: float) -> dict[str, object]:
        """Run one case: its exit code, stdout and stderr (a note appended when it ran past `timeout`)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.n += 1
        out, err = self.scratch / f"{self.n}.out", self.scratch / f"{self.n}.err"
        req = {"argv": argv, "cwd": str(cwd), "env": env, "memory": memory, "timeout": timeout}
        self.proc.stdin.write(json.dumps({**req, "stdout": str(out), "stderr": str(err)}) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        stderr = err.read_text() + (f"\n(timed out after {timeout} s)" if reply["timed_out"] else "")
        return {"code": reply["code"], "stdout": out.read_text(), "stderr": stderr}

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
