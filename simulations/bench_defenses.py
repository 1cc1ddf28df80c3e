"""Defenses benchmark: robust aggregation under Byzantine clients, and watermark robustness.

``python -m simulations.bench_defenses [--data-dir DIR] [--datasets digits,mnist] [--quick]``
runs, side by side on each data set and on the real stack (Flower's simulation engine, DP-SGD,
sealing): clean FedAvg; FedAvg under 20 % attackers; every robust aggregator under the same
attackers, for sign-flip and scale; and prints final accuracy and the precision and recall of
the per-round anomaly flags (an attacker counts as caught in a round it took part in when it
is flagged). Then, for the watermark: main-task accuracy with and without it, and trigger
accuracy and p-value of the final model as trained, after 50 % magnitude pruning, int8
quantize-dequantize, Gaussian weight noise, and fine-tuning on clean data.

Updates travel dense (``codec.topk = 1``, 8 bits) in every run, because coordinate-wise
rules cannot aggregate top-k sparse updates (``server.aggregation``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from client.attacks import attacker_ids
from common.config import FedveilConfig
from common.data import load_data
from common.models import create_model, model_for
from common.weights import NamedArrays, load_safetensors
from server.checkpoint import STATE_FILE
from server.evaluation import CentralEvaluator
from server.watermark import (
    KEY_FILE,
    TriggerSet,
    add_gaussian_noise,
    fine_tune,
    load_state,
    prune_magnitude,
    quantize_int8,
    read_key,
    verify_watermark,
)
from simulations.simulate import read_metrics, simulate

AGGREGATORS = ("fedavg", "median", "trimmed-mean", "krum", "multikrum")
ATTACKS = ("sign-flip", "scale")


@dataclass(frozen=True)
class RobustnessRow:
    """One run: final accuracy and the anomaly flags' precision and recall."""

    dataset: str
    aggregation: str
    attack: str
    accuracy: float
    flag_precision: float
    flag_recall: float


@dataclass(frozen=True)
class WatermarkRow:
    """Trigger accuracy and p-value of the watermarked model after one transformation."""

    dataset: str
    transform: str
    main_accuracy: float
    trigger_accuracy: float
    p_value: float
    detected: bool


def base_settings(dataset: str, data_dir: str, quick: bool) -> dict[str, Any]:
    """Run settings shared by every run on ``dataset``."""
    settings: dict[str, Any] = {"codec.topk": 1.0, "codec.bits": 8, "seed": 0}
    if dataset == "digits":
        settings |= {"num-server-rounds": 3 if quick else 15, "sim.clients": 10}
    else:
        settings |= {
            "dataset": dataset,
            "data-dir": data_dir,
            "sim.clients": 10,
            "num-server-rounds": 2 if quick else 6,
            "local-epochs": 1,
        }
    return settings


def _run(settings: dict[str, Any], out: Path, console: Console) -> Path:
    config = FedveilConfig.from_flat(settings)
    run_path, _ = simulate(config, out, console)
    return run_path


def flag_scores(run: Path, attackers: frozenset[int]) -> tuple[float, float]:
    """Return (precision, recall) of the flags over all rounds, by partition id."""
    state = json.loads((run / "checkpoint" / STATE_FILE).read_text())
    partition = {int(node): int(cid) for node, cid in state["node_clients"].items()}
    true_pos = flagged = took_part = 0
    for row in read_metrics(run):
        present = {partition[int(n)] for n in row["clients"]}
        marked = {partition[int(n)] for n in row["flagged"]}
        flagged += len(marked)
        true_pos += len(marked & attackers)
        took_part += len(present & attackers)
    precision = true_pos / flagged if flagged else 1.0
    recall = true_pos / took_part if took_part else 1.0
    return precision, recall


def robustness(
    dataset: str, data_dir: str, work: Path, quick: bool, console: Console
) -> list[RobustnessRow]:
    """Clean FedAvg, then every aggregator under each attack at 20 % attackers."""
    base = base_settings(dataset, data_dir, quick)
    attackers = attacker_ids(int(base["sim.clients"]), 0.2, 0)
    rows = []
    cases = [("fedavg", "none")] + [(a, k) for k in ATTACKS for a in AGGREGATORS]
    for aggregation, attack in cases:
        settings = base | {"aggregation": aggregation, "robust.assumed-malicious": 2}
        if attack != "none":
            settings |= {"attack.fraction": 0.2, "attack.kind": attack}
        run = _run(settings, work / f"{dataset}-{aggregation}-{attack}", console)
        rows_seen = read_metrics(run)
        precision, recall = flag_scores(run, attackers if attack != "none" else frozenset())
        rows.append(
            RobustnessRow(
                dataset,
                aggregation,
                attack,
                float(rows_seen[-1]["accuracy"]),
                precision,
                recall,
            )
        )
    return rows


def watermark(
    dataset: str, data_dir: str, work: Path, quick: bool, console: Console
) -> list[WatermarkRow]:
    """Train with and without the watermark; test the marked model after four attacks."""
    base = base_settings(dataset, data_dir, quick)
    plain = _run(base, work / f"{dataset}-plain", console)
    marked = _run(base | {"watermark.enabled": True}, work / f"{dataset}-marked", console)
    config = FedveilConfig.from_flat(base)
    data = load_data(config.dataset, config.data_dir, config.seed, config.test_fraction)
    name = model_for(config.model, data.image_shape)
    model = create_model(name, data.num_classes, seed=0)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    trigger = TriggerSet.from_key(read_key(marked / KEY_FILE), data.image_shape, data.num_classes)
    evaluator = CentralEvaluator(data)
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
    verdict = verify_watermark(model, trigger)
    rows.append(
        WatermarkRow(
            dataset,
            "no watermark (control)",
            evaluator.evaluate(model).accuracy,
            verdict.accuracy,
            verdict.p_value,
            verdict.detected,
        )
    )
    for label, transform in transforms.items():
        load_state(model, transform(trained))
        verdict = verify_watermark(model, trigger)
        rows.append(
            WatermarkRow(
                dataset,
                label,
                evaluator.evaluate(model).accuracy,
                verdict.accuracy,
                verdict.p_value,
                verdict.detected,
            )
        )
    load_state(model, trained)
    fine_tune(model, images, labels, epochs=3, lr=0.05)
    verdict = verify_watermark(model, trigger)
    rows.append(
        WatermarkRow(
            dataset,
            "fine-tune 3 epochs",
            evaluator.evaluate(model).accuracy,
            verdict.accuracy,
            verdict.p_value,
            verdict.detected,
        )
    )
    return rows


def robustness_table(rows: list[RobustnessRow]) -> Table:
    """Render the robustness results."""
    table = Table(title="Robust aggregation under 20 % attackers (final accuracy, flags)")
    for col in ("data", "aggregation", "attack", "accuracy", "flag precision", "flag recall"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r.dataset,
            r.aggregation,
            r.attack,
            f"{r.accuracy:.4f}",
            f"{r.flag_precision:.2f}",
            f"{r.flag_recall:.2f}",
        )
    return table


def watermark_table(rows: list[WatermarkRow]) -> Table:
    """Render the watermark results."""
    table = Table(title="Watermark: main accuracy, trigger accuracy, p-value")
    for col in ("data", "model", "main accuracy", "trigger accuracy", "p-value", "detected"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r.dataset,
            r.transform,
            f"{r.main_accuracy:.4f}",
            f"{r.trigger_accuracy:.2f}",
            f"{r.p_value:.2e}",
            "yes" if r.detected else "no",
        )
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print both tables; optionally write them as JSON."""
    parser = argparse.ArgumentParser(prog="python -m simulations.bench_defenses")
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--datasets", default="digits,mnist")
    parser.add_argument("--quick", action="store_true", help="few rounds (a smoke test)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--work", type=Path, help="where run directories go (default: temp)")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    out = Console()
    datasets = [d for d in args.datasets.split(",") if d]
    if "mnist" in datasets and not (Path(args.data_dir) / "mnist").is_dir():
        console.print(f"[yellow]{args.data_dir}/mnist not found: skipping MNIST[/yellow]")
        datasets.remove("mnist")
    with tempfile.TemporaryDirectory(prefix="fedveil-bench-defenses-") as tmp:
        work = args.work or Path(tmp)
        robust: list[RobustnessRow] = []
        marks: list[WatermarkRow] = []
        for dataset in datasets:
            robust += robustness(dataset, args.data_dir, work, args.quick, console)
            marks += watermark(dataset, args.data_dir, work, args.quick, console)
    out.print(robustness_table(robust))
    out.print(watermark_table(marks))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "robustness": [asdict(r) for r in robust],
                    "watermark": [asdict(r) for r in marks],
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
