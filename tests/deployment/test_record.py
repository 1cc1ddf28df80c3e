"""``deployment.record``: ``deployment.json`` round-trips; a bad one is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deployment.errors import DeployError
from deployment.record import DeploymentRecord


def test_deployment_record_round_trips(tmp_path: Path) -> None:
    record = DeploymentRecord(
        "/work", 3, True, True, "sha256:" + "00" * 32, {"fleet": "127.0.0.1:1"}, {"0": 2**63}
    )
    record.flower_runs.append({"run_id": "5", "status": "finished:completed"})
    record.node_data = ["/data/node-0.csv", "/data/node-1.csv", "/data/node-2"]
    record.node_env = "/opt/edge-venv"
    record.task_root = "/home/me/project"
    record.signing_fingerprint = "sha256:" + "11" * 32
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


def test_a_record_without_node_data_or_node_env_reads_as_partitions_and_this_env(
    tmp_path: Path,
) -> None:
    DeploymentRecord("/work", 2, False, False, "sha256:" + "00" * 32).save(tmp_path)
    doc = json.loads((tmp_path / "deployment.json").read_text())
    # as before these fields existed
    del doc["node_data"], doc["node_env"], doc["task_root"], doc["signing_fingerprint"]
    (tmp_path / "deployment.json").write_text(json.dumps(doc))

    loaded = DeploymentRecord.load(tmp_path)

    assert loaded.node_data == [] and loaded.node_env == "" and loaded.task_root == ""
    assert loaded.signing_fingerprint == ""
