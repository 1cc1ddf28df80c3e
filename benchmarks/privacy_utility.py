"""``python -m benchmarks.privacy_utility``: final accuracy at ε = 1, 3, 8 and without DP.

MNIST (``--data-dir``), 20 clients, IID and Dirichlet(α = 0.5) splits. Each private cell is one
``fedveil simulate`` run (``benchmarks.runs``: DP-SGD calibrated so every client ends at the
target ε, δ = 1e-5, codec, sealing, aggregation, ledger); the "no DP" cell is the plain-Flower
baseline (``simulations.plain_flower``: Flower's FedAvg, plain SGD) on the same split, model,
clients and rounds. Writes, in ``--out``:

- ``results.jsonl``: one object per finished cell, stamped with date, commit and machine (kept:
  a rerun skips cells already there);
- ``privacy_utility.md``: the table, with Opacus's central MNIST figures beside it;
- ``privacy_utility.png``: accuracy against ε per split (a matplotlib ``Figure``, no pyplot);

and every cell of the table as one stamped JSON (``benchmarks/results/privacy_utility.json``
unless ``--json``). ``TUNED`` holds the settings of every private run (``--set KEY=VALUE``
overrides any key, ``--plain-set`` the baseline's).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.command_line import add_assignments, config_keys, refuse
from benchmarks.provenance import RESULTS_DIR, stamp, write_json
from benchmarks.runs import BenchmarkError, run_simulation
from common.config import ConfigError, FedveilConfig

EPSILONS = (1.0, 3.0, 8.0)
PARTITIONINGS = ("iid", "dirichlet")
DELTA = 1e-5

TUNED: dict[str, Any] = {
    "dataset": "mnist",
    "sim.clients": 20,
    "fraction-train": 1.0,
    "dirichlet-alpha": 0.5,
    "model": "cnn",
    "num-server-rounds": 15,
    "local-epochs": 1,
    "batch-size": 128,
    "lr": 2.0,
    "momentum": 0.0,
    "dp.max-grad-norm": 0.5,
    "dp.delta": DELTA,
    "dp.accountant": "rdp",
    "codec.topk": 1.0,
    "codec.bits": 8,
    "codec.error-feedback": True,
    "min-train-clients": 2,
}
"""Shared by every private run; ``dp.target-epsilon`` and ``dp.budget`` are set per cell."""

PLAIN: dict[str, Any] = {"lr": 0.02, "momentum": 0.9, "batch-size": 64}
"""The no-DP baseline's own optimizer settings (plain SGD wants a smaller step than DP-SGD)."""

REFERENCE = ((1.16, 0.946), (2.91, 0.968), (6.86, 0.971))
REFERENCE_NO_DP = 0.989
"""Opacus's central DP-SGD on MNIST (its example's README): (ε, accuracy), and without DP."""
DEFAULT_JSON = RESULTS_DIR / "privacy_utility.json"


def cell_name(partitioning: str, epsilon: float | None) -> str:
    """Return the key of one table cell (``iid-eps3``, ``dirichlet-nodp``)."""
    return f"{partitioning}-nodp" if epsilon is None else f"{partitioning}-eps{epsilon:g}"


def private_config(
    base: dict[str, Any], partitioning: str, epsilon: float, data_dir: str, out_dir: str
) -> FedveilConfig:
    """Return the fedveil config of one private cell."""
    flat = {
        **base,
        "partitioning": partitioning,
        "data-dir": data_dir,
        "out-dir": out_dir,
        "dp.target-epsilon": epsilon,
        # A client ends exactly at the target; a hair above it absorbs the calibration's slack.
        "dp.budget": epsilon * 1.001,
    }
    return FedveilConfig.from_flat(flat)


def plain_config(
    base: dict[str, Any], plain: dict[str, Any], partitioning: str, data_dir: str
) -> FedveilConfig:
    """Return the config of the no-DP baseline cell (DP keys are ignored by it)."""
    return FedveilConfig.from_flat(
        {**base, **plain, "partitioning": partitioning, "data-dir": data_dir}
    )


def run_private(config: FedveilConfig, run_path: Path) -> dict[str, Any]:
    """Run one fedveil simulation; return its final accuracy and spent ε."""
    started = time.perf_counter()
    rows = run_simulation(config.to_flat(), run_path)
    privacy = json.loads((run_path / "privacy.json").read_text())
    return {
        **private_cell(rows, privacy),
        "minutes": (time.perf_counter() - started) / 60,
        "run": str(run_path),
    }


def private_cell(rows: Sequence[dict[str, Any]], privacy: dict[str, Any]) -> dict[str, Any]:
    """Return a private cell from a run's ``metrics.jsonl`` rows and ``privacy.json``.

    ``epsilon_max`` is the largest ε any client spent; ``sigma`` the noise multipliers used.
    """
    clients = privacy["clients"].values()
    return {
        "accuracy": float(rows[-1]["accuracy"]),
        "accuracies": [float(r["accuracy"]) for r in rows],
        "rounds": len(rows),
        "epsilon_max": max((float(c["epsilon"]) for c in clients), default=float("nan")),
        "sigma": sorted({float(h[0]) for c in clients for h in c["history"]}),
    }


def run_baseline(config: FedveilConfig, run_path: Path) -> dict[str, Any]:
    """Run the plain-Flower baseline; return its final accuracy."""
    from simulations.plain_flower import run_plain

    started = time.perf_counter()
    run = run_plain(config, run_path)
    return {
        "accuracy": run.final_accuracy,
        "accuracies": [r.accuracy for r in run.rounds],
        "rounds": len(run.rounds),
        "epsilon_max": None,
        "sigma": [],
        "minutes": (time.perf_counter() - started) / 60,
        "run": str(run_path),
    }


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """Return the finished cells of ``results.jsonl`` by name (later lines win)."""
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["cell"]: r for r in rows}


def _pct(x: float | None) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{100 * x:.1f} %"


def markdown_table(results: dict[str, dict[str, Any]], epsilons: Sequence[float]) -> str:
    """Return the Markdown table: one row per split, one column per ε and without DP."""
    head = [f"ε = {e:g}" for e in epsilons] + ["no DP"]
    lines = [
        "| MNIST, 20 clients | " + " | ".join(head) + " |",
        "|---|" + "---|" * len(head),
    ]
    for part in PARTITIONINGS:
        label = "IID" if part == "iid" else "Dirichlet α = 0.5"
        cells = []
        for eps in [*epsilons, None]:
            r = results.get(cell_name(part, eps))
            if r is None:
                cells.append("not run")
            elif eps is None:
                cells.append(_pct(r["accuracy"]))
            else:
                cells.append(f"{_pct(r['accuracy'])} (ε {r['epsilon_max']:.2f})")
        lines.append(f"| fedveil, {label} | " + " | ".join(cells) + " |")
    ref_cells = []
    for eps in epsilons:
        near = min(REFERENCE, key=lambda p: abs(math.log(p[0] / eps)))
        ref_cells.append(f"{_pct(near[1])} (ε {near[0]:g})")
    lines.append(
        "| Opacus central (reference) | " + " | ".join(ref_cells) + f" | {_pct(REFERENCE_NO_DP)} |"
    )
    return "\n".join(lines)


def plot(results: dict[str, dict[str, Any]], epsilons: Sequence[float], path: Path) -> None:
    """Write accuracy against ε, per split, with the baseline and Opacus's central figures."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for part, color in zip(PARTITIONINGS, ("tab:blue", "tab:orange"), strict=True):
        pts = [
            (results[cell_name(part, e)]["epsilon_max"], results[cell_name(part, e)]["accuracy"])
            for e in epsilons
            if cell_name(part, e) in results
        ]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, [100 * y for y in ys], "o-", color=color, label=f"fedveil {part}")
        base = results.get(cell_name(part, None))
        if base is not None:
            ax.axhline(100 * base["accuracy"], color=color, ls="--", lw=1, label=f"no DP {part}")
    rx, ry = zip(*REFERENCE, strict=True)
    ax.plot(rx, [100 * y for y in ry], "s:", color="gray", label="Opacus central")
    ax.axhline(100 * REFERENCE_NO_DP, color="gray", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xticks(list(epsilons), [f"{e:g}" for e in epsilons])
    ax.set_xticks([], minor=True)
    ax.set_xlabel("ε (δ = 1e-5), largest spent by any client")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("MNIST, 20 clients: accuracy vs privacy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.savefig(path)


def build_parser() -> argparse.ArgumentParser:
    """Return the command's argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.privacy_utility",
        description="Final MNIST accuracy at ε = 1, 3, 8 and without DP (20 clients).",
    )
    p.add_argument(
        "--data-dir", required=True, help="folder holding MNIST's IDX files (directly or in mnist/)"
    )
    p.add_argument("--out", type=Path, required=True, help="folder for the table, plot, runs")
    p.add_argument("--epsilons", default=",".join(f"{e:g}" for e in EPSILONS))
    p.add_argument("--partitionings", default=",".join(PARTITIONINGS))
    add_assignments(p)
    add_assignments(p, flag="--plain-set", dest="plain_assignments")
    p.add_argument("--no-baseline", action="store_true", help="skip the no-DP cells")
    p.add_argument("--rerun", action="store_true", help="run cells already in results.jsonl")
    p.add_argument(
        "--json",
        type=Path,
        default=DEFAULT_JSON,
        help="where to write the table's cells (default: benchmarks/results/privacy_utility.json)",
    )
    return p


def summary_json(
    cells: dict[str, dict[str, Any]], epsilons: Sequence[float], table: str
) -> dict[str, Any]:
    """Return the table's cells (each stamped when it ran) and the table as one JSON object."""
    return {
        "benchmark": "privacy_utility",
        "epsilons": list(epsilons),
        "cells": cells,
        "table": table,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the missing cells, then write the table, the plot and the JSON. Exit 0, 2 on error."""
    from common.data import DataError, load_data
    from server.rundir import RunDirError

    args = build_parser().parse_args(argv)
    out: Path = args.out
    try:
        epsilons = [float(e) for e in args.epsilons.split(",") if e]
        parts = [p for p in args.partitionings.split(",") if p]
        if not set(parts) <= set(PARTITIONINGS):
            raise ConfigError(f"--partitionings takes {PARTITIONINGS}, got {parts}")
        base = {**TUNED, **config_keys(args.assignments)}
        plain = {**PLAIN, **config_keys(args.plain_assignments)}
        config = private_config(base, "iid", 1.0, args.data_dir, str(out))
        load_data(config.dataset, config.data_dir, config.seed, config.test_fraction)
    except (ConfigError, DataError, ValueError) as exc:
        return refuse("privacy_utility", exc)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.jsonl"
    done = {} if args.rerun else read_results(results_path)
    cells: list[tuple[str, float | None]] = [(p, e) for p in parts for e in epsilons]
    if not args.no_baseline:
        cells += [(p, None) for p in parts]
    for part, eps in cells:
        name = cell_name(part, eps)
        if name in done:
            continue
        run_path = out / "runs" / f"{name}-{int(time.time())}"
        load = os.getloadavg()[0]
        print(f"{name}: running (load {load:.1f}) ...", file=sys.stderr, flush=True)
        try:
            if eps is None:
                config = plain_config(base, plain, part, args.data_dir)
                result = run_baseline(config, run_path)
            else:
                config = private_config(base, part, eps, args.data_dir, str(out))
                result = run_private(config, run_path)
        except (BenchmarkError, RunDirError) as exc:
            return refuse("privacy_utility", f"{name}: {exc}")
        cell = {"cell": name, "partitioning": part, "target_epsilon": eps, "load": load, **result}
        row = stamp({**cell, "config": config.to_flat()})
        with results_path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        done[name] = row
        print(
            f"{name}: accuracy {_pct(result['accuracy'])} in {result['minutes']:.1f} min",
            file=sys.stderr,
            flush=True,
        )
    table = markdown_table(done, epsilons)
    (out / "privacy_utility.md").write_text(table + "\n")
    plot(done, epsilons, out / "privacy_utility.png")
    write_json(args.json, summary_json(done, epsilons, table))
    print(table)
    print(out / "privacy_utility.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
