"""A SuperLink and N SuperNodes on this host, started, supervised and stopped as one.

One ``flower-superlink`` (Fleet API on one free ``127.0.0.1`` port, Control and ServerAppIo
API on another, its own ``FLWR_HOME`` and SQLite state file, so node registrations survive a
restart) and N ``flower-supernode`` processes, each with its own Runtime API port,
``FLWR_HOME``, durable state directory and node config (``partition-id``, ``num-partitions``,
``state-dir``, ``aggregator-fingerprint``, ``aggregator-signing-fingerprint`` when the record has
one, and ``data-path`` when the node has its own data).
SuperNodes run from the record's ``node_env`` (else this environment), in their own folder,
without this process's ``PYTHONPATH`` when ``node_env`` is set. A work directory is held by one
orchestrator at a time (a lock file); taking it first stops what a killed orchestrator left
running.

Supervision: a SuperNode that dies after connecting is restarted with the same key and state
directory, as ``Restart=on-failure`` would, at most ``MAX_NODE_RESTARTS`` times; one that cannot
connect is retried for ``ACTIVATION_PATIENCE`` seconds (Flower 1.39 refuses to activate a node
id it still believes online, up to two heartbeat intervals after a crash). A SuperLink that dies
ends the federation. Teardown stops the ServerApp before the SuperNodes (``stop_order``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

from deployment import commands
from deployment.errors import DeployError, FederationError
from deployment.footprint import FootprintMonitor
from deployment.layout import HOST, Layout, Ports, accepts, state_dir
from deployment.logs import last_line, read_from
from deployment.nodes import node_bin
from deployment.record import DeploymentRecord
from deployment.supervisor import NODE_PREFIX, Managed, ProcessTable

if TYPE_CHECKING:
    from rich.console import Console

log = logging.getLogger(__name__)

MAX_NODE_RESTARTS: Final = 3
RESTART_DELAY: Final = 5.0
ACTIVATION_PATIENCE: Final = 120.0
START_TIMEOUT: Final = 120.0


@dataclass
class NodeWatch:
    """What the orchestrator knows of one SuperNode's health."""

    connected: bool = False
    crashes: int = 0
    failing_since: float | None = None
    restart_at: float | None = None
    gave_up: bool = False


class LocalDeployment:
    """A SuperLink and N SuperNodes on this host, started and stopped as one."""

    def __init__(
        self, layout: Layout, run_dir: Path, record: DeploymentRecord, *, console: Console
    ) -> None:
        self.layout = layout
        self.run_dir = run_dir
        self.record = record
        self.console = console
        self.bin_dir = Path(sys.executable).parent
        self.node_bin = node_bin(record.node_env, self.bin_dir)
        self.table = ProcessTable(layout.pids, layout.root)
        self.ports = Ports.pick(record.nodes)
        self.monitor: FootprintMonitor | None = None
        self.watch: dict[int, NodeWatch] = {}
        self._lock_file: IO[str] | None = None

    # ----------------------------------------------------------------- set up
    def lock(self) -> None:
        """Take the work directory's lock and stop what a killed orchestrator left running."""
        self.layout.root.mkdir(parents=True, exist_ok=True)
        handle = (self.layout.root / "lock").open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise DeployError(
                f"{self.layout.root} is in use by another running federation; wait or stop it"
            ) from None
        self._lock_file = handle
        stale = ProcessTable.reap_stale(self.layout.pids)
        if stale:
            self.console.print(f"stopped leftovers of an earlier federation: {', '.join(stale)}")

    def env(self, home: Path, bin_dir: Path | None = None) -> dict[str, str]:
        """Environment of a Flower process: its own ``FLWR_HOME``, ``bin_dir`` first on PATH.

        A process from another environment (``bin_dir`` given) gets no ``PYTHONPATH``: it
        imports only what that environment and the shipped app hold.
        """
        dropped = {"FLWR_INTERNAL_GRPC_CONTROL_API"}
        if bin_dir is not None and bin_dir != self.bin_dir:
            dropped |= {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}
        env = {k: v for k, v in os.environ.items() if k not in dropped}
        env.update(
            FLWR_HOME=str(home),
            PATH=f"{bin_dir or self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
            FLWR_TELEMETRY_ENABLED="0",
            FLWR_DISABLE_UPDATE_CHECK="1",
            PYTHONUNBUFFERED="1",
        )
        env.setdefault("HF_HUB_OFFLINE", "1")
        return env

    def write_cli_config(self) -> None:
        """Point the ``flwr`` CLI at this SuperLink (its own ``FLWR_HOME``)."""
        self.layout.cli_home.mkdir(parents=True, exist_ok=True)
        ca = self.layout.tls / "ca.pem" if self.record.tls else None
        (self.layout.cli_home / "config.toml").write_text(
            commands.flwr_config_toml(self.ports.control, ca_cert=ca)
        )

    # ----------------------------------------------------------------- processes
    def start_superlink(self) -> None:
        """Start the SuperLink and wait until both its ports accept connections."""
        self.layout.superlink_home.mkdir(parents=True, exist_ok=True)
        command = commands.superlink_command(
            self.bin_dir, self.layout, self.ports, tls=self.record.tls, auth=self.record.auth
        )
        managed = self.table.start(
            "superlink",
            command,
            self.env(self.layout.superlink_home),
            self.layout.logs / "superlink.log",
        )
        deadline = time.monotonic() + START_TIMEOUT
        for port in (self.ports.control, self.ports.fleet):
            while not accepts(port):
                if not managed.alive():
                    raise FederationError(
                        f"the SuperLink exited at start (code {managed.popen.returncode}): "
                        f"{last_line(managed.log_path)} (log: {managed.log_path})"
                    )
                if time.monotonic() > deadline:
                    raise FederationError(f"the SuperLink did not start; see {managed.log_path}")
                time.sleep(0.2)
        self.record.superlink = {
            "control": f"{HOST}:{self.ports.control}",
            "fleet": f"{HOST}:{self.ports.fleet}",
        }

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run the ``flwr`` CLI against this federation's connection."""
        return subprocess.run(  # noqa: S603 (our own command line, no shell)
            [str(self.bin_dir / "flwr"), *args],
            env=self.env(self.layout.cli_home),
            cwd=self.layout.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def register_nodes(self) -> None:
        """Register every SuperNode's public key with ``flwr supernode register``.

        A key the SuperLink's state file knows already (a restart, a kept work directory) is
        refused by Flower as "already in use": that node is registered, nothing to do.
        """
        for index in range(self.record.nodes):
            public = self.layout.node(index) / "node.pub"
            done = self.flwr(
                "supernode", "register", str(public), commands.CONNECTION, "--format", "json"
            )
            doc = commands.json_in(done.stdout) or {}
            if doc.get("success") is True:
                self.record.node_ids[str(index)] = int(doc["node-id"])
            elif "already in use" not in str(doc.get("error-message", "")):
                message = str(doc.get("error-message", done.stderr)).strip().splitlines()
                raise FederationError(
                    f"could not register SuperNode {index}'s key {public}: "
                    f"{message[-1] if message else 'no answer'}"
                )

    def node_config(self, index: int) -> str:
        """Return SuperNode ``index``'s ``--node-config``."""
        values: dict[str, str | int] = {
            "partition-id": index,
            "num-partitions": self.record.nodes,
            "state-dir": str(state_dir(self.run_dir, index)),
            "aggregator-fingerprint": self.record.aggregator_fingerprint,
        }
        if self.record.signing_fingerprint:
            values["aggregator-signing-fingerprint"] = self.record.signing_fingerprint
        if self.record.node_data:
            values["data-path"] = self.record.node_data[index]
        return commands.node_config_arg(values)

    def start_supernode(self, index: int) -> Managed:
        """Start SuperNode ``index`` (again, after a crash: same key, same state directory).

        It runs in its own folder (``nodes/node-<i>/``: its key and ``FLWR_HOME``), never in a
        folder that holds fedveil's source.
        """
        home = self.layout.node(index) / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        command = commands.supernode_command(
            self.node_bin,
            self.layout,
            self.ports,
            index,
            tls=self.record.tls,
            auth=self.record.auth,
            node_config=self.node_config(index),
        )
        return self.table.start(
            f"{NODE_PREFIX}{index}",
            command,
            self.env(home, self.node_bin),
            self.layout.logs / f"node-{index}.log",
            cwd=self.layout.node(index),
        )

    def start_supernodes(self) -> None:
        """Start every SuperNode and wait until each has connected and has its node id."""
        for index in range(self.record.nodes):
            self.watch[index] = NodeWatch()
            self.start_supernode(index)
        deadline = time.monotonic() + START_TIMEOUT + ACTIVATION_PATIENCE
        while not all(w.connected for w in self.watch.values()):
            self.watch_nodes(starting=True)
            if time.monotonic() > deadline:
                waiting = sorted(i for i, w in self.watch.items() if not w.connected)
                raise FederationError(
                    f"SuperNodes {waiting} did not connect; see {self.layout.logs}"
                )
            time.sleep(0.2)

    def start_monitor(self) -> None:
        """Start measuring the SuperNodes' footprint (written to ``logs/`` at teardown)."""
        self.monitor = FootprintMonitor(self.table)
        self.monitor.start()

    # ----------------------------------------------------------------- supervision
    def watch_nodes(self, *, starting: bool = False) -> None:
        """Note each SuperNode's node id; restart one that died (see the module docstring)."""
        now = time.monotonic()
        for index, watch in self.watch.items():
            managed = self.table.procs[f"{NODE_PREFIX}{index}"]
            if managed.alive():
                if not watch.connected:
                    node_id = commands.parse_node_id(read_from(managed.log_path, managed.offset))
                    if node_id is not None:
                        watch.connected, watch.failing_since = True, None
                        self.record.node_ids[str(index)] = node_id
                continue
            if watch.gave_up:
                continue
            if watch.restart_at is None:
                self._node_died(index, watch, managed, now, starting=starting)
            elif now >= watch.restart_at:
                watch.restart_at = None
                self.start_supernode(index)

    def _node_died(
        self, index: int, watch: NodeWatch, managed: Managed, now: float, *, starting: bool
    ) -> None:
        self.table.stop(managed.name, grace=2.0)  # its helpers, if any outlived it
        code = managed.popen.returncode
        why = (
            f"killed by signal {-code}"
            if code is not None and code < 0
            else f"exit code {code}: {last_line(managed.log_path)}"
        )
        if watch.connected:
            watch.crashes += 1
            watch.connected = False
            self.console.print(
                f"[yellow]SuperNode {index} exited ({why}); restarting it with the same key "
                f"and state directory[/yellow]"
            )
        elif watch.failing_since is None:
            watch.failing_since = now
            self.console.print(f"SuperNode {index} could not connect ({why}); retrying")
        out_of_patience = (
            watch.failing_since is not None and now - watch.failing_since > ACTIVATION_PATIENCE
        )
        if watch.crashes > MAX_NODE_RESTARTS or out_of_patience:
            watch.gave_up = True
            message = f"SuperNode {index} keeps failing ({why}); log: {managed.log_path}"
            if starting:
                raise FederationError(message)
            self.console.print(f"[red]{message}; the run goes on without it[/red]")
            return
        watch.restart_at = now + RESTART_DELAY

    def supervise(self) -> None:
        """Fail if the SuperLink died; look after the SuperNodes."""
        link = self.table.procs.get("superlink")
        if link is not None and not link.alive():
            raise FederationError(
                f"the SuperLink exited (code {link.popen.returncode}) during the run; "
                f"resume with `fedveil federation up --resume {self.run_dir}` "
                f"(log: {link.log_path})"
            )
        self.watch_nodes()

    # ----------------------------------------------------------------- Flower runs
    def stop_run(self, run_id: int) -> None:
        """Stop a Flower run on this SuperLink (an interrupted run before resuming it)."""
        done = self.flwr("stop", str(run_id), commands.CONNECTION)
        if done.returncode != 0:
            log.info("flwr stop %d: %s", run_id, (done.stderr or done.stdout).strip())

    def status(self, run_id: int) -> tuple[str, str]:
        """Return the Flower run's status and details from ``flwr ls``."""
        done = self.flwr("ls", commands.CONNECTION, "--run-id", str(run_id), "--format", "json")
        doc = commands.json_in(done.stdout)
        if doc is None:
            return "unknown", (done.stderr or done.stdout).strip()[-300:]
        return commands.run_status(doc, run_id)

    def teardown(self) -> dict[str, Any]:
        """Stop every process and release the lock; return the footprint (also in ``logs/``)."""
        footprint: dict[str, Any] = {}
        try:
            if self.monitor is not None:
                monitor, self.monitor = self.monitor, None
                monitor.stop()
                footprint = monitor.report()
                self.layout.logs.mkdir(parents=True, exist_ok=True)
                (self.layout.logs / "footprint.json").write_text(json.dumps(footprint, indent=1))
        finally:
            self.table.stop_all()
            if self._lock_file is not None:
                self._lock_file.close()
                self._lock_file = None
        return footprint
