"""``deployment.local`` without processes: what each SuperNode is told and where it runs from."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args
from rich.console import Console

from deployment.layout import Layout, state_dir
from deployment.local import LocalDeployment
from deployment.record import DeploymentRecord


def _local(tmp_path: Path, node_data: tuple[str, ...] = (), node_env: str = "") -> LocalDeployment:
    record = DeploymentRecord(str(tmp_path / "work"), 2, False, False, "sha256:ab")
    record.node_data, record.node_env = list(node_data), node_env
    return LocalDeployment(Layout(tmp_path / "work"), tmp_path / "run", record, console=Console())


def test_without_node_data_a_node_gets_its_partition(tmp_path: Path) -> None:
    config = parse_config_args([_local(tmp_path).node_config(1)])

    assert config == {
        "partition-id": 1,
        "num-partitions": 2,
        "state-dir": str(state_dir(tmp_path / "run", 1)),
        "aggregator-fingerprint": "sha256:ab",
    }


def test_a_node_pins_the_signing_key_when_the_record_names_one(tmp_path: Path) -> None:
    local = _local(tmp_path)
    local.record.signing_fingerprint = "sha256:cd"

    config = parse_config_args([local.node_config(0)])

    assert config["aggregator-signing-fingerprint"] == "sha256:cd"
    assert config["aggregator-fingerprint"] == "sha256:ab"


def test_with_node_data_a_node_gets_its_own_data_path(tmp_path: Path) -> None:
    local = _local(tmp_path, node_data=("/site-0/a.csv", "/site-1/b.csv"))

    assert parse_config_args([local.node_config(1)])["data-path"] == "/site-1/b.csv"
    assert parse_config_args([local.node_config(0)])["data-path"] == "/site-0/a.csv"


def test_nodes_run_from_this_env_unless_told(tmp_path: Path) -> None:
    assert _local(tmp_path).node_bin == Path(sys.executable).parent


def test_nodes_from_another_env_get_its_bin_first_and_no_pythonpath(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv = tmp_path / "edge"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "flower-supernode").write_text("#!/bin/sh\n")
    monkeypatch.setenv("PYTHONPATH", "/checkout")
    local = _local(tmp_path, node_env=str(venv))

    node_env = local.env(tmp_path / "home", local.node_bin)
    link_env = local.env(tmp_path / "home")

    assert local.node_bin == venv / "bin"
    assert node_env["PATH"].split(os.pathsep)[0] == str(venv / "bin")
    assert "PYTHONPATH" not in node_env
    assert link_env["PYTHONPATH"] == "/checkout"  # the SuperLink side is this environment
    assert link_env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
