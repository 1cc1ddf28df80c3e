"""Where a local federation keeps its files, and the loopback ports its processes listen on.

The *work directory* (``--keep-dir``, default ``RUN_DIR/deployment``) keeps what a restart
needs: ``tls/`` (CA and server certificate), ``keys/`` (the aggregator's HPKE key pair),
``nodes/node-<i>/`` (a SuperNode's authentication key and ``FLWR_HOME``), ``superlink/``
(``FLWR_HOME`` and ``state.db``), ``flwr-home/`` (the CLI's connection), ``app/`` (the staged
app), ``logs/`` (every process's output, ``footprint.json``) and ``pids.json``. In the run
directory, SuperNode ``i`` keeps its durable state in ``client-state/partition-<i>/``, where a
simulation keeps the same client's state.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Final

HOST: Final = "127.0.0.1"


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


def accepts(port: int) -> bool:
    """Whether something accepts TCP connections on ``127.0.0.1:port``."""
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
        return True
    return False
