"""The record of a launch's processes (runner/cluster.py): what `reap` stops after a killed driver, and
what `remember` does when the disk is full. Real processes (`sleep`), no Ray."""

from __future__ import annotations

import errno
import json
import socket
import subprocess
from pathlib import Path

import pytest

from sweeplab.runner import cluster


def start_time(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[19]


def running(pid: int) -> bool:
    """Alive and not a zombie (a killed child stays one until its parent, or init, reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_reap_stops_the_recorded_processes_and_what_they_started_and_waits_until_they_are_gone(tmp_path):
    # a recorded process with a child it started later (as Ray starts workers after the record was written)
    parent = subprocess.Popen(["bash", "-c", "sleep 60 & wait"], start_new_session=True)
    try:
        for _ in range(100):
            if cluster.descendants(parent.pid):
                break
            subprocess.run(["sleep", "0.02"])
        (child,) = cluster.descendants(parent.pid)
        record = tmp_path / cluster.PROCESSES
        record.write_text(
            json.dumps({"host": socket.gethostname(), "processes": [[parent.pid, start_time(parent.pid)]]})
        )
        assert cluster.reap(record) == 2
        assert not running(child[0])  # gone when reap returns, not merely signalled
        assert parent.wait(timeout=5) == -9 and not record.exists()
    finally:
        if parent.poll() is None:
            parent.kill()


def test_reap_leaves_a_process_that_only_reuses_a_recorded_pid(tmp_path):
    other = subprocess.Popen(["sleep", "60"])
    try:
        record = tmp_path / cluster.PROCESSES
        record.write_text(json.dumps({"host": socket.gethostname(), "processes": [[other.pid, "1"]]}))
        assert cluster.reap(record) == 0 and other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_remember_on_a_full_disk_keeps_the_last_record_and_raises_nothing(tmp_path, monkeypatch):
    record = tmp_path / cluster.PROCESSES
    record.write_text('{"host": "h", "processes": []}')

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    cluster.remember(record)  # called from Tune's loop: an exception there would end the sweep with a traceback
    monkeypatch.undo()
    assert record.read_text() == '{"host": "h", "processes": []}'
    assert sorted(p.name for p in tmp_path.iterdir()) == [cluster.PROCESSES]


@pytest.mark.parametrize("content", ["", "[]", '{"host": 1}', "not json"])
def test_reap_of_a_damaged_record_stops_nothing(tmp_path, content):
    record = tmp_path / cluster.PROCESSES
    record.write_text(content)
    assert cluster.reap(record) == 0
