"""``deployment.layout``: where a federation's files are, and its ports."""

from __future__ import annotations

import socket
from pathlib import Path

from deployment.layout import Layout, Ports, accepts, free_ports, state_dir


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(6)

    assert len(set(ports)) == 6
    assert all(1024 <= p <= 65535 for p in ports)
    picked = Ports.pick(3)
    assert len({picked.control, picked.fleet, *picked.nodes}) == 5


def test_accepts_sees_a_listening_port_only() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = int(server.getsockname()[1])

        assert accepts(port)
    assert not accepts(port)


def test_node_state_is_where_a_simulation_keeps_the_same_partition(tmp_path: Path) -> None:
    assert state_dir(tmp_path, 2) == tmp_path / "client-state" / "partition-2"
    layout = Layout(tmp_path)
    assert layout.database.parent == layout.superlink_home
    assert layout.node(1) == tmp_path / "nodes" / "node-1"
