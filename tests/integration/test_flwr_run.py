"""``flwr run .`` against a SuperLink of our own: the run ends with the same report as a simulation.

The test starts ``flower-superlink --simulation`` on a free 127.0.0.1 port with its own
``FLWR_HOME`` (runtime dependency installation off), runs the checkout's app with
``flwr run . <connection> --stream`` on 3 simulated SuperNodes for 2 rounds, and checks the run
directory, the run's status, the app bundle the SuperLink installed and that ``pyproject.toml``
was left as it was. Everything it started is stopped by pid (and start time).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from server.run_contract import check_run_contract
from tests.conftest import REPO

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
CONNECTION = "fedveil-test"


@dataclass(frozen=True)
class SuperLink:
    """A running ``flower-superlink --simulation`` and the environment that talks to it."""

    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    home: Path
    log: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks (``/proc/PID/stat`` field 22), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def descendants(root: int) -> dict[int, int | None]:
    """Every live descendant of ``root``: pid -> start time."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found: dict[int, int | None] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found[pid] = start_time(pid)
        todo += children.get(pid, [])
    return found


def stop(link: SuperLink) -> None:
    """SIGTERM the SuperLink; SIGKILL whatever it started that outlives it (same pid + start)."""
    tree = descendants(link.proc.pid)
    if link.proc.poll() is None:
        link.proc.send_signal(signal.SIGTERM)
        try:
            link.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            link.proc.kill()
            link.proc.wait(timeout=5)
    deadline = time.monotonic() + 10
    while (alive := [p for p, t in tree.items() if t is not None and start_time(p) == t]) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.2)
    for pid in alive:
        if start_time(pid) == tree[pid]:
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def superlink(tmp_path: Path) -> Iterator[SuperLink]:
    home = tmp_path / "flwr-home"
    home.mkdir()
    port = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    log = tmp_path / "superlink.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(BIN / "flower-superlink"),
                "--insecure",
                "--simulation",
                "--disable-runtime-dependency-installation",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    link = SuperLink(proc, env, home, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"the SuperLink exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "the SuperLink did not open its port in 60 s"
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        yield link
    finally:
        stop(link)


def flwr(link: SuperLink, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "flwr"), *args],
        cwd=REPO,
        env=link.env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_flwr_run_writes_the_report_and_keeps_the_contract(
    superlink: SuperLink, tmp_path: Path
) -> None:
    out = tmp_path / "runs"
    pyproject = (REPO / "pyproject.toml").read_bytes()
    run_config = f"num-server-rounds=2 local-epochs=1 out-dir='{out}' faults.tamper=0.1"

    run = flwr(
        superlink,
        "run",
        ".",
        CONNECTION,
        "--stream",
        "--federation-config",
        "num-supernodes=3 client-resources-num-cpus=1",
        "--run-config",
        run_config,
        timeout=240,
    )

    logs = run.stdout + run.stderr
    assert run.returncode == 0, logs[-3000:]
    listed = flwr(superlink, "ls", CONNECTION, "--format", "json", timeout=60)
    (status,) = [r["status"] for r in json.loads(listed.stdout)["runs"]]
    assert status == "finished:completed", logs[-3000:]
    (run_dir,) = out.iterdir()
    assert (run_dir / "report.html").is_file()
    assert (run_dir / "report.md").is_file()
    assert check_run_contract(run_dir).startswith("contract holds: 2 rounds, 3 clients")
    # Faults act only in `fedveil simulate`: the ServerApp says so, once.
    assert logs.count("faults.tamper set, but attacks and faults act only") == 1
    (installed,) = (superlink.home / "apps").iterdir()
    assert (installed / "server" / "app.py").is_file()
    assert not (installed / "tests").exists()
    assert (REPO / "pyproject.toml").read_bytes() == pyproject
