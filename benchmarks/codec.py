"""``python -m benchmarks.codec``: what the update codec saves and what sealing costs.

One command, two tables on stdout, and the same numbers as JSON stamped with date, commit and
machine (``benchmarks/results/codec.json``, or ``codec-quick.json`` for trial runs, or ``--json``):

1. Uplink and accuracy. Dense float32 and each codec setting (``SETTINGS``) run the same rounds
   of ``fedveil simulate``'s real stack (Flower's simulation engine, DP-SGD clients at the
   default ε target, sealed updates) on digits and, with ``--data-dir``, MNIST (20 clients,
   Dirichlet 0.5, the CNN). From each run's ``metrics.jsonl``: sealed bytes per update, the
   ratio of dense float32 bytes to sealed bytes, final accuracy, the mean steady-state round
   time (round 1 also starts the simulation engine, so it is left out), and sealing's share.
2. Microbenchmarks (``benchmarks.codec_micro``): codec, envelope, HPKE and AES-256-GCM MB/s.

Sealing share of round time = median seal+open seconds of one update (measured here on that
model's size and setting) x clients per round / mean steady-state round seconds. It is an upper
bound: in a round the clients seal in parallel and only the opening is serial on the server.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.codec_micro import MicroRow, micro_table, microbench, update_seal_seconds
from benchmarks.codec_results import (
    RunResult,
    RunSummary,
    attach_costs,
    summarize_metrics,
    verdict,
    verdict_lines,
)
from benchmarks.command_line import add_assignments, benchmark_parser, config_keys, refuse
from benchmarks.provenance import RESULTS_DIR, write_json
from benchmarks.runs import BenchmarkError, run_simulation
from common.codec import CodecParams
from common.config import ConfigValue, FedveilConfig
from common.sealing import AggregatorKeyPair

CNN_SIZE = 26_010
"""Parameters of ``common.models.SmallCNN`` (the MNIST model); the test checks it."""
LARGE_SIZE = 4 * 2**20
"""The 4M-coordinate vector: 16 MiB as dense float32."""
RAW_SIZES = (2**20, 16 * 2**20)
"""Dense payload sizes (bytes) sealed beside the settings' payloads: 1 MiB and 16 MiB."""
DEFAULT_JSON = RESULTS_DIR / "codec.json"
QUICK_JSON = RESULTS_DIR / "codec-quick.json"
"""Trial runs (``--quick``, ``--micro-only``) write here by default, never over the results."""


@dataclass(frozen=True)
class Setting:
    """One codec configuration under test."""

    name: str
    topk: float
    bits: int
    error_feedback: bool
    mask: str = "topk"

    @property
    def params(self) -> CodecParams:
        """The codec parameters of this setting."""
        return CodecParams(topk=self.topk, bits=self.bits, mask=self.mask)

    def overrides(self) -> dict[str, ConfigValue]:
        """Return the ``--set``-style config keys of this setting."""
        return {
            "codec.topk": self.topk,
            "codec.bits": self.bits,
            "codec.error-feedback": self.error_feedback,
            "codec.mask": self.mask,
        }


DENSE = Setting("dense-f32", 1.0, 32, True)
SETTINGS: tuple[Setting, ...] = (
    DENSE,
    Setting("dense-8bit", 1.0, 8, True),
    Setting("top10-8bit", 0.1, 8, True),
    Setting("top2-2bit", 0.02, 2, True),
    Setting("top1-4bit", 0.01, 4, True),
    Setting("top1-4bit-noef", 0.01, 4, False),
    Setting("top2.2-4bit", 0.022, 4, True),
    Setting("rand6.6-4bit", 0.066, 4, True, "random"),
)
"""Dense float32 first: it is the baseline of every ratio and accuracy loss.

``top2-2bit`` spends about the bytes of ``top1-4bit`` (a kept coordinate's index costs about a
byte, its value ``bits``), on twice the coordinates at a coarser grid. ``top2.2-4bit`` and
``rand6.6-4bit`` fill the ~1,040-byte budget of 100x on the MNIST CNN: the first with the
largest magnitudes (an index byte and half a value byte each), the second with three times as
many coordinates of a seeded random mask (no index bytes), each sent about every 15 rounds.
"""


@dataclass(frozen=True)
class Scenario:
    """A data set and the config keys (without codec keys) every setting runs with."""

    dataset: str
    flat: dict[str, ConfigValue]


@dataclass(frozen=True)
class Plan:
    """How much work one benchmark invocation does."""

    scenarios: tuple[Scenario, ...]
    skipped: dict[str, str]
    micro_sizes: tuple[int, ...]
    raw_sizes: tuple[int, ...]
    repeats: int


# ----------------------------------------------------------------------------------- runs


def run_setting(scenario: Scenario, setting: Setting, out: Path, *, verbose: bool) -> RunSummary:
    """Run ``setting`` on ``scenario`` as ``fedveil simulate`` would; summarize its run."""
    rows = run_simulation({**scenario.flat, **setting.overrides()}, out, verbose=verbose)
    return summarize_metrics(setting.name, rows)


# ------------------------------------------------------------------------------ scenarios


def check_mnist(data_dir: Path) -> None:
    """Read MNIST from ``data_dir`` once, so a wrong folder fails before any run starts.

    Raises:
        DataError: ``data_dir`` does not hold MNIST's IDX files (the message says what is wrong).

    """
    from common.data import load_data

    load_data("mnist", str(data_dir), 0, 0.2)


def user_overrides(assignments: Sequence[str]) -> dict[str, ConfigValue]:
    """Parse ``--set KEY=VALUE`` options; codec keys are refused (each setting sets them)."""
    from common.config import ConfigError

    flat = config_keys(assignments)
    for key in flat:
        if key.startswith("codec."):
            raise ConfigError(f"config key `{key}` is set by each benchmark setting; drop it")
    return flat


def build_plan(args: argparse.Namespace) -> Plan:
    """Turn the command line into scenarios, skipped data sets and microbenchmark sizes.

    Every scenario's config is validated here, so a bad option fails before any run starts.
    """
    extra = {"seed": args.seed, **user_overrides(args.assignments)}
    if args.micro_only:
        why = "--micro-only runs the microbenchmarks alone"
        sizes = (CNN_SIZE, 2**16) if args.quick else (CNN_SIZE, LARGE_SIZE)
        raw = (2**16,) if args.quick else RAW_SIZES
        repeats = 3 if args.quick else args.repeats
        return Plan((), {"digits": why, "mnist": why}, sizes, raw, repeats)
    if args.quick:
        digits = Scenario("digits", {"num-server-rounds": 2, "sim.clients": 3, **extra})
        plan = Plan(
            (digits,), {"mnist": "--quick runs digits only"}, (CNN_SIZE, 2**16), (2**16,), 3
        )
    else:
        scenarios = [Scenario("digits", {"num-server-rounds": args.rounds_digits, **extra})]
        skipped = {}
        if args.data_dir is None:
            skipped["mnist"] = "no --data-dir given"
        else:
            data_dir = Path(args.data_dir).expanduser().resolve()
            check_mnist(data_dir)
            scenarios.append(Scenario("mnist", {**mnist_keys(args, data_dir), **extra}))
        plan = Plan(tuple(scenarios), skipped, (CNN_SIZE, LARGE_SIZE), RAW_SIZES, args.repeats)
    for scenario in plan.scenarios:
        for setting in SETTINGS:
            FedveilConfig.from_flat({**scenario.flat, **setting.overrides()})
    return plan


def mnist_keys(args: argparse.Namespace, data_dir: Path) -> dict[str, ConfigValue]:
    """Return the MNIST scenario: non-IID (Dirichlet 0.5) over ``--clients-mnist`` clients."""
    return {
        "dataset": "mnist",
        "data-dir": str(data_dir),
        "sim.clients": args.clients_mnist,
        "partitioning": "dirichlet",
        "dirichlet-alpha": 0.5,
        "num-server-rounds": args.rounds_mnist,
    }


def run_scenario(
    scenario: Scenario,
    runs_dir: Path,
    keypair: AggregatorKeyPair,
    plan: Plan,
    *,
    verbose: bool,
    log: Console,
) -> list[RunResult]:
    """Run every setting on ``scenario``; attach accuracy loss and sealing share to each."""
    summaries = []
    for setting in SETTINGS:
        started = time.perf_counter()
        summary = run_setting(
            scenario, setting, runs_dir / f"{scenario.dataset}-{setting.name}", verbose=verbose
        )
        log.print(
            f"{scenario.dataset} {setting.name}: accuracy {summary.final_accuracy:.4f}, "
            f"{summary.bytes_per_update:,.0f} B/update, {time.perf_counter() - started:.0f} s"
        )
        summaries.append(summary)
    seconds = [
        update_seal_seconds(setting.params, summary.parameters, keypair, plan.repeats, 0)
        for setting, summary in zip(SETTINGS, summaries, strict=True)
    ]
    return attach_costs(summaries, seconds)


# ------------------------------------------------------------------------------- output


def accuracy_table(results: dict[str, list[RunResult]]) -> Table:
    """Return table 1: uplink bytes, ratio, accuracy and sealing share, settings side by side."""
    table = Table(title="codec settings on the real stack (same rounds per data set)")
    for name in (
        "data",
        "setting",
        "mask",
        "EF",
        "rounds",
        "B/update",
        "ratio",
        "final acc",
        "loss (pts)",
        "round s",
        "seal+open ms",
        "seal share",
    ):
        table.add_column(name, justify="left" if name in ("data", "setting") else "right")
    by_name = {s.name: s for s in SETTINGS}
    for dataset, runs in results.items():
        for r in runs:
            s = r.summary
            table.add_row(
                dataset,
                s.setting,
                by_name[s.setting].mask,
                "on" if by_name[s.setting].error_feedback else "off",
                str(s.rounds),
                f"{s.bytes_per_update:,.0f}",
                f"{s.ratio:,.1f}x",
                f"{s.final_accuracy:.4f}",
                f"{r.accuracy_loss_points:+.2f}",
                f"{s.round_seconds:.2f}",
                f"{1e3 * r.seal_open_seconds:.3f}",
                f"{100 * r.seal_share:.3f} %",
            )
        table.add_section()
    return table


def report_json(
    plan: Plan,
    results: dict[str, list[RunResult]],
    micro: Sequence[MicroRow],
    load_before: Sequence[float],
) -> dict[str, Any]:
    """Return every number of the tables as one JSON-ready object (``write_json`` stamps it).

    ``load_before`` is the load average when the runs started; the stamp holds it at the end.
    """
    return {
        "benchmark": "codec",
        "plan": {
            "datasets": {s.dataset: s.flat for s in plan.scenarios},
            "micro_sizes": list(plan.micro_sizes),
            "raw_sizes": list(plan.raw_sizes),
            "repeats": plan.repeats,
        },
        "settings": [dataclasses.asdict(s) for s in SETTINGS],
        "accuracy": {
            dataset: {
                "rounds": runs[0].summary.rounds,
                "runs": [{**dataclasses.asdict(r.summary), **_result_extras(r)} for r in runs],
                "verdict": verdict(runs),
            }
            for dataset, runs in results.items()
        },
        "skipped": plan.skipped,
        "micro": [dataclasses.asdict(row) for row in micro],
        "load_average_before": list(load_before),
    }


def _result_extras(r: RunResult) -> dict[str, float]:
    return {
        "accuracy_loss_points": r.accuracy_loss_points,
        "seal_open_seconds": r.seal_open_seconds,
        "seal_share": r.seal_share,
    }


# ---------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """Return the benchmark's argument parser."""
    parser = benchmark_parser(
        "codec", "Uplink bytes, accuracy and sealing cost of dense float32 vs codec settings."
    )
    parser.add_argument("--rounds-digits", type=_positive_int, default=15)
    parser.add_argument("--rounds-mnist", type=_positive_int, default=8)
    parser.add_argument("--clients-mnist", type=_positive_int, default=20)
    parser.add_argument(
        "--repeats",
        type=_positive_int,
        default=7,
        help="timing samples per microbenchmark (the median is reported)",
    )
    parser.add_argument("--seed", type=int, default=0, help="the runs' `seed` config key")
    add_assignments(parser, "another config key for every run, e.g. local-epochs=1 (not codec.*)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="digits only, 3 clients, 2 rounds, tiny microbenchmarks",
    )
    parser.add_argument(
        "--micro-only",
        action="store_true",
        help="only the codec/seal/AES microbenchmarks (seconds; run them on a quiet machine)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        help=f"where to write every number (default: {DEFAULT_JSON.name}, or "
        f"{QUICK_JSON.name} with --quick or --micro-only, in benchmarks/results/)",
    )
    parser.add_argument(
        "--keep-runs",
        type=Path,
        help="keep the run directories in this folder (default: a temporary one)",
    )
    parser.add_argument("--verbose", action="store_true", help="show each run's display and logs")
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _output_console() -> Console:
    console = Console()
    return console if console.is_terminal else Console(width=160)


def run(args: argparse.Namespace, runs_dir: Path) -> dict[str, Any]:
    """Run the whole benchmark, print both tables, and return the JSON report."""
    log = Console(stderr=True)
    plan = build_plan(args)
    load_before = os.getloadavg()
    keypair = AggregatorKeyPair.generate()
    results = {
        scenario.dataset: run_scenario(
            scenario, runs_dir, keypair, plan, verbose=args.verbose, log=log
        )
        for scenario in plan.scenarios
    }
    log.print("microbenchmarks ...")
    named = [(s.name, s.params) for s in SETTINGS]
    micro = microbench(
        named, plan.micro_sizes, plan.raw_sizes, keypair, repeats=plan.repeats, seed=args.seed
    )
    load_after = os.getloadavg()
    out = _output_console()
    if results:
        out.print(accuracy_table(results))
    for dataset, reason in plan.skipped.items():
        out.print(f"{dataset}: skipped ({reason})", highlight=False)
    out.print(micro_table(micro))
    for line in verdict_lines({d: verdict(r) for d, r in results.items()}):
        out.print(line, highlight=False, soft_wrap=True)
    out.print(
        f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} "
        f"on {os.cpu_count()} CPUs",
        highlight=False,
    )
    return report_json(plan, results, micro, load_before)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python -m benchmarks.codec [options]``; 0 on success."""
    from common.config import ConfigError
    from common.data import DataError
    from server.rundir import RunDirError

    args = build_parser().parse_args(argv)
    try:
        if args.keep_runs is not None:
            report = run(args, args.keep_runs)
        else:
            with tempfile.TemporaryDirectory(prefix="bench-codec-") as tmp:
                report = run(args, Path(tmp))
    except (BenchmarkError, ConfigError, DataError, RunDirError) as exc:
        return refuse("codec", exc)
    trial = args.quick or args.micro_only
    path = args.json or (QUICK_JSON if trial else DEFAULT_JSON)
    write_json(path, report)
    print(path, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
