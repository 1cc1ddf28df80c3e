"""``fedveil federation up``: a real Flower deployment of fedveil on this host.

One ``flower-superlink`` (Fleet API over gRPC-rere on ``127.0.0.1:<free port>``; its Control and
ServerAppIo HTTP API on another free ``127.0.0.1`` port; runtime dependency installation off; its
own ``FLWR_HOME`` and a SQLite state file, so node registrations survive a restart) and N
``flower-supernode`` processes, each with its own Runtime API port, ``FLWR_HOME``, durable state
directory and node config (``partition-id``, ``num-partitions``, ``state-dir``,
``aggregator-fingerprint``). ``--tls`` adds a private CA and a server certificate for
``127.0.0.1``/``localhost``; ``--auth`` adds SuperNode authentication (P-384 keys registered with
``flwr supernode register``). The app is staged into a folder of its own (only the packages it
runs, a generated ``pyproject.toml``) and started with ``flwr run <staged app> fedveil
--run-config <file> --stream``; success is checked with ``flwr ls --format json`` and the run
directory, never with ``flwr run``'s exit status, which is 0 even for a failed run.

Folders. The *work directory* (``--keep-dir``, default ``RUN_DIR/deployment``) keeps what a
restart needs: ``tls/`` (CA and server certificate), ``keys/`` (the aggregator's HPKE key pair),
``nodes/node-<i>/`` (a SuperNode's authentication key and ``FLWR_HOME``), ``superlink/``
(``FLWR_HOME`` and ``state.db``), ``flwr-home/`` (the CLI's connection), ``app/`` (the staged app),
``logs/`` (every process's output, ``footprint.json``) and ``pids.json``. The run directory gets
``deployment.json`` (how to restart it) and ``client-state/partition-<i>/`` (SuperNode ``i``'s
``state-dir``, where a simulation keeps the same client's state), beside the usual run files.

Processes. Each is started in a session of its own and recorded in ``pids.json`` with its start
time; teardown (also on Ctrl-C, SIGTERM and failure) signals each process group and every
descendant it recorded, checking start times so that a reused pid is never hit, and nothing is
ever killed by name. A later ``up`` or ``--resume`` on the same work directory first stops what a
killed orchestrator left behind, the same way. A SuperNode that dies is restarted with the same
key and state directory, as ``Restart=on-failure`` would (see ``LocalFederation.watch_nodes``); a
SuperLink that dies ends the federation (resume it with ``--resume RUN_DIR``). The ServerApp is
stopped before the SuperNodes, so a teardown never records a round in which every node vanished.

Resuming. ``--resume RUN_DIR`` restarts the SuperLink on the same state file, certificates and
keys, restarts the SuperNodes on the same state directories, stops the interrupted Flower run,
and runs the ServerApp in resume mode. This module's ``server_app`` reads the two deployment keys
``run-dir`` and ``resume`` from the run config (see ``DEPLOY_KEYS``) before the rest is parsed as
usual; it is the prototype of that wiring in ``server.app``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any, Final

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.config import ConfigError, ConfigValue, FedveilConfig
from deployment.processes import (
    cmdline,
    descendants,
    live_processes,
    peak_rss_kib,
    process_tree,
    start_time,
)

if TYPE_CHECKING:
    from rich.console import Console

log = logging.getLogger(__name__)

CONNECTION: Final = "fedveil"
HOST: Final = "127.0.0.1"
DEPLOYMENT_FILE: Final = "deployment.json"
DEPLOYMENT_VERSION: Final = 1
RUN_DIR_KEY: Final = "run-dir"
RESUME_KEY: Final = "resume"
DEPLOY_KEYS: Final[dict[str, ConfigValue]] = {RUN_DIR_KEY: "", RESUME_KEY: False}
SERVER_COMPONENT: Final = "deployment.federation:server_app"
CLIENT_COMPONENT: Final = "client.app:app"
APP_PACKAGES: Final = ("common", "client", "server")
APP_MODULES: Final = ("deployment/__init__.py", "deployment/federation.py")
MAX_NODE_RESTARTS: Final = 3
RESTART_DELAY: Final = 5.0
ACTIVATION_PATIENCE: Final = 120.0
START_TIMEOUT: Final = 120.0
STOP_GRACE: Final = 10.0
_RUN_ID = re.compile(r"Successfully started run (\d+)")
_NODE_ID = re.compile(r"SuperNode ID: (\d+)")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


class DeployError(ValueError):
    """A problem the user can fix before anything runs; the message is one line."""


class FederationError(RuntimeError):
    """The federation or its Flower run failed; the message is one line naming a log."""


# ------------------------------------------------------------------------------ layout


@dataclass(frozen=True)
class Layout:
    """Where a federation keeps its files (see the module docstring)."""

    root: Path

    @property
    def tls(self) -> Path:
        """TLS certificates and keys."""
        return self.root / "tls"

    @property
    def keys(self) -> Path:
        """The aggregator's key pair."""
        return self.root / "keys"

    @property
    def app(self) -> Path:
        """The staged Flower app."""
        return self.root / "app"

    @property
    def cli_home(self) -> Path:
        """``FLWR_HOME`` of the ``flwr`` CLI (its ``config.toml`` names the connection)."""
        return self.root / "flwr-home"

    @property
    def superlink_home(self) -> Path:
        """``FLWR_HOME`` of the SuperLink, beside its state file."""
        return self.root / "superlink"

    @property
    def database(self) -> Path:
        """The SuperLink's SQLite state (runs, messages, registered nodes)."""
        return self.superlink_home / "state.db"

    @property
    def logs(self) -> Path:
        """Process logs and measurements."""
        return self.root / "logs"

    @property
    def pids(self) -> Path:
        """The processes running for this work directory."""
        return self.root / "pids.json"

    @property
    def run_config(self) -> Path:
        """The run config handed to ``flwr run``."""
        return self.root / "run-config.toml"

    def node(self, index: int) -> Path:
        """SuperNode ``index``'s key pair and ``FLWR_HOME``."""
        return self.root / "nodes" / f"node-{index}"


def state_dir(run_dir: Path, index: int) -> Path:
    """Return SuperNode ``index``'s durable state directory (its ``state-dir``).

    The layout a simulation uses for partition ``index`` (``client-state/partition-<i>``), so a
    run's clients keep one privacy state however the run is continued.
    """
    return run_dir / "client-state" / f"partition-{index}"


@dataclass(frozen=True)
class Ports:
    """The SuperLink's HTTP (Control + ServerAppIo) and Fleet ports, and one per SuperNode."""

    control: int
    fleet: int
    nodes: tuple[int, ...]

    @classmethod
    def pick(cls, num_nodes: int) -> Ports:
        """Pick distinct free ports on ``127.0.0.1``."""
        ports = free_ports(2 + num_nodes)
        return cls(ports[0], ports[1], tuple(ports[2:]))


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct ports that are free on ``127.0.0.1`` right now."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((HOST, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


# ------------------------------------------------------------------------------ pure helpers


def _toml_value(value: ConfigValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot write the non-finite number {value!r} to TOML")
        return repr(value)
    # A JSON string literal is a valid TOML basic string.
    return json.dumps(value)


def toml_lines(flat: Mapping[str, ConfigValue]) -> list[str]:
    """Return ``key = value`` lines for flat dotted keys (TOML dotted keys, nested tables)."""
    lines = []
    for key, value in flat.items():
        if not _BARE_KEY.match(key):
            raise ValueError(f"config key {key!r} is not a bare dotted TOML key")
        lines.append(f"{key} = {_toml_value(value)}")
    return lines


def node_config_arg(values: Mapping[str, ConfigValue]) -> str:
    """Return a ``--node-config`` string: space-separated ``key=value``, strings quoted."""
    parts = []
    for key, value in values.items():
        if isinstance(value, str) and ('"' in value or "'" in value or "\\" in value):
            raise DeployError(f"node config `{key}` cannot contain quotes or backslashes: {value}")
        parts.append(f"{key}={_toml_value(value)}")
    return " ".join(parts)


def staged_pyproject(defaults: Mapping[str, ConfigValue]) -> str:
    """Return the staged app's ``pyproject.toml``: metadata, components, every config key."""
    try:
        version = metadata.version("fedveil")
        requires = metadata.requires("fedveil") or []
    except metadata.PackageNotFoundError:
        version, requires = "0.1.0", []
    dependencies = [r for r in requires if "extra ==" not in r]
    lines = [
        "# Generated by `fedveil federation up`: the app a SuperLink ships to its SuperNodes.",
        "[project]",
        'name = "fedveil"',
        f"version = {json.dumps(version)}",
        'description = "fedveil: DP-SGD clients, sealed compressed updates (deployment)"',
        'license = "Apache-2.0"',
        f"dependencies = {json.dumps(dependencies)}",
        "",
        "[tool.flwr.app]",
        'publisher = "fedveil"',
        "",
        "[tool.flwr.app.components]",
        f'serverapp = "{SERVER_COMPONENT}"',
        f'clientapp = "{CLIENT_COMPONENT}"',
        "",
        "[tool.flwr.app.config]",
        *toml_lines(defaults),
        "",
    ]
    return "\n".join(lines)


def flwr_config_toml(control_port: int, *, ca_cert: Path | None) -> str:
    """Return the CLI's ``config.toml``: one connection, ``fedveil``, the default."""
    lines = [
        "[superlink]",
        f'default = "{CONNECTION}"',
        "",
        f"[superlink.{CONNECTION}]",
        f'address = "{HOST}:{control_port}"',
    ]
    if ca_cert is None:
        lines.append("insecure = true")
    else:
        lines.append(f"root-certificates = {json.dumps(str(ca_cert))}")
    return "\n".join(lines) + "\n"


def superlink_command(
    bin_dir: Path, layout: Layout, ports: Ports, *, tls: bool, auth: bool
) -> list[str]:
    """Return the ``flower-superlink`` command line."""
    command = [
        str(bin_dir / "flower-superlink"),
        "--host",
        HOST,
        "--port",
        str(ports.control),
        "--fleet-api-type",
        "grpc-rere",
        "--fleet-api-address",
        f"{HOST}:{ports.fleet}",
        "--database",
        str(layout.database),
        "--disable-runtime-dependency-installation",
    ]
    if tls:
        command += [
            "--ssl-ca-certfile",
            str(layout.tls / "ca.pem"),
            "--ssl-certfile",
            str(layout.tls / "server.pem"),
            "--ssl-keyfile",
            str(layout.tls / "server.key"),
        ]
    else:
        command.append("--insecure")
    if auth:
        command.append("--enable-supernode-auth")
    return command


def supernode_command(
    bin_dir: Path,
    layout: Layout,
    ports: Ports,
    index: int,
    *,
    tls: bool,
    auth: bool,
    node_config: str,
) -> list[str]:
    """Return SuperNode ``index``'s ``flower-supernode`` command line."""
    command = [
        str(bin_dir / "flower-supernode"),
        "--superlink",
        f"{HOST}:{ports.fleet}",
        "--grpc-rere",
        "--host",
        HOST,
        "--port",
        str(ports.nodes[index]),
        "--node-config",
        node_config,
    ]
    command += ["--root-certificates", str(layout.tls / "ca.pem")] if tls else ["--insecure"]
    if auth:
        command += ["--auth-supernode-private-key", str(layout.node(index) / "node.key")]
    return command


def parse_run_id(text: str) -> int | None:
    """Return the run id ``flwr run`` announced in ``text``, if any."""
    found = _RUN_ID.search(text)
    return int(found.group(1)) if found else None


def run_status(doc: Mapping[str, Any], run_id: int) -> tuple[str, str]:
    """Return ``(status, details)`` of ``run_id`` from ``flwr ls --format json`` output."""
    for run in doc.get("runs", []):
        if str(run.get("run-id")) == str(run_id):
            return str(run.get("status", "unknown")), str(run.get("status-details", ""))
    return "unknown", f"run {run_id} is not listed by the SuperLink"


def footprint_summary(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Summarise per-message ClientApp peaks: count, max and median peak RSS, median seconds."""
    peaks = [float(s["peak_rss_mib"]) for s in samples]
    seconds = [float(s["seconds"]) for s in samples]
    if not peaks:
        return {"messages": 0}
    return {
        "messages": len(peaks),
        "peak_rss_mib_max": round(max(peaks), 1),
        "peak_rss_mib_median": round(statistics.median(peaks), 1),
        "seconds_median": round(statistics.median(seconds), 2),
    }


# ------------------------------------------------------------------------------ processes


def _signal_if_same(pid: int, start: int, sig: int) -> None:
    if start_time(pid) == start:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


@dataclass
class Managed:
    """One process this federation started."""

    name: str
    command: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes]
    start: int
    log_file: IO[bytes]
    offset: int = 0

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.popen.poll() is None


class ProcessTable:
    """Starts, records (``pids.json``) and stops a federation's processes, and only those."""

    def __init__(self, record: Path, cwd: Path) -> None:
        self.record = record
        self.cwd = cwd
        self.procs: dict[str, Managed] = {}
        self._lock = threading.Lock()
        self._wrote_record = False

    def start(self, name: str, command: list[str], env: dict[str, str], log_path: Path) -> Managed:
        """Start ``command`` in a new session, its output appended to ``log_path``."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = log_path.stat().st_size if log_path.exists() else 0
        log_file = log_path.open("ab")
        log_file.write(f"\n--- fedveil: {' '.join(command)}\n".encode())
        log_file.flush()
        popen = subprocess.Popen(  # noqa: S603 (our own command line, no shell)
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.cwd,
            start_new_session=True,
        )
        managed = Managed(
            name, command, env, log_path, popen, start_time(popen.pid) or 0, log_file, offset
        )
        with self._lock:
            self.procs[name] = managed
            self._save()
        return managed

    def _save(self) -> None:
        doc = [{"name": m.name, "pid": m.pid, "start": m.start} for m in self.procs.values()]
        tmp = self.record.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        tmp.replace(self.record)
        self._wrote_record = True

    def stop(self, name: str, *, sig: int = signal.SIGTERM, grace: float = STOP_GRACE) -> None:
        """Stop one process, its process group and every descendant; SIGKILL after ``grace``."""
        managed = self.procs.get(name)
        if managed is None:
            return
        tree = process_tree(managed.pid, managed.start)
        stop_tree(tree, sig=sig, grace=grace, popen=managed.popen)
        managed.popen.poll()
        managed.log_file.close()

    def stop_all(self, *, grace: float = STOP_GRACE) -> None:
        """Stop every process: ``flwr run``, the SuperLink with its ServerApp, then nodes."""
        for name in stop_order(list(self.procs)):
            self.stop(name, grace=grace)
        with self._lock:
            self.procs.clear()
            if self._wrote_record:  # never another orchestrator's record
                self.record.unlink(missing_ok=True)

    @staticmethod
    def reap_stale(record: Path) -> list[str]:
        """Stop what a killed orchestrator left running (verified by start time); return names."""
        try:
            doc = json.loads(record.read_text())
        except (OSError, ValueError):
            return []
        entries: dict[str, tuple[int, int]] = {}
        for entry in doc if isinstance(doc, list) else []:
            with contextlib.suppress(KeyError, TypeError, ValueError):
                entries[str(entry["name"])] = (int(entry["pid"]), int(entry["start"]))
        stopped = []
        for name in stop_order(list(entries)):
            tree = process_tree(*entries[name])
            if tree:
                stop_tree(tree, sig=signal.SIGTERM, grace=5.0, popen=None)
                stopped.append(name)
        record.unlink(missing_ok=True)
        return stopped


def stop_order(names: Sequence[str]) -> list[str]:
    """Order in which to stop processes started as ``names``: the newest first, but nodes last.

    The ServerApp (inside the SuperLink's tree) must go before the SuperNodes: stopped the
    other way round, it would see every node vanish, record a round of rejections and
    checkpoint it.
    """
    first = [n for n in reversed(names) if not n.startswith("supernode-")]
    return [*first, *[n for n in names if n not in first]]


def stop_tree(
    tree: list[tuple[int, int]], *, sig: int, grace: float, popen: subprocess.Popen[bytes] | None
) -> None:
    """Send ``sig`` to every ``(pid, start)`` still alive; SIGKILL what outlives ``grace``.

    Every signal goes to one pid whose start time is checked first: never to a reused pid,
    never by name, never to a whole group that could hold anything else.
    """

    def gone(seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while True:
            if popen is not None:
                popen.poll()  # reap our direct child, so it is gone rather than a zombie
            if all(start_time(pid) != start for pid, start in tree):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)

    for pid, start in tree:
        _signal_if_same(pid, start, sig)
    if sig == signal.SIGKILL or gone(grace):
        gone(5.0)
        return
    for pid, start in tree:
        _signal_if_same(pid, start, signal.SIGKILL)
    gone(5.0)


# ------------------------------------------------------------------------------ footprint


class FootprintMonitor(threading.Thread):
    """Samples each SuperNode's ``flwr-clientapp`` processes: peak RSS and lifetime per message."""

    def __init__(self, table: ProcessTable, interval: float = 0.5) -> None:
        super().__init__(name="fedveil-footprint", daemon=True)
        self.table = table
        self.interval = interval
        self.samples: list[dict[str, Any]] = []
        self.daemons: dict[str, float] = {}
        self._live: dict[tuple[int, int], dict[str, Any]] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        """Sample until stopped."""
        while not self._halt.wait(self.interval):
            with contextlib.suppress(Exception):  # a process may vanish mid-read
                self._sample()
        self._close_finished(set())

    def stop(self) -> None:
        """Stop sampling and finish the open records."""
        self._halt.set()
        self.join(timeout=5)

    def _sample(self) -> None:
        seen: set[tuple[int, int]] = set()
        procs = live_processes()  # one scan of /proc per sample: this runs beside training
        for name, managed in list(self.table.procs.items()):
            if not name.startswith("supernode-"):
                continue
            for pid, start in [(managed.pid, managed.start), *descendants(managed.pid, procs)]:
                rss = peak_rss_kib(pid)
                if rss is None:
                    continue
                command = cmdline(pid)
                if "flwr-clientapp" in command:
                    key = (pid, start)
                    seen.add(key)
                    record = self._live.setdefault(
                        key, {"node": name, "pid": pid, "first": time.monotonic(), "kib": 0}
                    )
                    record["kib"] = max(record["kib"], rss)
                    record["last"] = time.monotonic()
                else:
                    role = "superexec" if "flower-superexec" in command else "supernode"
                    label = f"{name}/{role}"
                    self.daemons[label] = max(self.daemons.get(label, 0.0), rss / 1024)
        self._close_finished(seen)

    def _close_finished(self, seen: set[tuple[int, int]]) -> None:
        for key in [k for k in self._live if k not in seen]:
            record = self._live.pop(key)
            self.samples.append(
                {
                    "node": record["node"],
                    "pid": record["pid"],
                    "peak_rss_mib": round(record["kib"] / 1024, 1),
                    "seconds": round(record.get("last", record["first"]) - record["first"], 2),
                }
            )

    def report(self) -> dict[str, Any]:
        """Return the measurements: per message, summary, and the daemons' peak RSS (MiB)."""
        return {
            "clientapp": footprint_summary(self.samples),
            "daemons_peak_rss_mib": {k: round(v, 1) for k, v in sorted(self.daemons.items())},
            "messages": self.samples,
        }


# ------------------------------------------------------------------------------ the federation


@dataclass
class DeploymentRecord:
    """``RUN_DIR/deployment.json``: what ``--resume`` needs to restart this federation."""

    work_dir: str
    nodes: int
    tls: bool
    auth: bool
    aggregator_fingerprint: str
    superlink: dict[str, str] = field(default_factory=dict)
    node_ids: dict[str, int] = field(default_factory=dict)
    flower_runs: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Return the JSON document."""
        return {
            "version": DEPLOYMENT_VERSION,
            "kind": "fedveil-deployment",
            "flwr": _flwr_version(),
            "work_dir": self.work_dir,
            "nodes": self.nodes,
            "tls": self.tls,
            "auth": self.auth,
            "aggregator_fingerprint": self.aggregator_fingerprint,
            "superlink": self.superlink,
            "node_ids": self.node_ids,
            "flower_runs": self.flower_runs,
        }

    @classmethod
    def load(cls, run_dir: Path) -> DeploymentRecord:
        """Read a run directory's ``deployment.json``; one-line ``DeployError`` otherwise."""
        path = run_dir / DEPLOYMENT_FILE
        try:
            doc = json.loads(path.read_text())
            if doc.get("version") != DEPLOYMENT_VERSION:
                raise DeployError(f"{path} has unknown version {doc.get('version')!r}")
            return cls(
                work_dir=str(doc["work_dir"]),
                nodes=int(doc["nodes"]),
                tls=bool(doc["tls"]),
                auth=bool(doc["auth"]),
                aggregator_fingerprint=str(doc["aggregator_fingerprint"]),
                superlink=dict(doc.get("superlink", {})),
                node_ids={str(k): int(v) for k, v in doc.get("node_ids", {}).items()},
                flower_runs=list(doc.get("flower_runs", [])),
            )
        except FileNotFoundError:
            raise DeployError(
                f"{run_dir} has no {DEPLOYMENT_FILE}: it was not made by `fedveil federation up`"
            ) from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            if isinstance(exc, DeployError):
                raise
            raise DeployError(f"{path} is corrupt ({exc})") from None

    def save(self, run_dir: Path) -> None:
        """Write ``deployment.json`` atomically."""
        from common.weights import write_atomic

        data = (json.dumps(self.to_json(), indent=2) + "\n").encode()
        write_atomic(run_dir / DEPLOYMENT_FILE, data)


def _flwr_version() -> str:
    try:
        return metadata.version("flwr")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass
class NodeWatch:
    """What the orchestrator knows of one SuperNode's health."""

    connected: bool = False
    crashes: int = 0
    failing_since: float | None = None
    restart_at: float | None = None
    gave_up: bool = False


@dataclass(frozen=True)
class RunOutcome:
    """How a deployed run ended."""

    run_id: int
    status: str
    rounds: int
    stopped_reason: str | None
    footprint: dict[str, Any]


class LocalFederation:
    """A SuperLink and N SuperNodes on this host, started and stopped as one."""

    def __init__(
        self,
        layout: Layout,
        run_dir: Path,
        record: DeploymentRecord,
        *,
        console: Console,
        verbose: bool = False,
    ) -> None:
        self.layout = layout
        self.run_dir = run_dir
        self.record = record
        self.console = console
        self.verbose = verbose
        self.bin_dir = Path(sys.executable).parent
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

    def env(self, home: Path) -> dict[str, str]:
        """Environment of a Flower process: its own ``FLWR_HOME``, this env's ``bin/`` first."""
        env = {k: v for k, v in os.environ.items() if k != "FLWR_INTERNAL_GRPC_CONTROL_API"}
        env.update(
            FLWR_HOME=str(home),
            PATH=f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
            FLWR_TELEMETRY_ENABLED="0",
            FLWR_DISABLE_UPDATE_CHECK="1",
            PYTHONUNBUFFERED="1",
        )
        env.setdefault("HF_HUB_OFFLINE", "1")
        return env

    def stage_app(self, defaults: Mapping[str, ConfigValue]) -> None:
        """Copy the packages the apps import and write the app's ``pyproject.toml``."""
        import common

        source = Path(common.__file__).resolve().parent.parent
        shutil.rmtree(self.layout.app, ignore_errors=True)
        for package in APP_PACKAGES:
            shutil.copytree(
                source / package,
                self.layout.app / package,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
            )
        for module in APP_MODULES:
            target = self.layout.app / module
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / module, target)
        (self.layout.app / "pyproject.toml").write_text(staged_pyproject(defaults))

    def write_cli_config(self) -> None:
        """Point the ``flwr`` CLI at this SuperLink (its own ``FLWR_HOME``)."""
        self.layout.cli_home.mkdir(parents=True, exist_ok=True)
        ca = self.layout.tls / "ca.pem" if self.record.tls else None
        (self.layout.cli_home / "config.toml").write_text(
            flwr_config_toml(self.ports.control, ca_cert=ca)
        )

    # ----------------------------------------------------------------- processes
    def start_superlink(self) -> None:
        """Start the SuperLink and wait until both its ports accept connections."""
        self.layout.superlink_home.mkdir(parents=True, exist_ok=True)
        command = superlink_command(
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
            while not _accepts(port):
                if not managed.alive():
                    raise FederationError(
                        f"the SuperLink exited at start (code {managed.popen.returncode}): "
                        f"{_last_line(managed.log_path)} (log: {managed.log_path})"
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
            done = self.flwr("supernode", "register", str(public), CONNECTION, "--format", "json")
            doc = _json_in(done.stdout) or {}
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
        return node_config_arg(
            {
                "partition-id": index,
                "num-partitions": self.record.nodes,
                "state-dir": str(state_dir(self.run_dir, index)),
                "aggregator-fingerprint": self.record.aggregator_fingerprint,
            }
        )

    def start_supernode(self, index: int) -> Managed:
        """Start SuperNode ``index`` (again, after a crash: same key, same state directory)."""
        home = self.layout.node(index) / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        command = supernode_command(
            self.bin_dir,
            self.layout,
            self.ports,
            index,
            tls=self.record.tls,
            auth=self.record.auth,
            node_config=self.node_config(index),
        )
        return self.table.start(
            f"supernode-{index}", command, self.env(home), self.layout.logs / f"node-{index}.log"
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

    def watch_nodes(self, *, starting: bool = False) -> None:
        """Note each SuperNode's node id; restart one that died, as ``Restart=on-failure``.

        A node that crashed after connecting is restarted (same key, same state directory) at
        most ``MAX_NODE_RESTARTS`` times. A node that cannot connect is retried for
        ``ACTIVATION_PATIENCE`` seconds: Flower 1.39 refuses to activate a node id it still
        believes online (up to two heartbeat intervals after a crash of the node or the link).
        """
        now = time.monotonic()
        for index, watch in self.watch.items():
            managed = self.table.procs[f"supernode-{index}"]
            if managed.alive():
                if not watch.connected:
                    found = _NODE_ID.search(_read_from(managed.log_path, managed.offset))
                    if found:
                        watch.connected, watch.failing_since = True, None
                        self.record.node_ids[str(index)] = int(found.group(1))
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
            else f"exit code {code}: {_last_line(managed.log_path)}"
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

    def stop_run(self, run_id: int) -> None:
        """Stop a Flower run on this SuperLink (an interrupted run before resuming it)."""
        done = self.flwr("stop", str(run_id), CONNECTION)
        if done.returncode != 0:
            log.info("flwr stop %d: %s", run_id, (done.stderr or done.stdout).strip())

    def status(self, run_id: int) -> tuple[str, str]:
        """Return the Flower run's status and details from ``flwr ls``."""
        done = self.flwr("ls", CONNECTION, "--run-id", str(run_id), "--format", "json")
        doc = _json_in(done.stdout)
        if doc is None:
            return "unknown", (done.stderr or done.stdout).strip()[-300:]
        return run_status(doc, run_id)

    # ----------------------------------------------------------------- the run
    def run_app(self, flat: Mapping[str, ConfigValue], total_rounds: int) -> RunOutcome:
        """Run the staged app with ``flwr run --stream``; follow its rounds; check it ended well."""
        from server.ledger import PrivacyLedger
        from server.rundir import RoundRecord
        from simulations.progress import RoundProgress

        self.layout.run_config.write_text("\n".join(toml_lines(flat)) + "\n")
        command = [
            str(self.bin_dir / "flwr"),
            "run",
            str(self.layout.app),
            CONNECTION,
            "--run-config",
            str(self.layout.run_config),
            "--stream",
        ]
        log_path = self.layout.logs / "flwr-run.log"
        offset = _size(log_path)
        runner = self.table.start("flwr-run", command, self.env(self.layout.cli_home), log_path)
        run_id: int | None = None
        seen = _rows(self.run_dir)
        shown = offset
        with RoundProgress(self.console, total_rounds) as progress:
            while True:
                self.supervise()
                if self.verbose:
                    text = _read_from(log_path, shown)
                    shown += len(text.encode())
                    if text.strip():
                        self.console.print(text.rstrip(), markup=False, highlight=False)
                if run_id is None:
                    run_id = parse_run_id(_read_from(log_path, offset))
                    if run_id is not None:
                        self.record.flower_runs.append({"run_id": str(run_id)})
                        self.record.save(self.run_dir)
                rows = _rows(self.run_dir)
                if len(rows) > len(seen):
                    ledger = _ledger(self.run_dir, PrivacyLedger)
                    for row in rows[len(seen) :]:
                        if ledger is not None:
                            progress.update(RoundRecord.from_json(row), ledger)
                    seen = rows
                if not runner.alive():
                    break
                time.sleep(0.5)
        if run_id is None:
            raise FederationError(f"`flwr run` did not start a run: {_last_line(log_path)}")
        status, details = self.status(run_id)
        self.record.flower_runs[-1]["status"] = status
        self.record.save(self.run_dir)
        if status != "finished:completed":
            raise FederationError(
                f"Flower run {run_id} ended `{status}` {details}".strip()
                + f"; see {log_path} and {self.layout.logs}"
            )
        privacy = _json(self.run_dir / "privacy.json")
        stopped = None if privacy is None else privacy.get("stopped_reason")
        if privacy is None or not (self.run_dir / "model.safetensors").exists():
            raise FederationError(
                f"Flower run {run_id} completed but {self.run_dir} lacks privacy.json or "
                f"model.safetensors; see {log_path}"
            )
        return RunOutcome(run_id, status, len(_rows(self.run_dir)), stopped, {})

    def teardown(self) -> dict[str, Any]:
        """Stop every process; return the footprint measurements (also in ``logs/``)."""
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


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
        return True
    return False


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(max(offset, 0))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def _last_line(path: Path) -> str:
    """Return the most telling line of a Flower log: its exit reason, else its last error."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", _read_from(path, max(_size(path) - 8000, 0)))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for marker in ("Exit Code:", "ERROR", "Error"):
        hits = [i for i, ln in enumerate(lines) if marker in ln]
        if hits:
            tail = lines[hits[-1] : hits[-1] + 4]
            return " ".join(ln for ln in tail if not ln.startswith(("INFO", "For more")))[:400]
    return lines[-1][:400] if lines else "(empty log)"


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    rows = []
    for line in _read_from(path, 0).splitlines():
        with contextlib.suppress(ValueError):
            rows.append(json.loads(line))
    return rows


def _json_in(text: str) -> dict[str, Any] | None:
    """Return the JSON object a ``flwr ... --format json`` command printed, if any."""
    try:
        doc = json.loads(text[text.index("{") :])
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _ledger(run_dir: Path, cls: Any) -> Any:
    doc = _json(run_dir / "privacy.json")
    if doc is None:
        return None
    try:
        return cls.from_json(doc)
    except (KeyError, TypeError, ValueError):
        return None


@contextlib.contextmanager
def _interrupt_on_sigterm() -> Iterator[None]:
    """Turn SIGINT, SIGTERM and SIGHUP into ``KeyboardInterrupt``: teardown runs (main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, interrupt) for signum in handled}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# ------------------------------------------------------------------------------ entry points


def _prepare_material(layout: Layout, nodes: int, *, tls: bool, auth: bool, key: str) -> str:
    """Create (or check, when kept from before) certificates and keys; return the fingerprint."""
    from common.crypto import certificates
    from common.sealing import AggregatorKeyPair, load_private_key, write_keypair

    if tls:
        files = certificates.TlsFiles.in_directory(layout.tls)
        if not files.server_cert.exists():
            certificates.create_tls_files(layout.tls)
        certificates.check_tls_files(files, host=HOST)
    if auth:
        for index in range(nodes):
            folder = layout.node(index)
            if not (folder / certificates.NODE_PRIVATE_KEY_FILE).exists():
                certificates.create_node_key(folder, comment=f"fedveil-node-{index}")
            certificates.check_node_private_key(folder / certificates.NODE_PRIVATE_KEY_FILE)
            certificates.check_node_public_key(folder / certificates.NODE_PUBLIC_KEY_FILE)
    path = Path(key) if key else layout.keys / "aggregator.key"
    if not path.exists() and not key:
        write_keypair(layout.keys, AggregatorKeyPair.generate())
    try:
        return load_private_key(path).fingerprint()
    except ValueError as exc:
        raise DeployError(str(exc)) from None


def check_deployable(config: FedveilConfig, nodes: int) -> None:
    """Refuse a federation that cannot run before anything starts (one line)."""
    if nodes < 1:
        raise DeployError(f"--nodes must be >= 1, got {nodes}")
    if config.min_train_clients > nodes:
        raise DeployError(
            f"config key `min-train-clients` is {config.min_train_clients} but only {nodes} "
            f"SuperNodes would run; use --nodes {config.min_train_clients} or "
            f"--set min-train-clients={nodes}"
        )


def run_flat(config: FedveilConfig, run_dir: Path, *, resume: bool) -> dict[str, ConfigValue]:
    """Return the run config ``flwr run`` passes: every key, plus ``run-dir`` and ``resume``."""
    return {**config.to_flat(), RUN_DIR_KEY: str(run_dir), RESUME_KEY: resume}


def _absolute(config: FedveilConfig, run_dir: Path, key: str) -> FedveilConfig:
    """Make the paths the app processes read absolute (they run in another directory)."""
    changes: dict[str, Any] = {"out_dir": str(run_dir.parent)}
    if config.data_dir:
        changes["data_dir"] = str(Path(config.data_dir).expanduser().resolve())
    if key:
        changes["seal_private_key"] = str(Path(key).expanduser().resolve())
    return config.replace(**changes)


def federation_up(
    config: FedveilConfig,
    *,
    nodes: int,
    tls: bool,
    auth: bool,
    out: Path | None,
    keep_dir: Path | None,
    console: Console,
    verbose: bool = False,
) -> tuple[Path, RunOutcome]:
    """Start a federation, run ``config`` on it, tear it down; return the run directory."""
    from server.rundir import new_run_id

    check_deployable(config, nodes)
    run_dir = (out if out is not None else Path(config.out_dir) / new_run_id()).resolve()
    if run_dir.exists() and any(run_dir.iterdir()):
        raise DeployError(f"{run_dir} already holds files; choose a new --out folder")
    work = (keep_dir if keep_dir is not None else run_dir / "deployment").resolve()
    layout = Layout(work)
    record = DeploymentRecord(str(work), nodes, tls, auth, aggregator_fingerprint="")
    federation = LocalFederation(layout, run_dir, record, console=console, verbose=verbose)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        federation.lock()
        key = config.seal_private_key
        record.aggregator_fingerprint = _prepare_material(
            layout, nodes, tls=tls, auth=auth, key=key
        )
    except ValueError:  # bad certificates or keys, a busy work directory: nothing ran
        federation.teardown()
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    with _interrupt_on_sigterm():
        try:
            key = key or str(layout.keys / "aggregator.key")
            config = _absolute(config.replace(sim_clients=nodes), run_dir, key)
            record.save(run_dir)
            outcome = _run(federation, config, resume=False)
        finally:
            footprint = federation.teardown()
    return run_dir, dataclasses.replace(outcome, footprint=footprint)


def federation_resume(run_dir: Path, *, console: Console, verbose: bool = False) -> RunOutcome:
    """Restart the federation of ``run_dir`` and continue its run from the last checkpoint."""
    from server.checkpoint import STATE_FILE
    from simulations.simulate import load_run_config

    run_dir = run_dir.resolve()
    record = DeploymentRecord.load(run_dir)
    config = load_run_config(run_dir)
    if not (run_dir / "checkpoint" / STATE_FILE).is_file():
        raise DeployError(f"{run_dir} has no checkpoint: it never finished a round")
    layout = Layout(Path(record.work_dir))
    federation = LocalFederation(layout, run_dir, record, console=console, verbose=verbose)
    federation.lock()
    with _interrupt_on_sigterm():
        try:
            fingerprint = _prepare_material(
                layout, record.nodes, tls=record.tls, auth=record.auth, key=config.seal_private_key
            )
            if fingerprint != record.aggregator_fingerprint:
                raise DeployError(
                    f"the aggregator key {config.seal_private_key} is not the one this run's "
                    f"nodes pin ({record.aggregator_fingerprint}); restore the original key"
                )
            outcome = _run(federation, config, resume=True)
        finally:
            footprint = federation.teardown()
    return dataclasses.replace(outcome, footprint=footprint)


def _run(federation: LocalFederation, config: FedveilConfig, *, resume: bool) -> RunOutcome:
    """Start the processes and run the app; the caller tears down."""
    record = federation.record
    federation.stage_app({**config.to_flat(), **DEPLOY_KEYS})
    federation.write_cli_config()
    federation.start_superlink()
    if resume:
        for previous in record.flower_runs:
            if not str(previous.get("status", "")).startswith("finished"):
                federation.stop_run(int(previous["run_id"]))
                previous["status"] = "stopped: resumed in a later run"
    if record.auth:
        federation.register_nodes()
    federation.start_supernodes()
    record.save(federation.run_dir)
    federation.monitor = FootprintMonitor(federation.table)
    federation.monitor.start()
    return federation.run_app(
        run_flat(config, federation.run_dir, resume=resume), config.num_server_rounds
    )


def print_summary(console: Console, run_dir: Path, outcome: RunOutcome) -> None:
    """Print the rounds, the privacy spent and the edge footprint of a deployed run."""
    from server.rundir import RoundRecord
    from simulations.progress import privacy_table, summary_table

    console.print(summary_table([RoundRecord.from_json(r) for r in _rows(run_dir)], run_dir))
    privacy = _json(run_dir / "privacy.json")
    if privacy is not None:
        console.print(privacy_table(privacy))
    app = outcome.footprint.get("clientapp", {})
    if app.get("messages"):
        console.print(
            f"ClientApp, per message: peak RSS {app['peak_rss_mib_median']} MiB median, "
            f"{app['peak_rss_mib_max']} MiB max, {app['seconds_median']} s median "
            f"({app['messages']} messages)"
        )
    daemons = outcome.footprint.get("daemons_peak_rss_mib", {})
    if daemons:
        console.print(
            f"SuperNode daemons: peak RSS up to {max(daemons.values())} MiB per process "
            f"(flower-supernode and its flower-superexec)"
        )
    console.print(f"Flower run {outcome.run_id}: {outcome.status}")


# ------------------------------------------------------------------------------ the ServerApp

server_app = ServerApp()


@server_app.main()
def _deployment_main(grid: Grid, context: Context) -> None:
    """Run (or resume) fedveil's server loop in the run directory the deployment names."""
    from server.federation import Federation
    from server.rundir import RunDirectory, RunDirError

    flat = dict(context.run_config)
    run_path = Path(str(flat.pop(RUN_DIR_KEY, "")))
    resume = flat.pop(RESUME_KEY, False) is True
    if not str(run_path) or str(run_path) == ".":
        raise ConfigError(f"config key `{RUN_DIR_KEY}` must name the run directory")
    config = FedveilConfig.from_flat(flat)
    if not resume and (run_path / RunDirectory.CONFIG).exists():
        raise RunDirError(f"{run_path} already holds a run; resume it or choose another")
    run_path.mkdir(parents=True, exist_ok=True)
    federation = Federation(
        grid, config, RunDirectory(run_path), run_id=context.run_id, run_tag=run_path.name
    )
    if resume:
        federation.restore()
    federation.run()
