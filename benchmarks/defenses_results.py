"""The defenses benchmark's numbers: flag counts, per-case rows, the watermark's, and tables.

Flags are counted per round of participation, by partition id: a client took part in a round
when it contributed or was flagged; recall is the share of (attacker, round) pairs flagged,
precision the share of flags that hit an attacker, the honest rate the share of (honest client,
round) pairs flagged. Accuracy is summarised over seeds as mean and sample standard deviation;
the watermark's cost is accuracy without minus with it, paired by seed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass
from typing import Any

import numpy as np
from rich.table import Table

from server.watermark_detection import WatermarkVerdict


@dataclass(frozen=True)
class RobustnessRow:
    """One case: final accuracy (mean and spread over seeds) and the pooled flag rates."""

    dataset: str
    aggregation: str
    attack: str
    accuracy: float
    accuracy_std: float
    seeds: int
    flag_precision: float
    flag_recall: float
    honest_flag_rate: float


@dataclass(frozen=True)
class WatermarkCost:
    """Main-task accuracy without and with the watermark, paired by seed.

    A pair shares the split, the initial model, the sampling and the trigger-free settings; the
    DP noise differs (clients draw it from OS entropy), so a pair's difference also carries the
    run-to-run spread.
    """

    dataset: str
    seeds: int
    plain_accuracy: float
    marked_accuracy: float
    mean_cost: float
    std_cost: float
    worst_cost: float


@dataclass(frozen=True)
class WatermarkRow:
    """Trigger accuracy and joint p-value (``WatermarkVerdict.p_value``) after one transform.

    A row of ``attacks > 1`` (fine-tuning over seeds) gives the mean main accuracy, the lowest
    trigger accuracy, the highest p-value, and in how many attacks the mark was detected.
    """

    dataset: str
    transform: str
    main_accuracy: float
    trigger_accuracy: float
    p_value: float
    detected: bool
    attacks: int
    detections: int


def watermark_row(
    dataset: str, transform: str, accuracies: list[float], verdicts: list[WatermarkVerdict]
) -> WatermarkRow:
    """Summarise the attacks of one transform (one or more) as a row."""
    detections = sum(v.detected for v in verdicts)
    return WatermarkRow(
        dataset,
        transform,
        float(np.mean(accuracies)),
        min(v.accuracy for v in verdicts),
        max(v.p_value for v in verdicts),
        detections == len(verdicts),
        len(verdicts),
        detections,
    )


@dataclass(frozen=True)
class FlagCounts:
    """Flag counts over (client, round) pairs of participation, by partition id."""

    true_pos: int = 0
    flagged: int = 0
    attacker_rounds: int = 0
    honest_rounds: int = 0
    false_pos: int = 0

    def __add__(self, other: FlagCounts) -> FlagCounts:
        return FlagCounts(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    def rates(self) -> tuple[float, float, float]:
        """Return (precision, recall, honest flag rate); 1, 1, 0 when nothing to count."""
        precision = self.true_pos / self.flagged if self.flagged else 1.0
        recall = self.true_pos / self.attacker_rounds if self.attacker_rounds else 1.0
        honest = self.false_pos / self.honest_rounds if self.honest_rounds else 0.0
        return precision, recall, honest


def flag_counts(
    rows: Sequence[dict[str, Any]], partitions: dict[int, int], attackers: frozenset[int]
) -> FlagCounts:
    """Count a run's flags (``metrics.jsonl`` rows) over the rounds each client took part in.

    ``partitions`` maps node ids to partition ids (``node_partitions``); ``attackers`` are
    partition ids. A client took part in a round when it contributed or was flagged (with
    ``robust.exclude-flagged`` a flagged client is left out of ``clients``).
    """
    counts = FlagCounts()
    for row in rows:
        marked = {partitions[int(n)] for n in row["flagged"]}
        present = {partitions[int(n)] for n in row["clients"]} | marked
        counts += FlagCounts(
            true_pos=len(marked & attackers),
            flagged=len(marked),
            attacker_rounds=len(present & attackers),
            honest_rounds=len(present - attackers),
            false_pos=len(marked - attackers),
        )
    return counts


def robustness_row(
    dataset: str, aggregation: str, attack: str, accuracies: Sequence[float], counts: FlagCounts
) -> RobustnessRow:
    """Summarise one case over its seeds: mean and spread of accuracy, pooled flag rates."""
    precision, recall, honest = counts.rates()
    return RobustnessRow(
        dataset,
        aggregation,
        attack,
        float(np.mean(accuracies)),
        float(np.std(accuracies, ddof=1)) if len(accuracies) > 1 else 0.0,
        len(accuracies),
        precision,
        recall,
        honest,
    )


def cost_summary(dataset: str, plain: Sequence[float], marked: Sequence[float]) -> WatermarkCost:
    """Summarise the watermark's cost: accuracy without minus with, paired by seed."""
    cost = np.asarray(plain) - np.asarray(marked)
    return WatermarkCost(
        dataset,
        len(cost),
        float(np.mean(plain)),
        float(np.mean(marked)),
        float(cost.mean()),
        float(cost.std(ddof=1)) if len(cost) > 1 else 0.0,
        float(cost.max()),
    )


def _table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> Table:
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(*row)
    return table


def robustness_table(rows: list[RobustnessRow]) -> Table:
    """Render the robustness results."""
    columns = ("data", "aggregation", "attack", "seeds", "accuracy", "flag precision")
    title = "Robust aggregation under 20 % attackers (final accuracy, flags)"
    return _table(title, (*columns, "flag recall", "honest flagged"), map(_robustness_cells, rows))


def _robustness_cells(r: RobustnessRow) -> tuple[str, ...]:
    accuracy = f"{r.accuracy:.4f} ± {r.accuracy_std:.4f}" if r.seeds > 1 else f"{r.accuracy:.4f}"
    rates = (f"{rate:.2f}" for rate in (r.flag_precision, r.flag_recall, r.honest_flag_rate))
    return (r.dataset, r.aggregation, r.attack, str(r.seeds), accuracy, *rates)


def cost_table(rows: list[WatermarkCost]) -> Table:
    """Render the watermark's main-task cost."""
    columns = ("data", "seeds", "without", "with", "mean cost", "std", "worst")
    title = "Watermark cost (main accuracy without - with, same seeds)"
    return _table(title, columns, map(_cost_cells, rows))


def _cost_cells(r: WatermarkCost) -> tuple[str, ...]:
    accuracies = (f"{a:.4f}" for a in (r.plain_accuracy, r.marked_accuracy))
    costs = (
        f"{100 * r.mean_cost:+.2f} pt",
        f"{100 * r.std_cost:.2f} pt",
        f"{100 * r.worst_cost:+.2f} pt",
    )
    return (r.dataset, str(r.seeds), *accuracies, *costs)


def watermark_table(rows: list[WatermarkRow]) -> Table:
    """Render the watermark results (fine-tuning rows: mean, lowest, highest, detections)."""
    columns = ("data", "model", "main accuracy", "trigger accuracy", "joint p", "detected")
    title = "Watermark: main accuracy, trigger accuracy, joint p-value"
    return _table(title, columns, map(_watermark_cells, rows))


def _watermark_cells(r: WatermarkRow) -> tuple[str, ...]:
    detected = f"{r.detections}/{r.attacks}" if r.attacks > 1 else ("yes" if r.detected else "no")
    accuracies = f"{r.main_accuracy:.4f}", f"{r.trigger_accuracy:.2f}"
    return (r.dataset, r.transform, *accuracies, f"{r.p_value:.2e}", detected)
