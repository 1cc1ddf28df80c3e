"""Unit tests of ``deployment.federation`` and the ``federation``/``keys`` commands (no Flower run).

Command lines are checked with Flower 1.39's own argument parsers and config readers, so a flag
or a format that Flower would not accept fails here rather than in a deployment.
"""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
from flwr.cli.build import build_fab_from_disk
from flwr.cli.flower_config import read_superlink_connection
from flwr.common.config import flatten_dict, parse_config_args, validate_config
from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink
from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode
from rich.console import Console

from common.config import KEYS, FedveilConfig
from deployment.federation import (
    DEPLOY_KEYS,
    DeployError,
    DeploymentRecord,
    Layout,
    LocalFederation,
    Ports,
    ProcessTable,
    check_deployable,
    flwr_config_toml,
    footprint_summary,
    free_ports,
    node_config_arg,
    parse_run_id,
    run_flat,
    run_status,
    staged_pyproject,
    stop_order,
    stop_tree,
    superlink_command,
    supernode_command,
    toml_lines,
)
from deployment.processes import process_tree, start_time
from simulations.cli import main

BIN = Path("/venv/bin")
DEFAULTS = FedveilConfig.from_flat({})


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(tmp_path / "work")


PORTS = Ports(control=18000, fleet=18001, nodes=(18010, 18011, 18012))


# ------------------------------------------------------------------------------ TOML and configs


def test_run_config_lines_round_trip_through_toml() -> None:
    flat = {
        **DEFAULTS.to_flat(),
        "data-dir": 'a "quoted" \\ path with spaces and ünïcode',
        "dp.delta": 1e-5,
        "lr": 0.1 + 0.2,
        **DEPLOY_KEYS,
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


def test_staged_pyproject_is_a_valid_flower_app_with_every_key() -> None:
    doc = tomllib.loads(staged_pyproject({**DEFAULTS.to_flat(), **DEPLOY_KEYS}))

    valid, errors, _ = validate_config(doc, check_module=False)
    assert valid, errors
    app = doc["tool"]["flwr"]["app"]
    assert app["components"] == {
        "serverapp": "deployment.federation:server_app",
        "clientapp": "client.app:app",
    }
    assert set(flatten_dict(app["config"])) == set(KEYS) | set(DEPLOY_KEYS)
    assert "federations" not in doc["tool"]["flwr"]
    assert not any("extra ==" in d for d in doc["project"]["dependencies"])


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


def test_stop_order_puts_the_serverapp_before_the_nodes() -> None:
    names = ["superlink", "supernode-0", "supernode-1", "flwr-run"]

    assert stop_order(names) == ["flwr-run", "superlink", "supernode-0", "supernode-1"]


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(6)

    assert len(set(ports)) == 6
    assert all(1024 <= p <= 65535 for p in ports)
    picked = Ports.pick(3)
    assert len({picked.control, picked.fleet, *picked.nodes}) == 5


# ------------------------------------------------------------------------------ run outcome


def test_run_id_is_read_from_flwr_run_output() -> None:
    text = "Using SuperLink: fedveil\n\x1b[32mSuccessfully started run 7749389834892243562\x1b[0m\n"

    assert parse_run_id(text) == 7749389834892243562
    assert parse_run_id("Failed to start run") is None


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


def test_footprint_summary() -> None:
    samples = [
        {"peak_rss_mib": 600.0, "seconds": 20.0},
        {"peak_rss_mib": 620.5, "seconds": 30.0},
        {"peak_rss_mib": 610.0, "seconds": 25.0},
    ]

    assert footprint_summary(samples) == {
        "messages": 3,
        "peak_rss_mib_max": 620.5,
        "peak_rss_mib_median": 610.0,
        "seconds_median": 25.0,
    }
    assert footprint_summary([]) == {"messages": 0}


def test_run_flat_adds_the_deployment_keys(tmp_path: Path) -> None:
    flat = run_flat(DEFAULTS, tmp_path / "run", resume=True)

    assert flat["run-dir"] == str(tmp_path / "run") and flat["resume"] is True
    others = {k: v for k, v in flat.items() if k not in DEPLOY_KEYS}
    assert others == {k: v for k, v in DEFAULTS.to_flat().items() if k not in DEPLOY_KEYS}


@pytest.mark.parametrize(
    ("nodes", "changes", "words"),
    [
        (0, {}, "--nodes must be >= 1"),
        (1, {}, "min-train-clients"),
        (3, {"min_train_clients": 4}, "--nodes 4"),
    ],
)
def test_undeployable_settings_are_refused(nodes: int, changes: dict[str, Any], words: str) -> None:
    with pytest.raises(DeployError, match=words):
        check_deployable(DEFAULTS.replace(**changes), nodes)


def test_deployable_settings_pass() -> None:
    check_deployable(DEFAULTS, 2)
    check_deployable(DEFAULTS.replace(min_train_clients=1), 1)


# ------------------------------------------------------------------------------ deployment.json


def test_deployment_record_round_trips(tmp_path: Path) -> None:
    record = DeploymentRecord(
        "/work", 3, True, True, "sha256:" + "00" * 32, {"fleet": "127.0.0.1:1"}, {"0": 2**63}
    )
    record.flower_runs.append({"run_id": "5", "status": "finished:completed"})
    record.save(tmp_path)

    loaded = DeploymentRecord.load(tmp_path)

    assert loaded == record
    doc = json.loads((tmp_path / "deployment.json").read_text())
    assert doc["kind"] == "fedveil-deployment" and doc["version"] == 1


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "was not made by `fedveil federation up`"),
        ("{", "is corrupt"),
        ('{"version": 9}', "unknown version"),
        ('{"version": 1}', "is corrupt"),
        ("[]", "is corrupt"),
    ],
)
def test_bad_deployment_record_is_one_line(tmp_path: Path, content: str | None, words: str) -> None:
    if content is not None:
        (tmp_path / "deployment.json").write_text(content)

    with pytest.raises(DeployError) as exc:
        DeploymentRecord.load(tmp_path)

    assert words in str(exc.value) and "\n" not in str(exc.value)


# ------------------------------------------------------------------------------ staged app


@pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")  # inside flwr build
def test_staged_app_builds_a_small_fab_with_only_what_the_apps_run(tmp_path: Path) -> None:
    record = DeploymentRecord(str(tmp_path / "work"), 2, False, False, "")
    federation = LocalFederation(
        Layout(tmp_path / "work"), tmp_path / "run", record, console=Console(file=io.StringIO())
    )

    federation.stage_app({**DEFAULTS.to_flat(), **DEPLOY_KEYS})
    fab = build_fab_from_disk(federation.layout.app)

    names = zipfile.ZipFile(io.BytesIO(fab)).namelist()
    assert "client/app.py" in names and "deployment/federation.py" in names
    assert "common/crypto/certificates.py" in names
    assert not any(n.startswith(("tests/", "runs/", ".venv/")) for n in names)
    assert not any("__pycache__" in n for n in names)
    assert len(fab) < 1_000_000


# ------------------------------------------------------------------------------ processes


def _spawn_tree() -> subprocess.Popen[bytes]:
    """A session leader with a child and a grandchild (all sleeping)."""
    return subprocess.Popen(
        ["/bin/sh", "-c", "sh -c 'sleep 60 & wait' & sleep 60 & wait"],
        start_new_session=True,
    )


def _until(check: Any, timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_process_tree_and_stop_tree_stop_every_descendant() -> None:
    proc = _spawn_tree()
    try:
        start = start_time(proc.pid)
        assert start is not None
        _until(lambda: len(process_tree(proc.pid, start)) >= 4)
        tree = process_tree(proc.pid, start)

        stop_tree(tree, sig=signal.SIGTERM, grace=5.0, popen=proc)

        assert all(start_time(pid) != s for pid, s in tree)
        assert proc.poll() is not None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_pid_with_another_start_time_is_never_signalled(tmp_path: Path) -> None:
    me = os.getpid()
    record = tmp_path / "pids.json"
    record.write_text(json.dumps([{"name": "superlink", "pid": me, "start": 1}]))

    assert ProcessTable.reap_stale(record) == []  # this test process survives

    assert process_tree(me, 1) == []
    assert not record.exists()


def test_reap_stale_stops_a_recorded_tree(tmp_path: Path) -> None:
    proc = _spawn_tree()
    try:
        start = start_time(proc.pid)
        _until(lambda: len(process_tree(proc.pid, start or 0)) >= 4)
        record = tmp_path / "pids.json"
        record.write_text(json.dumps([{"name": "supernode-0", "pid": proc.pid, "start": start}]))

        assert ProcessTable.reap_stale(record) == ["supernode-0"]

        _until(lambda: proc.poll() is not None)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_process_table_records_and_stops_its_processes(tmp_path: Path) -> None:
    table = ProcessTable(tmp_path / "pids.json", tmp_path)
    managed = table.start("sleeper", ["/bin/sleep", "60"], dict(os.environ), tmp_path / "s.log")

    doc = json.loads((tmp_path / "pids.json").read_text())
    assert doc == [{"name": "sleeper", "pid": managed.pid, "start": managed.start}]
    assert managed.alive()

    table.stop_all(grace=5.0)

    assert not managed.alive()
    assert not (tmp_path / "pids.json").exists()
    assert "--- fedveil: /bin/sleep 60" in (tmp_path / "s.log").read_text()


# ------------------------------------------------------------------------------ the commands


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_keys_generate_writes_the_aggregator_pair_and_prints_its_fingerprint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from common.sealing import load_private_key

    code, out, _ = _run(["keys", "generate", str(tmp_path / "k")], capsys)

    assert code == 0
    key = tmp_path / "k" / "aggregator.key"
    assert os.stat(key).st_mode & 0o777 == 0o600
    assert out.strip() == load_private_key(key).fingerprint()
    before = key.read_bytes()

    code, out, err = _run(["keys", "generate", str(tmp_path / "k")], capsys)

    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "refusing to overwrite" in err
    assert key.read_bytes() == before


def test_keys_generate_tls_and_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(
        ["keys", "generate", "--tls", "--host", "10.1.2.3", str(tmp_path / "tls")], capsys
    )
    assert code == 0 and out.strip() == str(tmp_path / "tls" / "ca.pem")

    code, out, _ = _run(["keys", "generate", "--node", str(tmp_path / "n")], capsys)
    assert code == 0 and out.startswith("ecdsa-sha2-nistp384 ")

    code, _, err = _run(["keys", "generate", "--node", str(tmp_path / "n")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["federation", "up"], "--nodes N is required"),
        (["federation", "up", "--nodes", "2", "--auth"], "--auth needs --tls"),
        (["federation", "up", "--nodes", "1"], "min-train-clients"),
        (["federation", "up", "--nodes", "2", "--set", "nope=1"], "unknown config key `nope`"),
        (["federation", "up", "--resume", "RUN", "--nodes", "2"], "drop --nodes"),
        (["federation", "up", "--resume", "RUN"], "was not made by `fedveil federation up`"),
        (["keys", "generate", "--host", "h", "DIR"], "use it with --tls"),
        (["keys", "generate", "--tls", "--days", "0", "DIR"], "`days` must be >= 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(tmp_path / a) if a in ("RUN", "DIR") else a for a in argv]
    code, out, err = _run(argv, capsys)

    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and words in err, err


def test_federation_up_refuses_an_occupied_run_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("{}\n")

    code, _, err = _run(
        ["federation", "up", "--nodes", "2", "--out", str(tmp_path / "run")], capsys
    )

    assert code == 2 and "already holds files" in err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["metrics.jsonl"]


@pytest.mark.parametrize("problem", ["expired", "wrong CA"])
def test_bad_kept_certificates_stop_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], problem: str
) -> None:
    import datetime as dt

    from common.crypto.certificates import create_tls_files

    keep = tmp_path / "keep"
    if problem == "expired":
        past = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
        create_tls_files(keep / "tls", valid_from=past, days=10)
    else:
        create_tls_files(keep / "tls")
        create_tls_files(tmp_path / "other")
        (keep / "tls" / "ca.pem").write_bytes((tmp_path / "other" / "ca.pem").read_bytes())
    before = sorted(p.name for p in (keep / "tls").iterdir())
    argv = ["federation", "up", "--nodes", "2", "--tls", "--out", str(tmp_path / "run")]

    code, out, err = _run([*argv, "--keep-dir", str(keep)], capsys)

    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and problem in err, err
    assert not (tmp_path / "run").exists()  # nothing written, nothing started
    assert sorted(p.name for p in (keep / "tls").iterdir()) == before
    assert not (keep / "pids.json").exists()


def test_a_busy_work_directory_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import fcntl

    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "pids.json").write_text("[]")
    with (keep / "lock").open("a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another orchestrator
        argv = ["federation", "up", "--nodes", "2", "--out", str(tmp_path / "run")]
        code, _, err = _run([*argv, "--keep-dir", str(keep)], capsys)

    assert code == 2 and "in use by another running federation" in err
    assert (keep / "pids.json").read_text() == "[]"  # its record is left alone
    assert not (tmp_path / "run").exists()


def test_resume_with_another_aggregator_key_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from common.sealing import AggregatorKeyPair, write_keypair

    pinned = AggregatorKeyPair.generate()
    write_keypair(tmp_path / "other", AggregatorKeyPair.generate())  # not what nodes pin
    run = tmp_path / "run"
    DeploymentRecord(str(tmp_path / "work"), 2, False, False, pinned.fingerprint()).save(run)
    key = str(tmp_path / "other" / "aggregator.key")
    (run / "config.json").write_text(json.dumps({**DEFAULTS.to_flat(), "seal.private-key": key}))
    (run / "checkpoint").mkdir()
    (run / "checkpoint" / "state.json").write_text("{}")

    code, _, err = _run(["federation", "up", "--resume", str(run)], capsys)

    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "is not the one this run's nodes pin" in err and pinned.fingerprint() in err
    assert not (tmp_path / "work" / "pids.json").exists()  # nothing was started


def test_resume_without_checkpoint_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    DeploymentRecord(str(tmp_path / "work"), 2, False, False, "sha256:x").save(run)
    (run / "config.json").write_text(json.dumps(DEFAULTS.to_flat()))

    code, _, err = _run(["federation", "up", "--resume", str(run)], capsys)

    assert code == 2 and "has no checkpoint" in err
