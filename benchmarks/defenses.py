"""Defenses benchmark: robust aggregation under Byzantine clients, and watermark robustness.

``python -m benchmarks.defenses [--data-dir DIR] [--datasets digits,mnist] [--quick]``
runs, side by side on each data set and on the real stack (Flower's simulation engine, DP-SGD,
sealing): clean FedAvg; FedAvg under 20 % attackers; every robust aggregator under the same
attackers, for sign-flip and scale; and prints final accuracy and the precision and recall of
the per-round anomaly flags (an attacker counts as caught in a round it took part in when it
is flagged). Then, for the watermark: main-task accuracy with and without it, and trigger
accuracy and p-value of the final model as trained, after 50 % magnitude pruning, int8
quantize-dequantize, Gaussian weight noise, and fine-tuning on clean data.

Updates travel dense (``codec.topk = 1``, 8 bits) in every run, because coordinate-wise
rules cannot aggregate top-k sparse updates (``server.aggregation``). Every run, clean ones
included, keeps ``ROOT_EXAMPLES`` of the server's held-out examples as its root set
(``server.root_set``): update directions are scored against the root set's reference, the
watermark's embedding steps hold the model's outputs on its images (and shifted copies) where
they were, and every accuracy is measured on the same remaining held-out examples.

Flags are counted per round of participation, by partition id: recall is the share of
(attacker, round) pairs flagged, the honest rate the share of (honest client, round) pairs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, astuple, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from benchmarks.model_theft import add_gaussian_noise, fine_tune, prune_magnitude, quantize_int8
from common.config import FedveilConfig
from common.data import load_data
from common.models import create_model, model_for
from common.weights import NamedArrays, load_safetensors
from server.checkpoint import STATE_FILE
from server.evaluation import CentralEvaluator
from server.root_set import split_held_out
from server.watermark import (
    KEY_FILE,
    TriggerSet,
    WatermarkVerdict,
    load_state,
    read_key,
    verify_watermark,
)
from simulations.adversary.attacks import attacker_ids
from simulations.simulate import read_metrics, simulate

AGGREGATORS = ("fedavg", "median", "trimmed-mean", "krum", "multikrum")
VARIANTS: dict[str, dict[str, Any]] = {name: {"aggregation": name} for name in AGGREGATORS} | {
    "fedavg+exclude": {"aggregation": "fedavg", "robust.exclude-flagged": True}
}
"""Rows of the robustness table: each aggregator, and FedAvg of the updates not flagged."""
ATTACKS = ("sign-flip", "scale")
FINE_TUNE_LRS = (0.01, 0.02, 0.05)
"""Learning rates of the clean fine-tuning attack (plain SGD, batch 32, 2,000 training examples):
on MNIST the first two keep the stolen model's accuracy, the last costs it 2.3 points: the
hardest washing the watermark is held to (at lr 0.1 the fine-tune can break the model)."""
FINE_TUNE_SEEDS = 10
"""Fine-tuning attacks per learning rate; their batch order differs (``fine_tune``'s seed)."""
ROOT_EXAMPLES = 100
"""Server-held clean examples in every run (``robust.root-examples``)."""


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
    run-to-run spread (~1.5 points on digits' 260 evaluation examples).
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


def _watermark_row(
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


def base_settings(dataset: str, data_dir: str, quick: bool, rounds: int | None) -> dict[str, Any]:
    """Run settings shared by every run on ``dataset``."""
    settings: dict[str, Any] = {
        "codec.topk": 1.0,
        "codec.bits": 8,
        "seed": 0,
        "robust.root-examples": ROOT_EXAMPLES,
    }
    if dataset == "digits":
        settings |= {"num-server-rounds": 3 if quick else 15, "sim.clients": 10}
    else:
        settings |= {
            "dataset": dataset,
            "data-dir": data_dir,
            "sim.clients": 10,
            "num-server-rounds": 2 if quick else 8,
            "local-epochs": 1,
        }
    if rounds is not None:
        settings["num-server-rounds"] = rounds
    return settings


def _run(settings: dict[str, Any], out: Path, console: Console) -> Path:
    config = FedveilConfig.from_flat(settings)
    run_path, _ = simulate(config, out, console)
    return run_path


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


def flag_counts(run: Path, attackers: frozenset[int]) -> FlagCounts:
    """Count a run's flags over the rounds each client took part in.

    A client took part in a round when it contributed or was flagged (with
    ``robust.exclude-flagged`` a flagged client is left out of ``clients``).
    """
    state = json.loads((run / "checkpoint" / STATE_FILE).read_text())
    partition = {int(node): int(cid) for node, cid in state["node_clients"].items()}
    counts = FlagCounts()
    for row in read_metrics(run):
        marked = {partition[int(n)] for n in row["flagged"]}
        present = {partition[int(n)] for n in row["clients"]} | marked
        counts += FlagCounts(
            true_pos=len(marked & attackers),
            flagged=len(marked),
            attacker_rounds=len(present & attackers),
            honest_rounds=len(present - attackers),
            false_pos=len(marked - attackers),
        )
    return counts


def flag_scores(run: Path, attackers: frozenset[int]) -> tuple[float, float, float]:
    """Return (precision, recall, honest flag rate) of one run's flags (``flag_counts``)."""
    return flag_counts(run, attackers).rates()


def robustness(
    dataset: str,
    work: Path,
    settings: dict[str, Any],
    aggregators: Sequence[str],
    seeds: range,
    console: Console,
) -> list[RobustnessRow]:
    """Clean FedAvg, then each of ``aggregators`` under each attack at 20 % attackers.

    Each case runs with each of ``seeds`` (each seed picks its own attackers); a row holds
    the mean and spread of the final accuracy and the flags pooled over the seeds.
    """
    clients = int(settings["sim.clients"])
    rows = []
    cases = [("fedavg", "none")] + [(a, k) for k in ATTACKS for a in aggregators]
    for aggregation, attack in cases:
        accuracies, counts = [], FlagCounts()
        for seed in seeds:
            case = settings | VARIANTS[aggregation] | {"robust.assumed-malicious": 2, "seed": seed}
            attackers: frozenset[int] = frozenset()
            if attack != "none":
                case |= {"attack.fraction": 0.2, "attack.kind": attack}
                attackers = attacker_ids(clients, 0.2, seed)
            run = _run(case, work / f"{dataset}-{aggregation}-{attack}-{seed}", console)
            accuracies.append(float(read_metrics(run)[-1]["accuracy"]))
            counts += flag_counts(run, attackers)
        precision, recall, honest = counts.rates()
        rows.append(
            RobustnessRow(
                dataset,
                aggregation,
                attack,
                float(np.mean(accuracies)),
                float(np.std(accuracies, ddof=1)) if len(seeds) > 1 else 0.0,
                len(seeds),
                precision,
                recall,
                honest,
            )
        )
    return rows


def watermark_cost(
    dataset: str, work: Path, settings: dict[str, Any], seeds: int, console: Console
) -> tuple[WatermarkCost, Path, Path]:
    """Train with and without the watermark for seeds ``0..seeds-1``; return the cost.

    Also returns the run directories of seed 0 (plain, marked) for the robustness tests.
    """
    runs = []
    for seed in range(seeds):
        base = settings | {"seed": seed}
        plain = _run(base, work / f"{dataset}-plain-{seed}", console)
        marked = _run(
            base | {"watermark.enabled": True}, work / f"{dataset}-marked-{seed}", console
        )
        runs.append((plain, marked))
    plain_acc = [float(read_metrics(p)[-1]["accuracy"]) for p, _ in runs]
    marked_acc = [float(read_metrics(m)[-1]["accuracy"]) for _, m in runs]
    cost = np.asarray(plain_acc) - np.asarray(marked_acc)
    summary = WatermarkCost(
        dataset,
        seeds,
        float(np.mean(plain_acc)),
        float(np.mean(marked_acc)),
        float(cost.mean()),
        float(cost.std(ddof=1)) if seeds > 1 else 0.0,
        float(cost.max()),
    )
    return summary, runs[0][0], runs[0][1]


def watermark(
    dataset: str, plain: Path, marked: Path, settings: dict[str, Any]
) -> list[WatermarkRow]:
    """Test the marked model as trained and after four attacks, and the plain one (control)."""
    config = FedveilConfig.from_flat(settings)
    data = load_data(config.dataset, config.data_dir, config.seed, config.test_fraction)
    name = model_for(config.model, data.image_shape)
    model = create_model(name, data.num_classes, seed=0)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    trigger = TriggerSet.from_key(read_key(marked / KEY_FILE), data.image_shape, data.num_classes)
    _, held_out = split_held_out(len(data.test), config.robust_root_examples, config.seed)
    evaluator = CentralEvaluator(data, indices=held_out)
    trained = load_safetensors(marked / "model.safetensors", shapes)
    images, labels = data.tensors(data.train, np.arange(min(len(data.train), 2000)))
    rng = np.random.default_rng(0)
    transforms: dict[str, Callable[[NamedArrays], NamedArrays]] = {
        "as trained": lambda s: s,
        "prune 50 %": lambda s: prune_magnitude(s, 0.5),
        "int8": quantize_int8,
        "gaussian noise": lambda s: add_gaussian_noise(s, 0.01, rng),
    }
    rows = []
    load_state(model, load_safetensors(plain / "model.safetensors", shapes))
    rows.append(
        _watermark_row(
            dataset,
            "no watermark (control)",
            [evaluator.evaluate(model).accuracy],
            [verify_watermark(model, trigger)],
        )
    )
    for label, transform in transforms.items():
        load_state(model, transform(trained))
        rows.append(
            _watermark_row(
                dataset,
                label,
                [evaluator.evaluate(model).accuracy],
                [verify_watermark(model, trigger)],
            )
        )
    for lr in FINE_TUNE_LRS:
        accuracies, verdicts = [], []
        for seed in range(FINE_TUNE_SEEDS):
            load_state(model, trained)
            fine_tune(model, images, labels, epochs=3, lr=lr, seed=seed)
            accuracies.append(evaluator.evaluate(model).accuracy)
            verdicts.append(verify_watermark(model, trigger))
        rows.append(_watermark_row(dataset, f"fine-tune 3 epochs, lr {lr}", accuracies, verdicts))
    return rows


def robustness_table(rows: list[RobustnessRow]) -> Table:
    """Render the robustness results."""
    table = Table(title="Robust aggregation under 20 % attackers (final accuracy, flags)")
    columns = ("data", "aggregation", "attack", "seeds", "accuracy", "flag precision")
    for col in (*columns, "flag recall", "honest flagged"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r.dataset,
            r.aggregation,
            r.attack,
            str(r.seeds),
            f"{r.accuracy:.4f} ± {r.accuracy_std:.4f}" if r.seeds > 1 else f"{r.accuracy:.4f}",
            f"{r.flag_precision:.2f}",
            f"{r.flag_recall:.2f}",
            f"{r.honest_flag_rate:.2f}",
        )
    return table


def cost_table(rows: list[WatermarkCost]) -> Table:
    """Render the watermark's main-task cost."""
    table = Table(title="Watermark cost (main accuracy without - with, same seeds)")
    for col in ("data", "seeds", "without", "with", "mean cost", "std", "worst"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r.dataset,
            str(r.seeds),
            f"{r.plain_accuracy:.4f}",
            f"{r.marked_accuracy:.4f}",
            f"{100 * r.mean_cost:+.2f} pt",
            f"{100 * r.std_cost:.2f} pt",
            f"{100 * r.worst_cost:+.2f} pt",
        )
    return table


def watermark_table(rows: list[WatermarkRow]) -> Table:
    """Render the watermark results (fine-tuning rows: mean, lowest, highest, detections)."""
    table = Table(title="Watermark: main accuracy, trigger accuracy, joint p-value")
    for col in ("data", "model", "main accuracy", "trigger accuracy", "joint p", "detected"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r.dataset,
            r.transform,
            f"{r.main_accuracy:.4f}",
            f"{r.trigger_accuracy:.2f}",
            f"{r.p_value:.2e}",
            f"{r.detections}/{r.attacks}" if r.attacks > 1 else ("yes" if r.detected else "no"),
        )
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the tables; optionally write them as JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.defenses")
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--datasets", default="digits,mnist")
    parser.add_argument("--quick", action="store_true", help="few rounds (a smoke test)")
    parser.add_argument("--rounds", type=int, help="rounds per run (default: 15 digits, 8 MNIST)")
    parser.add_argument(
        "--aggregators", default=",".join(VARIANTS), help="robust rules to run under attack"
    )
    parser.add_argument(
        "--parts", default="robustness,watermark", help="which halves to run (comma-separated)"
    )
    parser.add_argument("--seeds", type=int, default=1, help="runs per robustness case")
    parser.add_argument("--first-seed", type=int, default=0, help="robustness seeds start here")
    parser.add_argument(
        "--watermark-seeds", type=int, default=1, help="run pairs behind the watermark cost"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--work", type=Path, help="where run directories go (default: temp)")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    out = Console()
    datasets = [d for d in args.datasets.split(",") if d]
    aggregators = [a for a in args.aggregators.split(",") if a]
    parts = set(args.parts.split(","))
    unknown = [a for a in aggregators if a not in VARIANTS]
    if (
        unknown
        or not parts <= {"robustness", "watermark"}
        or min(args.seeds, args.watermark_seeds) < 1
        or args.first_seed < 0
    ):
        console.print(
            f"[red]--aggregators must name {list(VARIANTS)}, --parts robustness and/or "
            f"watermark, --seeds and --watermark-seeds >= 1[/red]"
        )
        return 2
    if "mnist" in datasets and not (Path(args.data_dir) / "mnist").is_dir():
        console.print(f"[yellow]{args.data_dir}/mnist not found: skipping MNIST[/yellow]")
        datasets.remove("mnist")
    with tempfile.TemporaryDirectory(prefix="fedveil-bench-defenses-") as tmp:
        work = args.work or Path(tmp)
        robust: list[RobustnessRow] = []
        costs: list[WatermarkCost] = []
        marks: list[WatermarkRow] = []
        for dataset in datasets:
            settings = base_settings(dataset, args.data_dir, args.quick, args.rounds)
            if "robustness" in parts:
                seeds = range(args.first_seed, args.first_seed + args.seeds)
                robust += robustness(dataset, work, settings, aggregators, seeds, console)
            if "watermark" in parts:
                cost, plain, marked = watermark_cost(
                    dataset, work, settings, args.watermark_seeds, console
                )
                costs.append(cost)
                marks += watermark(dataset, plain, marked, settings)
    out.print(robustness_table(robust))
    out.print(cost_table(costs))
    out.print(watermark_table(marks))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "settings": {
                        "datasets": datasets,
                        "rounds": args.rounds,
                        "quick": args.quick,
                        "seeds": args.seeds,
                        "watermark_seeds": args.watermark_seeds,
                    },
                    "robustness": [asdict(r) for r in robust],
                    "watermark_cost": [asdict(r) for r in costs],
                    "watermark": [asdict(r) for r in marks],
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
