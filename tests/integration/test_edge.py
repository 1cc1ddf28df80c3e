"""fedveil as an edge deployment: the documented recipe, run as it is written.

Three SuperNodes run from a virtual environment holding only the client install (built once per
session, ``tests.integration.client_venv``), each in its own folder with its own CSV file, no
fedveil checkout on their path; a SuperLink with TLS and SuperNode authentication; two sealed
DP-SGD rounds of the example tabular task. The commands are the edge recipe's block in
docs/deployment.md, run by bash in a fresh project folder holding a copy of the task's package.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.accounting import sample_rate
from deployment.layout import Layout
from deployment.supervisor import ProcessTable
from server.run_contract import check_run_contract
from tests.conftest import REPO
from tests.integration.client_venv import (
    SERVER_ONLY,
    TORCH,
    build_client_venv,
    clean_env,
    installed,
)

pytestmark = pytest.mark.slow

DOC = REPO / "docs" / "deployment.md"
MARKER = "<!-- edge-recipe: the test runs this block as it is -->"
RUN = Path("runs/edge-demo")
NODES = 3


def documented_recipe() -> str:
    """Return the shell block that follows the edge-recipe marker in docs/deployment.md."""
    text = DOC.read_text()
    found = re.search(re.escape(MARKER) + r"\s*```sh\n(.*?)```", text, re.DOTALL)
    assert found, f"{DOC} lost its edge recipe (the block after {MARKER})"
    return found.group(1)


@pytest.fixture(scope="session")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The client-only environment, built once per test session."""
    venv = build_client_venv(tmp_path_factory.mktemp("client-venv"))
    assert not installed(venv) & SERVER_ONLY
    assert {"flwr", "opacus", "torch", "fedveil"} <= installed(venv)
    return venv


@pytest.fixture
def project(tmp_path: Path, client_venv: Path) -> Iterator[Path]:
    """A user's folder: the task's package and the edge venv, nothing else of the checkout."""
    folder = tmp_path / "project"
    shutil.copytree(
        REPO / "examples", folder / "examples", ignore=shutil.ignore_patterns("__pycache__", "data")
    )
    (folder / "edge-venv").symlink_to(client_venv)
    try:
        yield folder
    finally:
        ProcessTable.reap_stale(folder / RUN / "deployment" / "pids.json")


def _node_processes(work: Layout) -> dict[int, int]:
    """Return SuperNode index -> pid from ``pids.json`` once all of them are recorded."""
    try:
        doc = json.loads(work.pids.read_text())
    except (OSError, ValueError):
        return {}
    nodes = {int(e["name"].split("-")[1]): int(e["pid"]) for e in doc if "supernode" in e["name"]}
    return nodes if len(nodes) == NODES else {}


def _what_a_node_runs(pid: int) -> tuple[str, Path, dict[str, str]]:
    """Return a live process's command line, working directory and environment."""
    proc = Path(f"/proc/{pid}")
    command = proc.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode()
    environ = dict(
        entry.split("=", 1)
        for entry in proc.joinpath("environ").read_bytes().decode().split("\0")
        if "=" in entry
    )
    return command, proc.joinpath("cwd").resolve(), environ


def _rows(path: Path) -> int:
    return len(path.read_text().splitlines()) - 1  # the header


def test_the_edge_recipe_runs_three_client_only_nodes_on_their_own_data(
    project: Path, client_venv: Path
) -> None:
    install = DOC.read_text()
    assert (
        f"edge-venv/bin/pip install {TORCH} --index-url https://download.pytorch.org/whl/cpu"
        in (install)
    )
    assert "edge-venv/bin/pip install .\n" in install
    env = clean_env()
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", HF_HUB_OFFLINE="1")
    out, err = project / "recipe.out", project / "recipe.err"
    started = time.monotonic()
    with out.open("wb") as stdout, err.open("wb") as stderr:
        shell = subprocess.Popen(
            ["/bin/bash", "-euo", "pipefail", "-c", documented_recipe()],
            cwd=project,
            env=env,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        work = Layout(project / RUN / "deployment")
        deadline = time.monotonic() + 600
        while not (nodes := _node_processes(work)):
            assert shell.poll() is None, err.read_text()[-3000:]
            assert time.monotonic() < deadline, "the SuperNodes never started"
            time.sleep(0.5)
        for index, pid in nodes.items():
            command, cwd, node_env = _what_a_node_runs(pid)
            assert command.split()[0].startswith(str(client_venv.resolve())), command
            assert cwd == work.node(index).resolve()  # its own folder, no checkout in it
            assert "PYTHONPATH" not in node_env
            assert node_env["PATH"].split(os.pathsep)[0] == str(client_venv.resolve() / "bin")
        assert shell.wait(timeout=900) == 0, err.read_text()[-3000:]
    finally:
        if shell.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(shell.pid, signal.SIGTERM)
            shell.wait(timeout=60)
    print(f"edge recipe: {time.monotonic() - started:.0f} s")

    run = project / RUN
    assert out.read_text().strip().splitlines()[-1].startswith("contract holds:")
    assert check_run_contract(run).startswith("contract holds:")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    for row in rows:
        assert len(row["clients"]) == NODES and row["rejected"] == [] and row["bytes_sealed"] > 0
    ledger: dict[str, Any] = json.loads((run / "privacy.json").read_text())
    # Accounts are keyed by each node's authenticated id; the site it declares is its label.
    assert sorted(c["label"] for c in ledger["clients"].values()) == ["0", "1", "2"]
    for client in ledger["clients"].values():
        site = client["label"]
        assert client["epsilon"] > 0, site
        own = project / f"site-{site}" / f"node-{site}.csv"
        assert list(own.parent.iterdir()) == [own]  # a folder per site, holding its file only
        # Each node trained on its own file: its sampling rate follows that file's size.
        assert {entry[1] for entry in client["history"]} == {sample_rate(_rows(own), 64)}
    deployment = json.loads((run / "deployment.json").read_text())
    assert deployment["tls"] is True and deployment["auth"] is True
    assert deployment["node_env"] == str(client_venv.resolve())
    assert deployment["task_root"] == str(project.resolve())  # a resume ships the same task
    assert deployment["node_data"] == [
        str((project / f"site-{i}" / f"node-{i}.csv").resolve()) for i in range(NODES)
    ]
    shipped = [p for p in work.app.rglob("*") if p.is_file()]
    assert {p.relative_to(work.app).parts[0] for p in shipped} == {
        "client",
        "common",
        "examples",
        "pyproject.toml",
        "report",
        "server",
    }
    assert not [p for p in shipped if p.suffix not in (".py", ".typed", ".toml")]
    footprint = json.loads((work.logs / "footprint.json").read_text())
    assert footprint["clientapp"]["messages"] >= 2 * NODES
    print(f"edge footprint: {json.dumps(footprint['clientapp'])}")
