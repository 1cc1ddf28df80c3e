"""``deployment.commands``: checked with Flower 1.39's own parsers and config readers.

A flag or a format that Flower would not accept fails here rather than in a deployment.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
from flwr.cli.flower_config import read_superlink_connection
from flwr.common.config import flatten_dict, parse_config_args
from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink
from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode

from common.config import FedveilConfig
from deployment.commands import (
    flwr_config_toml,
    flwr_run_command,
    json_in,
    node_config_arg,
    parse_node_id,
    parse_run_id,
    run_status,
    superlink_command,
    supernode_command,
    toml_lines,
)
from deployment.errors import DeployError
from deployment.layout import Layout, Ports

BIN = Path("/venv/bin")
DEFAULTS = FedveilConfig.from_flat({})
PORTS = Ports(control=18000, fleet=18001, nodes=(18010, 18011, 18012))


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(tmp_path / "work")


# ------------------------------------------------------------------------------ TOML and configs


def test_run_config_lines_round_trip_through_toml() -> None:
    flat = {
        **DEFAULTS.to_flat(),
        "data-dir": 'a "quoted" \\ path with spaces and ünïcode',
        "dp.delta": 1e-5,
        "lr": 0.1 + 0.2,
        "run-dir": "/runs/x",
        "resume": True,
    }

    parsed = flatten_dict(tomllib.loads("\n".join(toml_lines(flat))))

    assert parsed == flat
    assert {type(v) for v in parsed.values()} <= {bool, int, float, str}
    assert all(type(parsed[k]) is type(v) for k, v in flat.items())


@pytest.mark.parametrize("key", ["bad key", "a..b", "", "x=y", 'q"'])
def test_toml_lines_refuse_keys_that_are_not_bare(key: str) -> None:
    with pytest.raises(ValueError, match="bare dotted TOML key"):
        toml_lines({key: 1})


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_toml_lines_refuse_non_finite_numbers(value: float) -> None:
    with pytest.raises(ValueError, match="non-finite"):
        toml_lines({"lr": value})


def test_node_config_is_what_flower_parses() -> None:
    values: dict[str, Any] = {
        "partition-id": 2,
        "num-partitions": 3,
        "state-dir": "/var/lib/fedveil/my state",
        "aggregator-fingerprint": "sha256:" + "ab" * 32,
    }

    assert parse_config_args([node_config_arg(values)]) == values


@pytest.mark.parametrize("bad", ['a"b', "a'b", "a\\b"])
def test_node_config_refuses_quotes(bad: str) -> None:
    with pytest.raises(DeployError, match="quotes"):
        node_config_arg({"state-dir": bad})


def test_cli_connection_is_read_by_flower(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    ca = tmp_path / "ca.pem"
    (tmp_path / "config.toml").write_text(flwr_config_toml(18000, ca_cert=ca))

    conn = read_superlink_connection(None)

    assert conn.name == "fedveil"
    assert conn.address == "127.0.0.1:18000"
    assert conn.root_certificates == str(ca)
    assert conn.insecure is False

    (tmp_path / "config.toml").write_text(flwr_config_toml(18000, ca_cert=None))
    assert read_superlink_connection("fedveil").insecure is True


# ------------------------------------------------------------------------------ command lines


@pytest.mark.parametrize(("tls", "auth"), [(False, False), (True, False), (True, True)])
def test_superlink_command_parses_with_flowers_parser(
    layout: Layout, tls: bool, auth: bool
) -> None:
    command = superlink_command(BIN, layout, PORTS, tls=tls, auth=auth)
    args = _parse_args_run_superlink().parse_args(command[1:])

    assert command[0] == "/venv/bin/flower-superlink"
    assert args.host == "127.0.0.1" and args.port == 18000
    assert args.fleet_api_type == "grpc-rere"
    assert args.fleet_api_address == "127.0.0.1:18001"
    assert args.database == str(layout.database)
    assert args.runtime_dependency_install is False
    assert args.insecure is (not tls)
    assert args.enable_supernode_auth is auth
    assert args.auth_list_public_keys is None
    if tls:
        assert args.ssl_ca_certfile == str(layout.tls / "ca.pem")
        assert args.ssl_certfile == str(layout.tls / "server.pem")
        assert args.ssl_keyfile == str(layout.tls / "server.key")


@pytest.mark.parametrize(("tls", "auth"), [(False, False), (True, True)])
def test_supernode_command_parses_with_flowers_parser(
    layout: Layout, tls: bool, auth: bool
) -> None:
    node_config = node_config_arg({"partition-id": 1, "num-partitions": 3})
    command = supernode_command(BIN, layout, PORTS, 1, tls=tls, auth=auth, node_config=node_config)
    args = _parse_args_run_supernode().parse_args(command[1:])

    assert args.superlink == "127.0.0.1:18001"
    assert args.transport == "grpc-rere"
    assert args.host == "127.0.0.1" and args.port == 18011
    assert parse_config_args([args.node_config]) == {"partition-id": 1, "num-partitions": 3}
    assert args.insecure is (not tls)
    assert args.root_certificates == (str(layout.tls / "ca.pem") if tls else None)
    expected_key = str(layout.node(1) / "node.key") if auth else None
    assert args.auth_supernode_private_key == expected_key


def test_flwr_run_command_runs_the_staged_app_with_its_run_config(layout: Layout) -> None:
    command = flwr_run_command(BIN, layout)

    assert command[:4] == ["/venv/bin/flwr", "run", str(layout.app), "fedveil"]
    assert command[command.index("--run-config") + 1] == str(layout.run_config)
    assert "--stream" in command


# ------------------------------------------------------------------------------ what Flower says


def test_run_id_is_read_from_flwr_run_output() -> None:
    text = "Using SuperLink: fedveil\n\x1b[32mSuccessfully started run 7749389834892243562\x1b[0m\n"

    assert parse_run_id(text) == 7749389834892243562
    assert parse_run_id("Failed to start run") is None


def test_node_id_is_read_from_a_supernode_log() -> None:
    assert parse_node_id("INFO :      SuperNode ID: 1234567\n") == 1234567
    assert parse_node_id("INFO :      Starting Flower SuperNode\n") is None


def test_json_is_found_after_a_banner() -> None:
    assert json_in('Loading...\n{"success": true, "runs": []}\n') == {"success": True, "runs": []}
    assert json_in("no json here") is None
    assert json_in("[1, 2]") is None


def test_run_status_is_read_from_flwr_ls_json() -> None:
    doc = {
        "success": True,
        "runs": [
            {"run-id": "1", "status": "finished:failed", "status-details": "boom"},
            {"run-id": "2", "status": "finished:completed", "status-details": "N/A"},
        ],
    }

    assert run_status(doc, 2) == ("finished:completed", "N/A")
    assert run_status(doc, 1) == ("finished:failed", "boom")
    assert run_status(doc, 3)[0] == "unknown"
    assert run_status({}, 3)[0] == "unknown"
