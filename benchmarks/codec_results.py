"""The codec benchmark's numbers: a run's summary, its costs, and the done-when verdict.

A run is summarized from its ``metrics.jsonl`` rows: sealed bytes per received update, the ratio
of dense float32 bytes to sealed bytes, final accuracy, and the mean steady-state round time
(round 1 also starts the simulation engine, so it is left out when there are later rounds).
Accuracy loss is in points against the first (dense float32) run. The verdict checks the
targets: a compression ratio of ``TARGET_RATIO`` at most ``TARGET_LOSS_POINTS`` below dense,
and seal+open at most ``TARGET_SEAL_SHARE`` of a round.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.runs import BenchmarkError

TARGET_RATIO = 100.0
TARGET_LOSS_POINTS = 1.0
TARGET_SEAL_SHARE = 0.01


@dataclass(frozen=True)
class RunSummary:
    """What one run's ``metrics.jsonl`` says about one setting."""

    setting: str
    rounds: int
    parameters: int
    bytes_per_update: float
    ratio: float
    final_accuracy: float
    round_seconds: float
    clients_per_round: float


@dataclass(frozen=True)
class RunResult:
    """A run's summary with the sealing cost measured for its model size and setting."""

    summary: RunSummary
    accuracy_loss_points: float
    seal_open_seconds: float
    seal_share: float


def summarize_metrics(setting: str, rows: Sequence[dict[str, Any]]) -> RunSummary:
    """Reduce a run's metrics rows to bytes per update, ratio, final accuracy and round time.

    Raises:
        BenchmarkError: no round finished, or no update was received.

    """
    if not rows:
        raise BenchmarkError(f"{setting}: the run finished no round")
    updates = sum(len(r["clients"]) for r in rows)
    sealed = sum(int(r["bytes_sealed"]) for r in rows)
    dense = sum(int(r["bytes_dense"]) for r in rows)
    if updates == 0 or sealed == 0:
        raise BenchmarkError(f"{setting}: the server received no update")
    # Round 1 also starts the engine and the client processes: not the steady state.
    steady = rows[1:] or rows
    return RunSummary(
        setting=setting,
        rounds=len(rows),
        parameters=dense // updates // 4,
        bytes_per_update=sealed / updates,
        ratio=dense / sealed,
        final_accuracy=float(rows[-1]["accuracy"]),
        round_seconds=statistics.fmean(float(r["seconds"]) for r in steady),
        clients_per_round=updates / len(rows),
    )


def accuracy_loss_points(summary: RunSummary, dense: RunSummary) -> float:
    """Return how many accuracy points ``summary`` lost against dense float32 (negative: won)."""
    return 100.0 * (dense.final_accuracy - summary.final_accuracy)


def seal_share(seal_open_seconds: float, summary: RunSummary) -> float:
    """Return seal+open seconds of a round's updates as a fraction of the mean round time."""
    return seal_open_seconds * summary.clients_per_round / summary.round_seconds


def attach_costs(
    summaries: Sequence[RunSummary], seal_open_seconds: Sequence[float]
) -> list[RunResult]:
    """Pair each summary with its seal+open seconds; losses are against the first (dense)."""
    dense = summaries[0]
    return [
        RunResult(
            summary=summary,
            accuracy_loss_points=accuracy_loss_points(summary, dense),
            seal_open_seconds=seconds,
            seal_share=seal_share(seconds, summary),
        )
        for summary, seconds in zip(summaries, seal_open_seconds, strict=True)
    ]


def verdict(results: Sequence[RunResult]) -> dict[str, Any]:
    """Return the done-when check of one data set; ``results[0]`` is dense float32.

    ``at_ratio``: of the settings with ``ratio >= TARGET_RATIO``, the one losing the fewest
    accuracy points (``None`` when no setting compresses that much); the target is met when it
    loses at most ``TARGET_LOSS_POINTS``. ``within_loss``: of the compressed settings losing at
    most ``TARGET_LOSS_POINTS``, the one with the highest ratio (``None`` when none does).
    """
    compressed = results[1:]
    at_ratio = [r for r in compressed if r.summary.ratio >= TARGET_RATIO]
    within = [r for r in compressed if r.accuracy_loss_points <= TARGET_LOSS_POINTS]
    best_at_ratio = min(at_ratio, key=lambda r: r.accuracy_loss_points, default=None)
    best_within = max(within, key=lambda r: r.summary.ratio, default=None)
    max_share = max(r.seal_share for r in results)
    return {
        "at_ratio": _brief(best_at_ratio),
        "within_loss": _brief(best_within),
        "ratio_and_accuracy_met": best_at_ratio is not None
        and best_at_ratio.accuracy_loss_points <= TARGET_LOSS_POINTS,
        "max_seal_share": max_share,
        "seal_share_met": max_share <= TARGET_SEAL_SHARE,
    }


def _brief(result: RunResult | None) -> dict[str, Any] | None:
    if result is None:
        return None
    return {
        "setting": result.summary.setting,
        "ratio": result.summary.ratio,
        "accuracy_loss_points": result.accuracy_loss_points,
    }


def verdict_lines(verdicts: dict[str, dict[str, Any]]) -> list[str]:
    """Return one line per data set on the done-when targets."""
    lines = []
    for dataset, v in verdicts.items():
        at, within = v["at_ratio"], v["within_loss"]
        parts = [
            f"{dataset}: target (>= {TARGET_RATIO:g}x at <= {TARGET_LOSS_POINTS:g} point) "
            + ("met" if v["ratio_and_accuracy_met"] else "not met"),
            f"at >= {TARGET_RATIO:g}x: "
            + (
                "none"
                if at is None
                else f"{at['setting']} {at['ratio']:.1f}x, {at['accuracy_loss_points']:+.2f} pts"
            ),
            f"within {TARGET_LOSS_POINTS:g} point: "
            + (
                "none"
                if within is None
                else f"{within['setting']} {within['ratio']:.1f}x, "
                f"{within['accuracy_loss_points']:+.2f} pts"
            ),
            f"seal+open <= {100 * v['max_seal_share']:.3f} % of round time "
            f"({'within' if v['seal_share_met'] else 'above'} {100 * TARGET_SEAL_SHARE:g} %)",
        ]
        lines.append("; ".join(parts))
    return lines
