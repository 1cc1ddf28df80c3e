"""Real Flower deployments on 127.0.0.1: a SuperLink and SuperNodes as separate processes.

Each test runs ``fedveil federation up`` as a subprocess with its work directory under
``tmp_path``; whatever is left running at the end (the orchestrator, the processes it recorded
in ``pids.json``, a rogue SuperNode) is stopped by pid and start time, never by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from common.crypto.certificates import create_node_key
from common.weights import load_safetensors
from deployment.layout import free_ports
from deployment.processes import cmdline, process_tree, start_time
from deployment.supervisor import ProcessTable, stop_tree
from tests.conftest import REPO

pytestmark = pytest.mark.slow

T = TypeVar("T")
BIN = Path(sys.executable).parent
MLP_SHAPES = {"fc1.weight": (64, 64), "fc1.bias": (64,), "fc2.weight": (10, 64), "fc2.bias": (10,)}


class UpCommand:
    """One ``fedveil federation up`` subprocess and the files it writes."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.run = tmp / "run"
        self.keep = tmp / "keep"
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        out = (self.tmp / "up.out").open("ab")
        err = (self.tmp / "up.err").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "simulations.cli", "federation", "up", *args],
            cwd=REPO,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        return self.proc

    def up(self, *args: str) -> subprocess.Popen[bytes]:
        return self.start("--out", str(self.run), "--keep-dir", str(self.keep), *args)

    def up_sealed(self, *, nodes: int, rounds: int, round_timeout: int) -> None:
        """Start ``up`` with TLS, node authentication and the ``quick`` config."""
        self.up(
            "--nodes",
            str(nodes),
            "--rounds",
            str(rounds),
            "--tls",
            "--auth",
            "--config",
            "quick",
            "--set",
            f"round-timeout={round_timeout}",
        )

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    @property
    def stderr(self) -> str:
        return (self.tmp / "up.err").read_text(errors="replace")

    @property
    def stdout(self) -> str:
        return (self.tmp / "up.out").read_text(errors="replace")

    def rows(self) -> list[dict[str, Any]]:
        path = self.run / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def pids(self) -> dict[str, tuple[int, int]]:
        try:
            doc = json.loads((self.keep / "pids.json").read_text())
        except (OSError, ValueError):
            return {}
        return {e["name"]: (int(e["pid"]), int(e["start"])) for e in doc}

    def deployment(self) -> dict[str, Any]:
        doc = json.loads((self.run / "deployment.json").read_text())
        assert isinstance(doc, dict)
        return doc

    def until(self, what: str, check: Callable[[], T | None], timeout: float) -> T:
        """Poll ``check`` until it returns something true; return that."""
        deadline = time.monotonic() + timeout
        while True:
            found = check()
            if found:
                return found
            assert self.proc is None or self.proc.poll() is None, (
                f"the federation ended while waiting for {what}: {self.stderr[-3000:]}"
            )
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.2)

    def kill_tree(self, name: str) -> None:
        """SIGKILL a recorded process and its tree, as a crash of its host would."""
        stop_tree(process_tree(*self.pids()[name]), sig=signal.SIGKILL, grace=0, popen=None)

    def cleanup(self) -> None:
        for proc in [*self.extra, *([self.proc] if self.proc else [])]:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # helpers left in the group, if any
            proc.wait()
        ProcessTable.reap_stale(self.keep / "pids.json")


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[UpCommand]:
    fed = UpCommand(tmp_path)
    try:
        yield fed
    finally:
        fed.cleanup()


def _contract(run: Path) -> None:
    """The run directory keeps every promise of the run-directory contract (`fedveil check`)."""
    from server.run_contract import check_run_contract

    assert check_run_contract(run).startswith("contract holds:")


def _client_state(run: Path, partition: int) -> dict[str, Any]:
    doc = json.loads((run / "client-state" / f"partition-{partition}" / "privacy.json").read_text())
    assert isinstance(doc, dict)
    return doc


def _client_states(run: Path, nodes: int) -> list[dict[str, Any]]:
    return [_client_state(run, i) for i in range(nodes)]


def _no_process_left(fed: UpCommand, recorded: dict[str, tuple[int, int]]) -> None:
    assert not (fed.keep / "pids.json").exists()
    for name, (pid, start) in recorded.items():
        assert start_time(pid) != start, f"{name} (pid {pid}) still runs"


def test_tls_auth_three_nodes_two_sealed_rounds_and_an_unregistered_node_is_refused(
    federation: UpCommand,
) -> None:
    pyproject = (REPO / "pyproject.toml").read_bytes()
    federation.up_sealed(nodes=3, rounds=2, round_timeout=180)
    federation.until("the ServerApp to start", (federation.run / "config.json").exists, 300)
    recorded = federation.pids()
    fleet = str(federation.deployment()["superlink"]["fleet"])

    rogue = federation.tmp / "rogue"
    create_node_key(rogue)
    (rogue / "home").mkdir()
    port = free_ports(1)[0]
    proc = subprocess.Popen(
        [
            str(BIN / "flower-supernode"),
            "--superlink",
            fleet,
            "--root-certificates",
            str(federation.keep / "tls" / "ca.pem"),
            "--auth-supernode-private-key",
            str(rogue / "node.key"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--node-config",
            "partition-id=0 num-partitions=3",
        ],
        env={
            **os.environ,
            "FLWR_HOME": str(rogue / "home"),
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
        },
        stdout=(rogue / "supernode.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    federation.extra.append(proc)
    rogue_start = start_time(proc.pid) or 0
    # Refused by the SuperLink, it exits by itself with a failure status (not by a signal).
    assert proc.wait(timeout=120) > 0
    # Its SuperExec helper may outlive it, still in its process group.
    stop_tree(process_tree(proc.pid, rogue_start), sig=signal.SIGKILL, grace=0, popen=None)

    assert federation.wait(timeout=900) == 0, federation.stderr[-3000:]
    run = federation.run
    assert federation.stdout.strip().splitlines()[-1] == str(run)
    _contract(run)
    rows = federation.rows()
    assert [r["round"] for r in rows] == [1, 2]
    node_ids = {int(v) for v in federation.deployment()["node_ids"].values()}
    assert len(node_ids) == 3
    for row in rows:
        assert row["bytes_sealed"] > 0
        assert row["bytes_down"] > 0  # signed model changes, checked by nodes that pin the key
        assert set(row["clients"]) == node_ids
        assert row["rejected"] == []
    ledger = json.loads((run / "privacy.json").read_text())
    # Accounts are keyed by the node's authenticated id; the declared partition is its label.
    assert set(ledger["clients"]) == {str(node) for node in node_ids}
    assert sorted(c["label"] for c in ledger["clients"].values()) == ["0", "1", "2"]
    for cid, client in ledger["clients"].items():
        assert client["rounds"] == [1, 2], cid
        own = _client_states(run, 3)[int(client["label"])]
        assert own["rounds"] == [1, 2] and own["history"] == client["history"]
    deployment = federation.deployment()
    assert deployment["tls"] is True and deployment["auth"] is True
    assert deployment["signing_fingerprint"].startswith("sha256:")
    assert deployment["flower_runs"][-1]["status"] == "finished:completed"
    staged = sorted(p.name for p in (federation.keep / "app").iterdir())
    assert staged == ["client", "common", "pyproject.toml", "report", "server"]
    assert (REPO / "pyproject.toml").read_bytes() == pyproject
    footprint = json.loads((federation.keep / "logs" / "footprint.json").read_text())
    assert footprint["clientapp"]["messages"] >= 6  # a plan query and 2 rounds on 3 nodes
    _no_process_left(federation, recorded)


def test_server_killed_after_round_two_resumes_with_continuous_privacy(
    federation: UpCommand,
) -> None:
    federation.up_sealed(nodes=2, rounds=4, round_timeout=180)
    federation.until("round 2", lambda: len(federation.rows()) >= 2, 600)
    federation.kill_tree("superlink")  # the server host dies: SuperLink, SuperExec, ServerApp
    assert federation.wait(timeout=120) == 1
    assert "--resume" in federation.stderr
    interrupted_at = len(federation.rows())
    assert 2 <= interrupted_at < 4
    before = _client_states(federation.run, 2)

    federation.start("--resume", str(federation.run))
    assert federation.wait(timeout=900) == 0, federation.stderr[-3000:]

    run = federation.run
    _contract(run)
    assert [r["round"] for r in federation.rows()] == [1, 2, 3, 4]
    ledger = json.loads((run / "privacy.json").read_text())
    assert sorted(c["label"] for c in ledger["clients"].values()) == ["0", "1"]
    for cid, client in ledger["clients"].items():
        assert client["rounds"] == [1, 2, 3, 4], cid  # none lost, none twice
        own = _client_states(run, 2)[int(client["label"])]
        assert own["rounds"] == client["rounds"]  # the client never restarted from zero
        assert own["history"] == client["history"]
        old = before[int(client["label"])]
        assert own["history"][: len(old["history"])] == old["history"]
        assert client["epsilon"] <= client["budget"]
    runs = federation.deployment()["flower_runs"]
    assert len(runs) == 2 and runs[-1]["status"] == "finished:completed"
    state = load_safetensors(run / "model.safetensors", MLP_SHAPES)
    assert set(state) == set(MLP_SHAPES)
    assert not (federation.keep / "pids.json").exists()


def _round_unanswered(federation: UpCommand, partition: int) -> int | None:
    """Return the round in progress if the node of ``partition`` has not answered it yet.

    The server starts a round only after it recorded the one before, and a client charges a
    round to its own ledger before replying: a node killed now is sent this round (it was
    online when sampled) and never replies to it.
    """
    in_progress = len(federation.rows()) + 1
    charged = _client_state(federation.run, partition)["rounds"]
    if in_progress in charged or not _handling_a_message(federation, partition):
        return None
    return in_progress


def _handling_a_message(federation: UpCommand, partition: int) -> bool:
    """Whether the SuperNode has pulled a message: a ClientApp runs in its own process tree.

    Without it the node may not have fetched the round yet, and a restarted node would then
    answer the round after all.
    """
    tree = process_tree(*federation.pids()[f"supernode-{partition}"])
    return any("flwr-clientapp" in cmdline(pid) for pid, _ in tree)


def test_supernode_killed_mid_round_is_restarted_and_its_epsilon_continues(
    federation: UpCommand,
) -> None:
    federation.up_sealed(nodes=3, rounds=5, round_timeout=120)
    federation.until("round 1", lambda: len(federation.rows()) >= 1, 600)
    killed_in = federation.until(
        "a round node 2 has not answered", lambda: _round_unanswered(federation, 2), 300
    )
    old_pid = federation.pids()["supernode-2"]
    federation.kill_tree("supernode-2")
    before = _client_states(federation.run, 3)[2]
    federation.until("node 2 restarted", lambda: federation.pids()["supernode-2"] != old_pid, 60)

    assert federation.wait(timeout=1200) == 0, federation.stderr[-3000:]
    said = " ".join(federation.stderr.split())  # rich wraps lines
    assert "SuperNode 2 exited (killed by signal 9); restarting it with the same key" in said
    run = federation.run
    _contract(run)
    rows = federation.rows()
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5]
    node2 = int(federation.deployment()["node_ids"]["2"])  # the same id after the restart
    lost = rows[killed_in - 1]
    assert {"node": node2, "reason": "no-reply"} in [
        {"node": r["node"], "reason": r["reason"]} for r in lost["rejected"]
    ]
    assert len(lost["clients"]) == 2  # the round went on without it
    back = [r["round"] for r in rows[killed_in:] if node2 in r["clients"]]
    assert back  # and it came back (once Flower let its node id in again, <= 2 heartbeats)
    own = _client_states(run, 3)[2]
    assert own["rounds"][: len(before["rounds"])] == before["rounds"]  # continued, not reset
    assert own["history"][: len(before["history"])] == before["history"]
    assert own["rounds"] == sorted(set(own["rounds"])) and set(back) <= set(own["rounds"])
    ledger = json.loads((run / "privacy.json").read_text())["clients"][str(node2)]
    assert set(ledger["rounds"]) <= set(own["rounds"])  # the server never over-counts...
    assert killed_in not in ledger["rounds"]  # ...and heard nothing from the lost round
