"""The codec benchmark's command line: plans, settings, and its JSON from fabricated runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.codec import (
    CNN_SIZE,
    DENSE,
    LARGE_SIZE,
    RAW_SIZES,
    SETTINGS,
    accuracy_table,
    build_parser,
    build_plan,
    report_json,
)
from benchmarks.codec_micro import MicroRow
from benchmarks.codec_results import attach_costs, summarize_metrics
from benchmarks.provenance import write_json
from benchmarks.runs import read_rounds
from common.models import create_model


def _fake_run(folder: Path, sealed: int, accuracies: list[float]) -> Path:
    """A run directory holding only metrics.jsonl: two clients of a 100-parameter model."""
    folder.mkdir(parents=True)
    lines = [
        {
            "round": i + 1,
            "accuracy": acc,
            "loss": 1.0,
            "watermark_accuracy": None,
            "clients": [11, 12],
            "rejected": [],
            "flagged": [],
            "bytes_sealed": sealed,
            "bytes_dense": 800,
            "seconds": 2.0,
        }
        for i, acc in enumerate(accuracies)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder


def test_cnn_size_constant_is_the_cnn() -> None:
    cnn = create_model("cnn", 10, seed=0)
    assert sum(t.numel() for t in cnn.state_dict().values()) == CNN_SIZE


def test_every_setting_names_a_valid_codec_and_the_random_mask_is_compared() -> None:
    assert SETTINGS[0] == DENSE
    assert len({s.name for s in SETTINGS}) == len(SETTINGS)
    assert {s.mask for s in SETTINGS} == {"topk", "random"}
    for s in SETTINGS:
        assert s.params.mask == s.mask and s.overrides()["codec.mask"] == s.mask


def test_micro_only_plans_no_runs_and_the_full_microbenchmarks() -> None:
    plan = build_plan(build_parser().parse_args(["--micro-only", "--repeats", "5"]))

    assert plan.scenarios == ()
    assert set(plan.skipped) == {"digits", "mnist"}
    assert plan.micro_sizes == (CNN_SIZE, LARGE_SIZE) and plan.raw_sizes == RAW_SIZES
    assert plan.repeats == 5


def test_without_a_data_folder_the_plan_runs_digits_only() -> None:
    plan = build_plan(build_parser().parse_args(["--rounds-digits", "4", "--set", "lr=0.1"]))

    (digits,) = plan.scenarios
    assert digits.dataset == "digits" and "--data-dir" in plan.skipped["mnist"]
    assert digits.flat["num-server-rounds"] == 4 and str(digits.flat["lr"]) == "0.1"


def test_json_from_fabricated_runs_has_every_number_and_its_provenance(tmp_path: Path) -> None:
    plan = build_plan(build_parser().parse_args(["--quick"]))
    dense = summarize_metrics(DENSE.name, read_rounds(_fake_run(tmp_path / "d", 800, [0.8, 0.9])))
    small = summarize_metrics("top1-4bit", read_rounds(_fake_run(tmp_path / "t", 8, [0.7, 0.88])))
    results = {"digits": attach_costs([dense, small], [0.001, 0.001])}
    micro = [MicroRow("dense-f32", 10, 44, 1.0, 2.0, 3.0, 4.0, 5.0)]

    write_json(tmp_path / "codec.json", report_json(plan, results, micro, [0.5, 0.4, 0.3]))

    doc = json.loads((tmp_path / "codec.json").read_text())
    assert {"date", "commit", "machine"} <= set(doc) and doc["machine"]["cpus"] >= 1
    assert doc["benchmark"] == "codec" and doc["skipped"] == plan.skipped
    assert doc["plan"]["datasets"]["digits"]["sim.clients"] == 3
    digits = doc["accuracy"]["digits"]
    assert digits["rounds"] == 2
    assert [r["setting"] for r in digits["runs"]] == [DENSE.name, "top1-4bit"]
    assert digits["runs"][1]["ratio"] == pytest.approx(100.0)
    assert digits["runs"][1]["accuracy_loss_points"] == pytest.approx(2.0)
    assert digits["verdict"]["at_ratio"]["setting"] == "top1-4bit"
    assert doc["micro"][0]["payload_bytes"] == 44 and doc["load_average_before"][0] == 0.5
    assert accuracy_table(results).row_count == 2
