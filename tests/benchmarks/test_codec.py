"""The codec benchmark: its quick form runs the real stack and reports sane, complete numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.codec import (
    CNN_SIZE,
    DENSE,
    LARGE_SIZE,
    RAW_SIZES,
    SETTINGS,
    BenchError,
    RunResult,
    RunSummary,
    build_parser,
    build_plan,
    main,
    median_seconds,
    summarize_metrics,
    verdict,
)
from common.models import create_model
from tests.conftest import REPO


def _parameters(name: str) -> int:
    return sum(t.numel() for t in create_model(name, 10, seed=0).state_dict().values())


def _row(round_: int, clients: int, sealed: int, seconds: float, accuracy: float) -> dict[str, Any]:
    return {
        "round": round_,
        "accuracy": accuracy,
        "clients": list(range(clients)),
        "bytes_sealed": sealed,
        "bytes_dense": clients * 4 * 100,
        "seconds": seconds,
    }


def _result(setting: str, ratio: float, loss: float, share: float = 0.001) -> RunResult:
    summary = RunSummary(setting, 3, 100, 400 / ratio, ratio, 0.9 - loss / 100, 1.0, 2.0)
    return RunResult(summary, loss, share / 2, share)


def test_cnn_size_constant_is_the_cnn() -> None:
    assert _parameters("cnn") == CNN_SIZE


def test_summary_skips_round_one_time_and_counts_per_update() -> None:
    rows = [_row(1, 2, 100, 30.0, 0.5), _row(2, 2, 60, 2.0, 0.7), _row(3, 1, 40, 4.0, 0.8)]

    summary = summarize_metrics("x", rows)

    assert summary.parameters == 100
    assert summary.bytes_per_update == pytest.approx(200 / 5)
    assert summary.ratio == pytest.approx(2000 / 200)
    assert summary.final_accuracy == 0.8
    assert summary.round_seconds == pytest.approx(3.0)
    assert summary.clients_per_round == pytest.approx(5 / 3)


@pytest.mark.parametrize("rows", [[], [_row(1, 0, 0, 1.0, 0.1)]])
def test_summary_of_a_run_without_updates_is_an_error(rows: list[dict[str, Any]]) -> None:
    with pytest.raises(BenchError):
        summarize_metrics("x", rows)


def test_verdict_reports_the_least_lossy_setting_at_the_target_ratio() -> None:
    runs = [
        _result(DENSE.name, 1.0, 0.0),
        _result("a", 150.0, 0.5),
        _result("b", 400.0, 3.0, share=0.02),
        _result("c", 20.0, -0.2),
    ]

    v = verdict(runs)

    assert v["ratio_and_accuracy_met"]
    assert v["at_ratio"]["setting"] == "a" and v["within_loss"]["setting"] == "a"
    assert v["max_seal_share"] == 0.02 and not v["seal_share_met"]


def test_verdict_without_a_qualifying_setting_says_what_it_reaches() -> None:
    runs = [_result(DENSE.name, 1.0, 0.0), _result("a", 150.0, 4.0), _result("b", 20.0, 0.8)]

    v = verdict(runs)

    assert not v["ratio_and_accuracy_met"]
    assert (v["at_ratio"]["setting"], v["within_loss"]["setting"]) == ("a", "b")


def test_verdict_with_nothing_near_the_targets_has_no_candidates() -> None:
    v = verdict([_result(DENSE.name, 1.0, 0.0), _result("a", 20.0, 5.0)])

    assert v["at_ratio"] is None and v["within_loss"] is None
    assert not v["ratio_and_accuracy_met"] and v["seal_share_met"]


def test_median_seconds_is_positive_and_batches_fast_actions() -> None:
    calls = []

    seconds = median_seconds(lambda: calls.append(1), repeats=3, min_sample=1e-4)

    assert seconds > 0
    assert len(calls) > 4  # the warm-up call, then more than one call per sample


@pytest.mark.slow
def test_quick_benchmark_reports_every_setting_sanely(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"

    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.codec", "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
        check=False,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    names = [s.name for s in SETTINGS]
    assert set(report["accuracy"]) == {"digits"} and "mnist" in report["skipped"]
    runs = {r["setting"]: r for r in report["accuracy"]["digits"]["runs"]}
    assert list(runs) == names
    params = _parameters("mlp")
    for r in runs.values():
        assert r["rounds"] == 2 and r["parameters"] == params
        assert 0.0 <= r["final_accuracy"] <= 1.0
        assert r["round_seconds"] > 0 and r["seal_open_seconds"] > 0 and r["seal_share"] > 0
    # Dense float32 weighs about 4 bytes a parameter (zstd may shave a little off raw floats).
    dense = runs[DENSE.name]
    assert 0.8 * 4 * params <= dense["bytes_per_update"] <= 4 * params + 256
    assert 0.95 <= dense["ratio"] <= 1.25
    assert dense["accuracy_loss_points"] == 0.0
    assert runs["top1-4bit"]["ratio"] > runs["top10-8bit"]["ratio"] > dense["ratio"]
    assert runs["top10-8bit"]["ratio"] > runs["dense-8bit"]["ratio"] > dense["ratio"]
    micro = report["micro"]
    assert {m["label"] for m in micro} >= set(names)
    for m in micro:
        assert m["payload_bytes"] > 0
        assert m["seal_open_mb_s"] > 0 and m["hpke_mb_s"] > 0 and m["aes_gcm_mb_s"] > 0
        if m["label"] in names:
            assert m["encode_mb_s"] > 0 and m["decode_mb_s"] > 0
    printed = done.stdout
    assert all(name in printed for name in names) and "AES-256-GCM" in printed


@pytest.mark.parametrize(
    ("assignment", "named"),
    [("codec.bits=4", "codec.bits"), ("nonsense-key=1", "nonsense-key"), ("seed", "KEY=VALUE")],
)
def test_bad_set_option_is_one_line_exit_2_before_any_run(
    assignment: str, named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["--quick", "--set", assignment])

    err = capsys.readouterr().err.strip()
    assert status == 2
    assert len(err.splitlines()) == 1 and named in err


def test_micro_only_plans_no_runs_and_the_full_microbenchmarks() -> None:
    plan = build_plan(build_parser().parse_args(["--micro-only", "--repeats", "5"]))

    assert plan.scenarios == ()
    assert set(plan.skipped) == {"digits", "mnist"}
    assert plan.micro_sizes == (CNN_SIZE, LARGE_SIZE) and plan.raw_sizes == RAW_SIZES
    assert plan.repeats == 5


def test_every_setting_names_a_valid_codec_and_the_random_mask_is_compared() -> None:
    assert len({s.name for s in SETTINGS}) == len(SETTINGS)
    masks = {s.mask for s in SETTINGS}
    assert masks == {"topk", "random"}
    for s in SETTINGS:
        assert s.params.mask == s.mask and s.overrides()["codec.mask"] == s.mask
