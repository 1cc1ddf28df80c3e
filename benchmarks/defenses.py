"""``python -m benchmarks.defenses``: robust aggregation under attack, and watermark robustness.

Each case is a ``fedveil simulate`` run set by config keys (``benchmarks.runs``): clean FedAvg,
then each aggregator under 20 % attackers (``attack.kind`` sign-flip and scale), reporting final
accuracy and the precision and recall of the per-round flags. Flags are counted per round of
participation, by partition id: recall is the share of (attacker, round) pairs flagged, the
honest rate the share of (honest client, round) pairs. Then the watermark: accuracy with and
without it, and the final model's trigger accuracy and p-value as trained and after each of the
thief's transforms (``benchmarks.model_theft``).

Updates travel dense (``codec.topk = 1``, 8 bits), because coordinate-wise rules cannot
aggregate top-k sparse updates. Every run keeps ``ROOT_EXAMPLES`` of the server's held-out
examples as its root set (``robust.root-examples``), so every accuracy is measured on the same
remaining held-out examples. The JSON is stamped with date, commit and machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from benchmarks.command_line import benchmark_parser, refuse
from benchmarks.defenses_results import (
    FlagCounts,
    RobustnessRow,
    WatermarkCost,
    WatermarkRow,
    cost_summary,
    cost_table,
    flag_counts,
    robustness_row,
    robustness_table,
    watermark_row,
    watermark_table,
)
from benchmarks.model_theft import add_gaussian_noise, fine_tune, prune_magnitude, quantize_int8
from benchmarks.provenance import RESULTS_DIR, write_json
from benchmarks.runs import BenchmarkError, node_partitions, run_simulation
from common.config import FedveilConfig
from common.data import load_data
from common.models import create_model, model_for
from common.weights import NamedArrays, load_safetensors
from server.evaluation import CentralEvaluator
from server.root_set import split_held_out
from server.watermark import (
    KEY_FILE,
    TriggerSet,
    load_state,
    read_key,
    verify_watermark,
)
from simulations.adversary.attacks import attacker_ids

AGGREGATORS = ("fedavg", "median", "trimmed-mean", "krum", "multikrum")
VARIANTS: dict[str, dict[str, Any]] = {name: {"aggregation": name} for name in AGGREGATORS} | {
    "fedavg+exclude": {"aggregation": "fedavg", "robust.exclude-flagged": True}
}
"""Rows of the robustness table: each aggregator, and FedAvg of the updates not flagged."""
ATTACKS = ("sign-flip", "scale")
FINE_TUNE_LRS = (0.01, 0.02, 0.05)
"""Learning rates of the clean fine-tuning attack (plain SGD, batch 32, 2,000 training examples),
gentle to the largest a thief can use without giving up much of the model's accuracy."""
FINE_TUNE_SEEDS = 10
"""Fine-tuning attacks per learning rate; their batch order differs (``fine_tune``'s seed)."""
ROOT_EXAMPLES = 100
"""Server-held clean examples in every run (``robust.root-examples``)."""
DEFAULT_JSON = RESULTS_DIR / "defenses.json"
QUICK_JSON = RESULTS_DIR / "defenses-quick.json"
"""``--quick`` runs write here by default, never over the results."""


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
            run = work / f"{dataset}-{aggregation}-{attack}-{seed}"
            metrics = run_simulation(case, run, console)
            accuracies.append(float(metrics[-1]["accuracy"]))
            counts += flag_counts(metrics, node_partitions(run), attackers)
        rows.append(robustness_row(dataset, aggregation, attack, accuracies, counts))
    return rows


def watermark_cost(
    dataset: str, work: Path, settings: dict[str, Any], seeds: int, console: Console
) -> tuple[WatermarkCost, Path, Path]:
    """Train with and without the watermark for seeds ``0..seeds-1``; return the cost.

    Also returns the run directories of seed 0 (plain, marked) for the robustness tests.
    """
    plain_acc, marked_acc = [], []
    for seed in range(seeds):
        base = settings | {"seed": seed}
        plain = run_simulation(base, work / f"{dataset}-plain-{seed}", console)
        marked = run_simulation(
            base | {"watermark.enabled": True}, work / f"{dataset}-marked-{seed}", console
        )
        plain_acc.append(float(plain[-1]["accuracy"]))
        marked_acc.append(float(marked[-1]["accuracy"]))
    summary = cost_summary(dataset, plain_acc, marked_acc)
    return summary, work / f"{dataset}-plain-0", work / f"{dataset}-marked-0"


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
        watermark_row(
            dataset,
            "no watermark (control)",
            [evaluator.evaluate(model).accuracy],
            [verify_watermark(model, trigger)],
        )
    )
    for label, transform in transforms.items():
        load_state(model, transform(trained))
        rows.append(
            watermark_row(
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
        rows.append(watermark_row(dataset, f"fine-tune 3 epochs, lr {lr}", accuracies, verdicts))
    return rows


def report_json(
    args: argparse.Namespace,
    datasets: Sequence[str],
    robust: Sequence[RobustnessRow],
    costs: Sequence[WatermarkCost],
    marks: Sequence[WatermarkRow],
) -> dict[str, Any]:
    """Return every number of the tables as one JSON-ready object (``write_json`` stamps it)."""
    return {
        "benchmark": "defenses",
        "settings": {
            "datasets": list(datasets),
            "rounds": args.rounds,
            "quick": args.quick,
            "aggregators": args.aggregators,
            "parts": args.parts,
            "seeds": args.seeds,
            "first_seed": args.first_seed,
            "watermark_seeds": args.watermark_seeds,
        },
        "robustness": [asdict(r) for r in robust],
        "watermark_cost": [asdict(r) for r in costs],
        "watermark": [asdict(r) for r in marks],
    }


def build_parser() -> argparse.ArgumentParser:
    """Return the benchmark's argument parser."""
    parser = benchmark_parser(
        "defenses", "Robust aggregation under Byzantine clients, and watermark robustness."
    )
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
    parser.add_argument(
        "--json",
        type=Path,
        help=f"where to write the results (default: {DEFAULT_JSON.name}, or {QUICK_JSON.name} "
        "with --quick, in benchmarks/results/)",
    )
    parser.add_argument("--work", type=Path, help="where run directories go (default: temp)")
    return parser


def bad_options(args: argparse.Namespace) -> str | None:
    """Return what is wrong with the command line's choices, or ``None``."""
    unknown = [a for a in args.aggregators.split(",") if a and a not in VARIANTS]
    if unknown:
        return f"--aggregators: unknown {unknown}; choose from {list(VARIANTS)}"
    if not set(args.parts.split(",")) <= {"robustness", "watermark"}:
        return "--parts takes robustness and/or watermark (comma-separated)"
    if min(args.seeds, args.watermark_seeds) < 1 or args.first_seed < 0:
        return "--seeds and --watermark-seeds must be >= 1, --first-seed >= 0"
    if args.rounds is not None and args.rounds < 1:
        return f"--rounds must be >= 1, got {args.rounds}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the tables and write the stamped JSON; 0, or 2 on bad input."""
    from common.config import ConfigError
    from common.data import DataError
    from server.rundir import RunDirError

    args = build_parser().parse_args(argv)
    console = Console(stderr=True)
    problem = bad_options(args)
    if problem is not None:
        return refuse("defenses", problem)
    datasets = [d for d in args.datasets.split(",") if d]
    aggregators = [a for a in args.aggregators.split(",") if a]
    parts = set(args.parts.split(","))
    if args.data_dir is None and any(d != "digits" for d in datasets):
        console.print("no --data-dir: digits only", highlight=False)
        datasets = [d for d in datasets if d == "digits"]
    robust: list[RobustnessRow] = []
    costs: list[WatermarkCost] = []
    marks: list[WatermarkRow] = []
    try:
        for dataset in datasets:  # a wrong folder or name fails here, before any run
            load_data(dataset, args.data_dir or "", 0, 0.2)
        with tempfile.TemporaryDirectory(prefix="fedveil-bench-defenses-") as tmp:
            work = args.work or Path(tmp)
            for dataset in datasets:
                settings = base_settings(dataset, args.data_dir or "", args.quick, args.rounds)
                if "robustness" in parts:
                    seeds = range(args.first_seed, args.first_seed + args.seeds)
                    robust += robustness(dataset, work, settings, aggregators, seeds, console)
                if "watermark" in parts:
                    cost, plain, marked = watermark_cost(
                        dataset, work, settings, args.watermark_seeds, console
                    )
                    costs.append(cost)
                    marks += watermark(dataset, plain, marked, settings)
    except (BenchmarkError, ConfigError, DataError, RunDirError) as exc:
        return refuse("defenses", exc)
    out = Console()
    if not out.is_terminal:  # a file or pipe: keep every column readable
        out = Console(width=160)
    if robust:
        out.print(robustness_table(robust))
    if costs:
        out.print(cost_table(costs))
        out.print(watermark_table(marks))
    path = args.json or (QUICK_JSON if args.quick else DEFAULT_JSON)
    write_json(path, report_json(args, datasets, robust, costs, marks))
    print(path, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
