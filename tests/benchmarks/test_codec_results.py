"""The codec benchmark's run summaries, per-setting aggregates and verdict, on fabricated rows."""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

import pytest

from benchmarks import codec_results
from benchmarks.codec_results import RunSummary, SettingSummary
from benchmarks.runs import BenchmarkError

PARAMETERS = 100  # dense float32: 400 bytes each way


def _row(
    round_: int,
    clients: int,
    sealed: int,
    seconds: float,
    accuracy: float,
    down: int | None = None,
    rejected: int = 0,
) -> dict[str, Any]:
    row = {
        "round": round_,
        "accuracy": accuracy,
        "clients": list(range(clients)),
        "rejected": [{"node": 99, "reason": "x"}] * rejected,
        "bytes_sealed": sealed,
        "bytes_dense": clients * 4 * PARAMETERS,
        "seconds": seconds,
    }
    if down is not None:
        row["bytes_down"] = down
    return row


def _run(
    setting: str, seed: int, accuracy: float, up: float = 4.0, down: float = 400.0
) -> RunSummary:
    return RunSummary(setting, seed, 15, PARAMETERS, up, down, False, accuracy, 2.0, 10.0)


def _setting(
    name: str,
    up_ratio: float,
    total_ratio: float,
    diff: float,
    share: float = 0.001,
    down_ratio: float = 1.0,
) -> SettingSummary:
    return SettingSummary(
        name,
        [0],
        PARAMETERS,
        400 / up_ratio,
        400 / down_ratio,
        True,
        up_ratio,
        down_ratio,
        total_ratio,
        0.9 + diff / 100,
        0.0,
        [0.9 + diff / 100],
        diff,
        2.0,
        0.0,
        share,
    )


def test_summary_skips_round_one_time_and_counts_per_update() -> None:
    rows = [_row(1, 2, 100, 30.0, 0.5), _row(2, 2, 60, 2.0, 0.7), _row(3, 1, 40, 4.0, 0.8)]

    summary = codec_results.summarize_metrics("x", 7, rows)

    assert (summary.setting, summary.seed, summary.parameters) == ("x", 7, PARAMETERS)
    assert summary.bytes_up == pytest.approx(200 / 5)
    assert summary.final_accuracy == 0.8
    assert summary.round_seconds == pytest.approx(3.0)
    assert summary.clients_per_round == pytest.approx(5 / 3)


def test_without_bytes_down_the_downlink_is_the_dense_float32_model() -> None:
    summary = codec_results.summarize_metrics("x", 0, [_row(1, 2, 100, 1.0, 0.5)])

    assert summary.bytes_down == 4 * PARAMETERS and not summary.down_measured


def test_bytes_down_is_per_answering_client_when_every_row_has_it() -> None:
    rows = [_row(1, 2, 100, 1.0, 0.5, down=300, rejected=1), _row(2, 2, 100, 1.0, 0.6, down=200)]

    summary = codec_results.summarize_metrics("x", 0, rows)

    # 500 bytes sent to 5 clients (a rejected one downloaded the model too).
    assert summary.down_measured and summary.bytes_down == pytest.approx(100.0)
    for older in (_row(2, 2, 100, 1.0, 0.6), _row(2, 2, 100, 1.0, 0.6, down=0)):
        mixed = codec_results.summarize_metrics("x", 0, [rows[0], older])
        assert not mixed.down_measured and mixed.bytes_down == 4 * PARAMETERS


def test_summary_of_one_round_keeps_its_time() -> None:
    rows = [_row(1, 2, 100, 7.0, 0.5)]
    assert codec_results.summarize_metrics("x", 0, rows).round_seconds == 7.0


@pytest.mark.parametrize("rows", [[], [_row(1, 0, 0, 1.0, 0.1)]])
def test_summary_of_a_run_without_updates_is_an_error(rows: list[dict[str, Any]]) -> None:
    with pytest.raises(BenchmarkError, match="x seed 3:"):
        codec_results.summarize_metrics("x", 3, rows)


def test_setting_aggregates_seeds_against_the_dense_mean() -> None:
    dense = [_run("dense", s, a, up=400.0) for s, a in enumerate([0.90, 0.92, 0.94])]
    runs = [
        _run("sign", 0, 0.89, up=10.0, down=40.0),
        _run("sign", 1, 0.93, up=14.0, down=40.0),
        _run("sign", 2, 0.91, up=12.0, down=40.0),
    ]

    s = codec_results.summarize_setting(runs, dense, codec_seconds=0.002)

    assert s.setting == "sign" and s.seeds == [0, 1, 2]
    assert s.accuracy_mean == pytest.approx(0.91)
    assert s.accuracy_sd == pytest.approx(statistics.stdev([0.89, 0.93, 0.91]))
    assert s.accuracy_sd == pytest.approx(0.02)
    assert s.diff_points == pytest.approx(-1.0)  # 0.91 against 0.92
    assert s.bytes_up == pytest.approx(12.0) and s.bytes_down == pytest.approx(40.0)
    assert s.up_ratio == pytest.approx(400 / 12)
    assert s.down_ratio == pytest.approx(10.0)
    assert s.total_ratio == pytest.approx(800 / 52)
    # 0.002 s per update x 10 clients per round / 2 s per round.
    assert s.codec_share == pytest.approx(0.01)
    assert s.downlink_share == 0.0
    with_downlink = codec_results.summarize_setting(runs, dense, 0.002, downlink_seconds=0.001)
    assert with_downlink.downlink_share == pytest.approx(0.005)
    assert with_downlink.codec_share == pytest.approx(0.01)


def test_one_seed_has_zero_sd_and_no_runs_is_an_error() -> None:
    dense = [_run("dense", 0, 0.9)]
    assert codec_results.summarize_setting(dense, dense, 0.0).accuracy_sd == 0.0
    with pytest.raises(BenchmarkError):
        codec_results.summarize_setting([], dense, 0.0)


def test_verdict_picks_the_highest_total_ratio_within_the_default_loss() -> None:
    settings = [
        _setting("dense", 1.0, 1.0, 0.0),
        _setting("close", 25.0, 1.9, -0.4, down_ratio=4.0),
        _setting("closer-but-smaller", 10.0, 1.8, 0.0),
        _setting("too-lossy", 30.0, 1.95, -0.6),
    ]

    v = codec_results.verdict(settings)

    assert v["default"]["setting"] == "close" and v["default_met"]
    assert v["aggressive"] is None and not v["aggressive_met"]


def test_default_needs_the_downlink_ratio_too() -> None:
    settings = [_setting("dense", 1.0, 1.0, 0.0), _setting("up-only", 30.0, 1.9, 0.0)]

    v = codec_results.verdict(settings)

    assert v["default"]["setting"] == "up-only" and not v["default_met"]


def test_verdict_picks_the_least_lossy_aggressive_setting_and_checks_its_loss() -> None:
    settings = [
        _setting("dense", 1.0, 1.0, 0.0),
        _setting("a", 200.0, 120.0, -3.0),
        _setting("b", 150.0, 101.0, -0.8, share=0.02),
        _setting("c", 90.0, 99.0, 0.0),
    ]

    v = codec_results.verdict(settings)

    assert v["aggressive"]["setting"] == "b" and v["aggressive_met"]
    assert v["max_codec_share"] == 0.02 and not v["codec_share_met"]
    lines = codec_results.verdict_lines("mnist/cnn", v)
    assert len(lines) == 3 and all(line.startswith("mnist/cnn: ") for line in lines)
    assert "aggressive target" in lines[1] and " met: b (" in lines[1]
    assert "not met" in lines[2]


def test_verdict_never_picks_the_dense_baseline() -> None:
    v = codec_results.verdict([_setting("dense", 150.0, 150.0, 0.0)])

    assert v["default"] is None and v["aggressive"] is None
    assert "none qualifies" in codec_results.verdict_lines("m", v)[0]


def test_codec_share_target_is_the_compressed_settings_with_dense_and_downlink_beside() -> None:
    settings = [
        _setting("dense", 1.0, 1.0, 0.0, share=0.03),
        dataclasses.replace(_setting("a", 30.0, 20.0, 0.0, share=0.004), downlink_share=0.007),
        _setting("b", 30.0, 20.0, 0.0, share=0.006),
    ]

    v = codec_results.verdict(settings)

    assert v["max_codec_share"] == 0.006 and v["codec_share_met"]
    assert v["max_share_with_downlink"] == pytest.approx(0.011)
    assert v["dense_codec_share"] == 0.03
    assert "1.100 %" in codec_results.verdict_lines("m", v)[2]
