"""``deployment.supervisor``: start, record and stop our processes, and only ours."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from deployment.processes import process_tree, start_time
from deployment.supervisor import ProcessTable, stop_order, stop_tree


def _spawn_tree() -> subprocess.Popen[bytes]:
    """A session leader with a child and a grandchild (all sleeping)."""
    return subprocess.Popen(
        ["/bin/sh", "-c", "sh -c 'sleep 60 & wait' & sleep 60 & wait"],
        start_new_session=True,
    )


def _until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_stop_order_puts_the_serverapp_before_the_nodes() -> None:
    names = ["superlink", "supernode-0", "supernode-1", "flwr-run"]

    assert stop_order(names) == ["flwr-run", "superlink", "supernode-0", "supernode-1"]


def test_process_tree_and_stop_tree_stop_every_descendant() -> None:
    proc = _spawn_tree()
    try:
        start = start_time(proc.pid)
        assert start is not None
        _until(lambda: len(process_tree(proc.pid, start)) >= 4)
        tree = process_tree(proc.pid, start)

        stop_tree(tree, sig=signal.SIGTERM, grace=5.0, popen=proc)

        assert all(start_time(pid) != s for pid, s in tree)
        assert proc.poll() is not None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_pid_with_another_start_time_is_never_signalled(tmp_path: Path) -> None:
    me = os.getpid()
    record = tmp_path / "pids.json"
    record.write_text(json.dumps([{"name": "superlink", "pid": me, "start": 1}]))

    assert ProcessTable.reap_stale(record) == []  # this test process survives

    assert process_tree(me, 1) == []
    assert not record.exists()


def test_reap_stale_stops_a_recorded_tree(tmp_path: Path) -> None:
    proc = _spawn_tree()
    try:
        start = start_time(proc.pid)
        _until(lambda: len(process_tree(proc.pid, start or 0)) >= 4)
        record = tmp_path / "pids.json"
        record.write_text(json.dumps([{"name": "supernode-0", "pid": proc.pid, "start": start}]))

        assert ProcessTable.reap_stale(record) == ["supernode-0"]

        _until(lambda: proc.poll() is not None)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_process_table_records_and_stops_its_processes(tmp_path: Path) -> None:
    table = ProcessTable(tmp_path / "pids.json", tmp_path)
    managed = table.start("sleeper", ["/bin/sleep", "60"], dict(os.environ), tmp_path / "s.log")

    doc = json.loads((tmp_path / "pids.json").read_text())
    assert doc == [{"name": "sleeper", "pid": managed.pid, "start": managed.start}]
    assert managed.alive()

    table.stop_all(grace=5.0)

    assert not managed.alive()
    assert not (tmp_path / "pids.json").exists()
    assert "--- fedveil: /bin/sleep 60" in (tmp_path / "s.log").read_text()
