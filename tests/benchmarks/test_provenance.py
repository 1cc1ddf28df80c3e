"""Benchmark JSON carries the date, the commit and the machine it was measured on."""

from __future__ import annotations

import datetime
import json
import re
import subprocess
from pathlib import Path

from benchmarks.provenance import RESULTS_DIR, stamp, write_json
from tests.conftest import REPO


def test_stamp_names_date_commit_and_machine_before_the_numbers() -> None:
    doc = stamp({"benchmark": "x", "value": 1})

    assert list(doc)[:4] == ["date", "commit", "uncommitted", "machine"]
    assert doc["benchmark"] == "x" and doc["value"] == 1
    when = datetime.datetime.fromisoformat(doc["date"])
    assert abs(datetime.datetime.now(datetime.UTC) - when) < datetime.timedelta(minutes=1)
    machine = doc["machine"]
    assert machine["cpus"] >= 1 and machine["torch"] and machine["platform"]


def test_commit_is_this_checkout_head() -> None:
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()

    commit = stamp({})["commit"]

    assert re.fullmatch(r"[0-9a-f]{40}", head)
    assert commit == head


def test_write_json_creates_the_folder_and_writes_the_stamped_document(tmp_path: Path) -> None:
    path = tmp_path / "results" / "x.json"

    write_json(path, {"rows": [1, 2]})

    doc = json.loads(path.read_text())
    assert doc["rows"] == [1, 2] and "commit" in doc


def test_results_live_beside_the_benchmarks() -> None:
    assert RESULTS_DIR == REPO / "benchmarks" / "results"
