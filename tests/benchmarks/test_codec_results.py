"""The codec benchmark's summaries, costs and verdicts, on fabricated metrics rows."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks import codec_results
from benchmarks.runs import BenchmarkError


def _row(round_: int, clients: int, sealed: int, seconds: float, accuracy: float) -> dict[str, Any]:
    return {
        "round": round_,
        "accuracy": accuracy,
        "clients": list(range(clients)),
        "bytes_sealed": sealed,
        "bytes_dense": clients * 4 * 100,
        "seconds": seconds,
    }


def _summary(setting: str, ratio: float, accuracy: float) -> codec_results.RunSummary:
    return codec_results.RunSummary(setting, 3, 100, 400 / ratio, ratio, accuracy, 1.0, 2.0)


def _result(
    setting: str, ratio: float, loss: float, share: float = 0.001
) -> codec_results.RunResult:
    return codec_results.RunResult(
        _summary(setting, ratio, 0.9 - loss / 100), loss, share / 2, share
    )


def test_summary_skips_round_one_time_and_counts_per_update() -> None:
    rows = [_row(1, 2, 100, 30.0, 0.5), _row(2, 2, 60, 2.0, 0.7), _row(3, 1, 40, 4.0, 0.8)]

    summary = codec_results.summarize_metrics("x", rows)

    assert summary.parameters == 100
    assert summary.bytes_per_update == pytest.approx(200 / 5)
    assert summary.ratio == pytest.approx(2000 / 200)
    assert summary.final_accuracy == 0.8
    assert summary.round_seconds == pytest.approx(3.0)
    assert summary.clients_per_round == pytest.approx(5 / 3)


def test_summary_of_one_round_keeps_its_time() -> None:
    assert codec_results.summarize_metrics("x", [_row(1, 2, 100, 7.0, 0.5)]).round_seconds == 7.0


@pytest.mark.parametrize("rows", [[], [_row(1, 0, 0, 1.0, 0.1)]])
def test_summary_of_a_run_without_updates_is_an_error(rows: list[dict[str, Any]]) -> None:
    with pytest.raises(BenchmarkError, match="x:"):
        codec_results.summarize_metrics("x", rows)


def test_costs_are_against_the_first_run_and_scale_with_clients_per_round() -> None:
    dense, top = _summary("dense", 1.0, 0.90), _summary("top", 50.0, 0.87)

    results = codec_results.attach_costs([dense, top], [0.01, 0.02])

    assert [r.accuracy_loss_points for r in results] == pytest.approx([0.0, 3.0])
    # 0.02 s per update x 2 updates per round / 1 s per round.
    assert results[1].seal_share == pytest.approx(0.04)
    assert results[1].seal_open_seconds == 0.02


def test_verdict_reports_the_least_lossy_setting_at_the_target_ratio() -> None:
    runs = [
        _result("dense", 1.0, 0.0),
        _result("a", 150.0, 0.5),
        _result("b", 400.0, 3.0, share=0.02),
        _result("c", 20.0, -0.2),
    ]

    v = codec_results.verdict(runs)

    assert v["ratio_and_accuracy_met"]
    assert v["at_ratio"]["setting"] == "a" and v["within_loss"]["setting"] == "a"
    assert v["max_seal_share"] == 0.02 and not v["seal_share_met"]


def test_verdict_without_a_qualifying_setting_says_what_it_reaches() -> None:
    runs = [_result("dense", 1.0, 0.0), _result("a", 150.0, 4.0), _result("b", 20.0, 0.8)]

    v = codec_results.verdict(runs)

    assert not v["ratio_and_accuracy_met"]
    assert (v["at_ratio"]["setting"], v["within_loss"]["setting"]) == ("a", "b")


def test_verdict_never_picks_the_dense_baseline() -> None:
    v = codec_results.verdict([_result("dense", 1.0, 0.0), _result("a", 20.0, 5.0)])

    assert v["at_ratio"] is None and v["within_loss"] is None
    assert not v["ratio_and_accuracy_met"] and v["seal_share_met"]


def test_verdict_lines_name_the_data_set_the_outcome_and_the_settings() -> None:
    runs = [_result("dense", 1.0, 0.0), _result("a", 150.0, 0.5), _result("b", 20.0, 4.0)]

    (line,) = codec_results.verdict_lines({"mnist": codec_results.verdict(runs)})

    assert line.startswith("mnist: target (>= 100x at <= 1 point) met")
    assert "a 150.0x, +0.50 pts" in line and "within 1 point: a" in line
