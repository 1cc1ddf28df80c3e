"""A run killed with SIGKILL mid-run is resumed by ``fedveil resume`` without losing anything."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from common.weights import load_safetensors
from deployment.processes import process_tree, start_time
from deployment.supervisor import stop_tree
from tests.conftest import REPO
from tests.integration.cli import FEDVEIL, fedveil, simulate_args
from tests.integration.run_files import metrics_rows, privacy

pytestmark = pytest.mark.slow


def _kill_own_tree(leader: int, start: int) -> None:
    """SIGKILL the process ``(leader, start)`` and every process it started, and nothing else.

    Ray's daemons leave the process group, so the tree is walked by parent pid while the
    driver lives; each member is frozen (SIGSTOP: it can start nothing more) until a walk finds
    no one new, then every frozen member, checked by start time, gets SIGKILL.
    """
    frozen: dict[int, int] = {}
    while new := [m for m in process_tree(leader, start) if frozen.get(m[0]) != m[1]]:
        for pid, pid_start in new:
            if start_time(pid) == pid_start:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            frozen[pid] = pid_start
    stop_tree(list(frozen.items()), sig=signal.SIGKILL, grace=0, popen=None)


def _rounds_done(run: Path) -> int:
    path = run / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_sigkilled_run_resumes_with_continuous_privacy_history(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [*FEDVEIL, *simulate_args(run, "num-server-rounds=5", "sim.clients=3")],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    start = start_time(proc.pid)
    assert start is not None
    try:
        deadline = time.monotonic() + 300
        while _rounds_done(run) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be interrupted"
    finally:
        _kill_own_tree(proc.pid, start)
        proc.wait(timeout=30)
    interrupted_at = _rounds_done(run)
    assert 2 <= interrupted_at < 5

    done = fedveil("resume", str(run), timeout=600)

    assert done.returncode == 0, done.stderr[-3000:]
    rows = metrics_rows(run)
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5]
    ledger = privacy(run)
    for cid, client in ledger["clients"].items():
        assert client["rounds"] == [1, 2, 3, 4, 5], cid  # none lost, none twice
        own = privacy(run / "client-state" / f"partition-{cid}")
        assert own["rounds"] == client["rounds"]  # the client never restarted from zero
        assert own["history"] == client["history"]
        assert client["epsilon"] <= client["budget"]
    config = json.loads((run / "config.json").read_text())
    assert config["run-tag"] == "run"
    state = load_safetensors(
        run / "model.safetensors",
        {"fc1.weight": (64, 64), "fc1.bias": (64,), "fc2.weight": (10, 64), "fc2.bias": (10,)},
    )
    assert set(state) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}


def test_resume_of_a_directory_without_checkpoint_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    done = fedveil("resume", str(tmp_path), timeout=120)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "checkpoint" in done.stderr
