"""``deployment.federation`` and the ``fedveil federation``/``keys`` commands (no Flower run).

Bad input, bad key material and a busy work directory must each end in one line and exit 2,
before any process starts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from common.config import FedveilConfig
from deployment.federation import DeployError, check_deployable, run_flat
from deployment.record import DeploymentRecord
from simulations.cli import main

DEFAULTS = FedveilConfig.from_flat({})


def test_run_flat_sets_the_run_directory_and_resume(tmp_path: Path) -> None:
    flat = run_flat(DEFAULTS, tmp_path / "run", resume=True)

    assert flat["run-dir"] == str(tmp_path / "run") and flat["resume"] is True
    assert FedveilConfig.from_flat(flat).run_dir == str(tmp_path / "run")
    others = {k: v for k, v in flat.items() if k not in ("run-dir", "resume")}
    assert others == {k: v for k, v in DEFAULTS.to_flat().items() if k not in ("run-dir", "resume")}


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


# ------------------------------------------------------------------------------ the commands


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_keys_generate_writes_the_aggregator_pair_and_prints_its_fingerprint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from common.crypto.signing import derive_signing_key
    from common.sealing import load_private_key

    code, out, err = _run(["keys", "generate", str(tmp_path / "k")], capsys)

    assert code == 0
    key = tmp_path / "k" / "aggregator.key"
    assert os.stat(key).st_mode & 0o777 == 0o600
    assert out.strip() == load_private_key(key).fingerprint()
    signing = derive_signing_key(load_private_key(key)).fingerprint()
    assert f"aggregator-signing-fingerprint={signing}" in err
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
        (
            ["federation", "up", "--nodes", "2", "--set", "dp.target-epsilon=9"],
            "above `dp.budget`",
        ),
        (["federation", "up", "--nodes", "2", "--set", "nope=1"], "unknown config key `nope`"),
        (["federation", "up", "--resume", "RUN", "--nodes", "2"], "drop --nodes"),
        (["federation", "up", "--resume", "RUN"], "was not made by `fedveil federation up`"),
        (["federation", "up", "--resume", "RUN", "--node-data", "DIR"], "drop --node-data"),
        (["federation", "up", "--nodes", "2", "--node-env", "DIR"], "no bin/flower-supernode"),
        (["federation", "up", "--nodes", "2", "--node-data", "DIR"], "not found"),
        (["federation", "up", "--nodes", "2", "--set", "task=nosuch.task"], "`nosuch.task` not"),
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


def test_node_data_without_a_file_for_each_node_stops_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "node-0.csv").write_text("label\n")
    argv = ["federation", "up", "--nodes", "2", "--node-data", str(tmp_path / "data")]

    code, _, err = _run([*argv, "--out", str(tmp_path / "run")], capsys)

    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "no `node-1.*` for SuperNode 1" in err
    assert not (tmp_path / "run").exists()


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
    import numpy as np

    from common.sealing import AggregatorKeyPair, write_keypair
    from server.checkpoint import Checkpoint, save_checkpoint
    from server.ledger import PrivacyLedger

    pinned = AggregatorKeyPair.generate()
    write_keypair(tmp_path / "other", AggregatorKeyPair.generate())  # not what nodes pin
    run = tmp_path / "run"
    DeploymentRecord(str(tmp_path / "work"), 2, False, False, pinned.fingerprint()).save(run)
    key = str(tmp_path / "other" / "aggregator.key")
    (run / "config.json").write_text(json.dumps({**DEFAULTS.to_flat(), "seal.private-key": key}))
    ledger = PrivacyLedger(accountant="rdp", delta=1e-5, budget=8.0).to_json()
    arrays = {"w": np.zeros(1, np.float32)}
    save_checkpoint(run / "checkpoint", Checkpoint("run", 1, arrays, {}, set(), ledger))

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
