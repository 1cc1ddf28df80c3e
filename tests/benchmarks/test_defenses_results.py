"""The defenses benchmark's flag counts, rows and tables, on fabricated rounds."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks import defenses_results
from server.watermark_detection import WatermarkVerdict

# Nodes 100..103 are partitions 0..3.
PARTITIONS = {100 + p: p for p in range(4)}
ALL = [100, 101, 102, 103]


def _rounds(*rounds: tuple[list[int], list[int]]) -> list[dict[str, Any]]:
    return [{"round": i + 1, "clients": c, "flagged": f} for i, (c, f) in enumerate(rounds)]


def _verdict(accuracy: float, p_value: float, detected: bool) -> WatermarkVerdict:
    return WatermarkVerdict(
        accuracy=accuracy,
        correct=round(100 * accuracy),
        total=100,
        p_value=p_value,
        binomial_p=p_value,
        score_p=p_value,
        detected=detected,
    )


def test_flags_count_by_partition_over_rounds() -> None:
    rows = _rounds(
        (ALL, [103]),  # attacker 3 caught
        (ALL, [103, 100]),  # plus one false alarm
        (ALL, []),  # attacker missed
    )

    precision, recall, honest = defenses_results.flag_counts(
        rows, PARTITIONS, frozenset({3})
    ).rates()

    assert precision == pytest.approx(2 / 3)
    assert recall == pytest.approx(2 / 3)
    assert honest == pytest.approx(1 / 9)


def test_an_excluded_attacker_still_took_part() -> None:
    # With robust.exclude-flagged a flagged node is not among the round's `clients`.
    rows = _rounds(([100, 101, 102], [103]))

    counts = defenses_results.flag_counts(rows, PARTITIONS, frozenset({3}))

    assert counts == defenses_results.FlagCounts(
        true_pos=1, flagged=1, attacker_rounds=1, honest_rounds=3
    )


def test_no_attackers_and_no_flags_is_perfect() -> None:
    rows = _rounds(([100, 101], []))
    assert defenses_results.flag_counts(rows, PARTITIONS, frozenset()).rates() == (1.0, 1.0, 0.0)


def test_flags_pool_over_runs_by_counts_not_by_averaging_rates() -> None:
    one = defenses_results.flag_counts(_rounds((ALL, [103])), PARTITIONS, frozenset({3}))
    two = defenses_results.flag_counts(
        _rounds((ALL, []), (ALL, []), (ALL, [])), PARTITIONS, frozenset({3})
    )

    pooled = one + two

    assert pooled == defenses_results.FlagCounts(
        true_pos=1, flagged=1, attacker_rounds=4, honest_rounds=12, false_pos=0
    )
    assert pooled.rates() == (1.0, 0.25, 0.0)


def test_robustness_row_gives_mean_sample_spread_and_pooled_rates() -> None:
    counts = defenses_results.FlagCounts(
        true_pos=3, flagged=4, attacker_rounds=6, honest_rounds=10, false_pos=1
    )

    row = defenses_results.robustness_row("digits", "median", "scale", [0.8, 0.9, 1.0], counts)

    assert row.accuracy == pytest.approx(0.9) and row.seeds == 3
    assert row.accuracy_std == pytest.approx(0.1)  # ddof = 1
    assert (row.flag_precision, row.flag_recall, row.honest_flag_rate) == (0.75, 0.5, 0.1)
    assert (
        defenses_results.robustness_row(
            "d", "a", "none", [0.7], defenses_results.FlagCounts()
        ).accuracy_std
        == 0.0
    )
    table = defenses_results.robustness_table([row])
    assert table.row_count == 1


def test_cost_is_without_minus_with_paired_by_seed() -> None:
    cost = defenses_results.cost_summary("mnist", [0.90, 0.92], [0.88, 0.92])

    assert cost.seeds == 2
    assert cost.mean_cost == pytest.approx(0.01) and cost.worst_cost == pytest.approx(0.02)
    assert cost.std_cost == pytest.approx(0.02**0.5 * 0.1)
    assert defenses_results.cost_table([cost]).row_count == 1


def test_a_transform_is_detected_only_when_every_attack_is() -> None:
    verdicts = [_verdict(0.9, 1e-50, True), _verdict(0.3, 1e-3, False), _verdict(0.8, 1e-40, True)]

    row = defenses_results.watermark_row("mnist", "fine-tune", [0.9, 0.8, 0.7], verdicts)

    assert (row.attacks, row.detections, row.detected) == (3, 2, False)
    assert row.main_accuracy == pytest.approx(0.8)
    assert (row.trigger_accuracy, row.p_value) == (0.3, 1e-3)
    single = defenses_results.watermark_row("mnist", "int8", [0.9], [_verdict(0.9, 1e-50, True)])
    assert (single.attacks, single.detections, single.detected) == (1, 1, True)
    table = defenses_results.watermark_table([row, single])
    detected_column = next(c for c in table.columns if c.header == "detected")
    assert list(detected_column.cells) == ["2/3", "yes"]
