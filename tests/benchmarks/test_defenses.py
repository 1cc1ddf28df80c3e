"""The defenses benchmark's command line: settings, refusals and its JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.defenses import (
    ROOT_EXAMPLES,
    base_settings,
    build_parser,
    report_json,
)
from benchmarks.defenses_results import FlagCounts, cost_summary, robustness_row
from benchmarks.provenance import write_json
from common.config import FedveilConfig


@pytest.mark.parametrize(("dataset", "rounds"), [("digits", 15), ("mnist", 8)])
def test_every_run_is_dense_with_a_root_set_and_a_valid_config(dataset: str, rounds: int) -> None:
    settings = base_settings(dataset, "/data", quick=False, rounds=None)

    assert settings["codec.topk"] == 1.0 and settings["codec.bits"] == 8
    assert settings["robust.root-examples"] == ROOT_EXAMPLES
    assert settings["num-server-rounds"] == rounds
    assert base_settings(dataset, "/data", quick=True, rounds=4)["num-server-rounds"] == 4
    FedveilConfig.from_flat(settings)


def test_json_holds_the_settings_every_row_and_its_provenance(tmp_path: Path) -> None:
    args = build_parser().parse_args(["--quick", "--seeds", "2", "--datasets", "digits"])
    robust = [robustness_row("digits", "median", "scale", [0.8, 0.9], FlagCounts())]
    costs = [cost_summary("digits", [0.9], [0.89])]

    write_json(tmp_path / "d.json", report_json(args, ["digits"], robust, costs, []))

    doc = json.loads((tmp_path / "d.json").read_text())
    assert {"date", "commit", "machine"} <= set(doc)
    assert doc["settings"]["datasets"] == ["digits"] and doc["settings"]["seeds"] == 2
    assert doc["settings"]["quick"] is True
    assert doc["robustness"][0]["aggregation"] == "median"
    assert doc["robustness"][0]["accuracy"] == pytest.approx(0.85)
    assert doc["watermark_cost"][0]["mean_cost"] == pytest.approx(0.01)
    assert doc["watermark"] == []
