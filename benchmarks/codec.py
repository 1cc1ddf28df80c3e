"""``python -m benchmarks.codec``: what each codec setting saves and costs, over seeds.

Dense float32 and each codec setting (``SETTINGS``, or ``--settings``) run the same rounds of
``fedveil simulate``'s real stack (Flower's simulation engine, DP-SGD clients at the default ε
target, sealed updates) on one data set and model (default: MNIST's CNN, 20 clients, Dirichlet
0.5, 15 rounds), once per seed (the ``seed`` config key). Runs go seed by seed, so a stopped
benchmark has every setting on its first seeds; with ``--keep-runs DIR`` each finished run is
appended to ``DIR/summaries.jsonl`` and a rerun with the same keys reuses it. Printed per
setting (``benchmarks.codec_results``): bytes per client and round up (sealed) and down,
the ratio of dense up + down to it, accuracy mean and sd over seeds, the difference to dense,
and the codec + seal share of round time; then the verdict on issue 18's targets. The same
numbers go to JSON stamped with date, commit and machine (``benchmarks/results/codec.json``
for MNIST's CNN, ``codec-<dataset>-<model>.json`` otherwise, ``codec-quick.json`` for trial
runs, or ``--json``). ``--micro-only`` runs only the codec/seal/AES microbenchmarks.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.codec_micro import (
    downlink_seconds,
    micro_table,
    microbench,
    update_codec_seconds,
)
from benchmarks.codec_results import (
    RunSummary,
    SettingSummary,
    summarize_metrics,
    summarize_setting,
    verdict,
    verdict_lines,
)
from benchmarks.command_line import add_assignments, benchmark_parser, config_keys, refuse
from benchmarks.provenance import RESULTS_DIR, write_json
from benchmarks.runs import BenchmarkError, run_simulation
from common import subspace
from common.codec import CodecParams
from common.config import DATASETS, MODELS, ConfigValue, FedveilConfig
from common.sealing import AggregatorKeyPair

CNN_SIZE = 26_010
"""Parameters of ``common.models.SmallCNN`` (the MNIST model); the test checks it."""
LARGE_SIZE = 4 * 2**20
"""The 4M-coordinate vector of the microbenchmarks: 16 MiB as dense float32."""
RAW_SIZES = (2**20, 16 * 2**20)
"""Dense payload sizes (bytes) sealed beside the settings' payloads: 1 MiB and 16 MiB."""
DEFAULT_JSON = RESULTS_DIR / "codec.json"
QUICK_JSON = RESULTS_DIR / "codec-quick.json"
"""Trial runs (``--quick``, ``--micro-only``) write here by default, never over the results."""
SUMMARIES = "summaries.jsonl"


@dataclass(frozen=True)
class Setting:
    """One codec configuration under test (``downlink_bits``, ``lr`` ``None``: the run's)."""

    name: str
    topk: float
    bits: int
    error_feedback: bool = True
    mask: str = "topk"
    quantizer: str = "stochastic"
    downlink_bits: int | None = None
    lr: float | None = None

    @property
    def params(self) -> CodecParams:
        """The uplink codec parameters of this setting."""
        return CodecParams(topk=self.topk, bits=self.bits, mask=self.mask, quantizer=self.quantizer)

    def overrides(self) -> dict[str, ConfigValue]:
        """Return the ``--set``-style config keys of this setting."""
        keys: dict[str, ConfigValue] = {
            "codec.topk": self.topk,
            "codec.bits": self.bits,
            "codec.error-feedback": self.error_feedback,
            "codec.mask": self.mask,
            "codec.quantizer": self.quantizer,
        }
        if self.downlink_bits is not None:
            keys["codec.downlink-bits"] = self.downlink_bits
        if self.lr is not None:
            keys["lr"] = self.lr
        return keys


DENSE = Setting("dense-f32", 1.0, 32, downlink_bits=0)
SETTINGS: tuple[Setting, ...] = (
    DENSE,
    Setting("top10-8bit", 0.1, 8),
    Setting("sign", 1.0, 1, quantizer="sign"),
    Setting("dense-2bit", 1.0, 2),
    Setting("top10-sign", 0.1, 1, quantizer="sign"),
    Setting("top2-sign", 0.02, 1, quantizer="sign"),
    Setting("rand25-sign", 0.25, 1, mask="random", quantizer="sign"),
    Setting("rand25-sign-down1", 0.25, 1, mask="random", quantizer="sign", downlink_bits=1),
    Setting("sub25-4bit", 0.25, 4, mask="subspace"),
    Setting("sub10-8bit", 0.1, 8, mask="subspace"),
    Setting("sub10-4bit", 0.1, 4, mask="subspace"),
    Setting("sub10-4bit-down4", 0.1, 4, mask="subspace", downlink_bits=4),
    Setting("sub5-4bit", 0.05, 4, mask="subspace"),
    Setting("sub5-4bit-down4", 0.05, 4, mask="subspace", downlink_bits=4),
    Setting("sub4-8bit", 0.04, 8, mask="subspace"),
    Setting("sub5-4bit-lr2", 0.05, 4, mask="subspace", lr=2.0),
    Setting("sub5-4bit-down7-lr2", 0.05, 4, mask="subspace", downlink_bits=7, lr=2.0),
    Setting("sub5-4bit-down6-lr2", 0.05, 4, mask="subspace", downlink_bits=6, lr=2.0),
    Setting("sub5-4bit-down7-lr3", 0.05, 4, mask="subspace", downlink_bits=7, lr=3.0),
    Setting("sub4.5-4bit-lr2", 0.045, 4, mask="subspace", lr=2.0),
)
"""Dense float32 both ways first: the baseline of every ratio and accuracy difference.

The others keep the run's downlink (``codec.downlink-bits``' default) unless they name one.
``top10-8bit`` was the default before issue 18. ``sign`` sends every coordinate as one bit
(scaled sign, error feedback), ``dense-2bit`` every coordinate with unbiased 2-bit rounding.
The sparse ones aim at the aggressive preset: ``top2-sign`` spends about a byte per kept
index, ``rand25-sign`` none (a 16-byte seed), so it keeps many more coordinates per byte;
``rand25-sign-down1`` also sends the model at 1 bit per value (a scaled sign of its change).
``subK-Bbit`` trains each round in the shared random subspace of ``K`` % of the coordinates
(``codec.mask = "subspace"``, docs/subspace.md) and sends its values at ``B`` bits; the
downlink then carries only the last round's subspace (``-downB``: at ``B`` bits a value).
``-lrX`` trains at client learning rate ``X`` (``lr``) instead of the run's: a step's noise in
a subspace of fraction ``f`` has ``sqrt(f)`` times the dense norm, so a larger step costs less
noise there (docs/subspace.md); ``sub5-4bit-down7-lr2`` is the aggressive preset.
"""
BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class Plan:
    """How much work one benchmark invocation does."""

    dataset: str
    model: str
    flat: dict[str, ConfigValue]
    settings: tuple[Setting, ...]
    seeds: tuple[int, ...]
    repeats: int


# ------------------------------------------------------------------------------------ plan


def check_data(dataset: str, data_dir: Path | None) -> None:
    """Read ``dataset`` once, so a wrong folder fails before any run starts.

    Raises:
        DataError: the folder does not hold the data set (the message says what is wrong).
        ConfigError: a file data set without ``--data-dir``.

    """
    from common.config import ConfigError
    from common.data import load_data

    if dataset == "digits":
        return
    if data_dir is None:
        raise ConfigError(f"--dataset {dataset} needs --data-dir (or use --dataset digits)")
    load_data(dataset, str(data_dir), 0, 0.2)


def user_overrides(assignments: Sequence[str]) -> dict[str, ConfigValue]:
    """Parse ``--set KEY=VALUE`` options; codec keys and ``seed`` are refused (set per run)."""
    from common.config import ConfigError

    flat = config_keys(assignments)
    for key in flat:
        if key.startswith("codec."):
            raise ConfigError(f"config key `{key}` is set by each benchmark setting; drop it")
        if key == "seed":
            raise ConfigError("config key `seed` is set per run; use --seeds and --first-seed")
    return flat


def pick_settings(names: str | None) -> tuple[Setting, ...]:
    """Return dense float32 and the named settings (comma-separated), in ``SETTINGS`` order.

    Raises:
        ConfigError: a name is not in ``SETTINGS``.

    """
    from common.config import ConfigError

    if names is None:
        return SETTINGS
    wanted = {n.strip() for n in names.split(",") if n.strip()}
    unknown = sorted(wanted - set(BY_NAME))
    if unknown:
        raise ConfigError(f"unknown setting(s) {unknown}; choose from {sorted(BY_NAME)}")
    return tuple(s for s in SETTINGS if s is DENSE or s.name in wanted)


def build_plan(args: argparse.Namespace) -> Plan:
    """Turn the command line into one data set's keys, its settings and seeds.

    Every setting's config is validated first, then the data set is read once, so a bad
    option fails before any run starts.
    """
    extra = user_overrides(args.assignments)
    data_dir = None if args.data_dir is None else Path(args.data_dir).expanduser().resolve()
    if args.quick:
        flat: dict[str, ConfigValue] = {"num-server-rounds": 2, "sim.clients": 3, **extra}
        plan = Plan("digits", "auto", flat, pick_settings("sign"), (args.first_seed,), 3)
    else:
        flat = {
            "dataset": args.dataset,
            "model": args.model,
            "sim.clients": args.clients,
            "partitioning": "dirichlet",
            "dirichlet-alpha": args.alpha,
            "num-server-rounds": args.rounds,
            **({} if data_dir is None else {"data-dir": str(data_dir)}),
            **extra,
        }
        seeds = tuple(range(args.first_seed, args.first_seed + args.seeds))
        plan = Plan(
            args.dataset, args.model, flat, pick_settings(args.settings), seeds, args.repeats
        )
    for setting in plan.settings:
        FedveilConfig.from_flat(run_keys(plan, setting, plan.seeds[0]))
    check_data(plan.dataset, data_dir)
    return plan


def run_keys(plan: Plan, setting: Setting, seed: int) -> dict[str, ConfigValue]:
    """Return every config key of one run: the plan's, the setting's and the seed."""
    return {**plan.flat, **setting.overrides(), "seed": seed}


# ------------------------------------------------------------------------------------ runs


def load_summaries(path: Path) -> dict[str, RunSummary]:
    """Return the runs a kept folder already finished, by their keys (as JSON text)."""
    if not path.exists():
        return {}
    done = {}
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        done[entry["keys"]] = RunSummary(**entry["summary"])
    return done


def run_all(plan: Plan, runs_dir: Path, *, verbose: bool, log: Console) -> list[RunSummary]:
    """Run every setting on every seed (seed by seed); reuse runs ``runs_dir`` already holds."""
    store = runs_dir / SUMMARIES
    done = load_summaries(store)
    summaries = []
    for seed in plan.seeds:
        for setting in plan.settings:
            flat = run_keys(plan, setting, seed)
            keys = json.dumps(flat, sort_keys=True, default=str)
            if keys in done:
                summaries.append(done[keys])
                continue
            started = time.perf_counter()
            out = runs_dir / f"{plan.dataset}-{plan.model}-{setting.name}-seed{seed}"
            rows = run_simulation(flat, out, verbose=verbose)
            summary = summarize_metrics(setting.name, seed, rows)
            with store.open("a") as fh:
                fh.write(json.dumps({"keys": keys, "summary": dataclasses.asdict(summary)}) + "\n")
            log.print(
                f"{setting.name} seed {seed}: accuracy {summary.final_accuracy:.4f}, "
                f"{summary.bytes_up:,.0f} B up, {summary.bytes_down:,.0f} B down, "
                f"{time.perf_counter() - started:.0f} s"
            )
            summaries.append(summary)
    return summaries


def downlink_bits(plan: Plan, setting: Setting) -> int:
    """Return the ``codec.downlink-bits`` a setting's runs used (its own, else the default)."""
    return FedveilConfig.from_flat(run_keys(plan, setting, plan.seeds[0])).codec_downlink_bits


def aggregate(
    plan: Plan, runs: Sequence[RunSummary], keypair: AggregatorKeyPair
) -> list[SettingSummary]:
    """Group runs by setting (dense first) and time each setting's codec on the model's size."""
    dense = [r for r in runs if r.setting == DENSE.name]
    out = []
    for setting in plan.settings:
        mine = [r for r in runs if r.setting == setting.name]
        size = mine[0].parameters
        seconds = update_codec_seconds(setting.params, size, keypair, plan.repeats, plan.seeds[0])
        down = downlink_seconds(
            size,
            downlink_bits(plan, setting),
            setting.topk if setting.mask == subspace.MODE else None,
            statistics.fmean(r.clients_per_round for r in mine),
            plan.repeats,
            plan.seeds[0],
        )
        out.append(summarize_setting(mine, dense, seconds, down))
    return out


# ---------------------------------------------------------------------------------- output


def settings_table(plan: Plan, settings: Sequence[SettingSummary]) -> Table:
    """Return the table: bytes up and down, ratios, accuracy over seeds, codec share."""
    rounds = plan.flat.get("num-server-rounds")
    table = Table(
        title=f"{plan.dataset} / {plan.model}: {len(plan.seeds)} seed(s), {rounds} rounds"
    )
    for name in (
        "setting",
        "B up",
        "B down",
        "up x",
        "total x",
        "accuracy (mean ± sd)",
        "vs dense (pts)",
        "round s",
        "codec+seal share",
        "downlink share",
    ):
        table.add_column(name, justify="left" if name == "setting" else "right")
    for s in settings:
        down = f"{s.bytes_down:,.0f}" + ("" if s.down_measured else " (f32)")
        table.add_row(
            s.setting,
            f"{s.bytes_up:,.0f}",
            down,
            f"{s.up_ratio:,.1f}x",
            f"{s.total_ratio:,.1f}x",
            f"{s.accuracy_mean:.4f} ± {s.accuracy_sd:.4f}",
            f"{s.diff_points:+.2f}",
            f"{s.round_seconds:.2f}",
            f"{100 * s.codec_share:.3f} %",
            f"{100 * s.downlink_share:.3f} %",
        )
    return table


def report_json(
    plan: Plan,
    runs: Sequence[RunSummary],
    settings: Sequence[SettingSummary],
    load_before: Sequence[float],
) -> dict[str, Any]:
    """Return every number of the table, each run and the verdict (``write_json`` stamps it)."""
    return {
        "benchmark": "codec",
        "plan": {
            "dataset": plan.dataset,
            "model": plan.model,
            "keys": plan.flat,
            "seeds": list(plan.seeds),
            "repeats": plan.repeats,
        },
        "settings": [{**dataclasses.asdict(s), "keys": s.overrides()} for s in plan.settings],
        "summary": [dataclasses.asdict(s) for s in settings],
        "runs": [dataclasses.asdict(r) for r in runs],
        "verdict": verdict(settings),
        "load_average_before": list(load_before),
    }


# ------------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    """Return the benchmark's argument parser."""
    parser = benchmark_parser(
        "codec", "Bytes up and down, accuracy over seeds and codec cost of each codec setting."
    )
    parser.add_argument("--dataset", choices=DATASETS, default="mnist")
    parser.add_argument("--model", choices=MODELS, default="auto", help="e.g. cnn-wide")
    parser.add_argument("--clients", type=_positive_int, default=20)
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration")
    parser.add_argument("--rounds", type=_positive_int, default=15)
    parser.add_argument("--seeds", type=_positive_int, default=3, help="runs per setting")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are consecutive")
    parser.add_argument(
        "--settings",
        help=f"comma-separated names (dense-f32 always runs): {', '.join(BY_NAME)}",
    )
    parser.add_argument(
        "--repeats", type=_positive_int, default=7, help="timing samples (median reported)"
    )
    add_assignments(parser, "another config key for every run, e.g. local-epochs=1 (not codec.*)")
    parser.add_argument(
        "--quick", action="store_true", help="digits, 3 clients, 2 rounds, dense and sign"
    )
    parser.add_argument(
        "--micro-only",
        action="store_true",
        help="only the codec/seal/AES microbenchmarks (run them on a quiet machine)",
    )
    parser.add_argument("--json", type=Path, help="where to write every number")
    parser.add_argument(
        "--keep-runs",
        type=Path,
        help="keep run directories and summaries.jsonl here; a rerun reuses finished runs",
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


def default_json(args: argparse.Namespace) -> Path:
    """Return where the JSON goes without ``--json``."""
    if args.quick or args.micro_only:
        return QUICK_JSON
    if args.dataset == "mnist" and args.model in ("auto", "cnn"):
        return DEFAULT_JSON
    return RESULTS_DIR / f"codec-{args.dataset}-{args.model}.json"


def run(args: argparse.Namespace, runs_dir: Path) -> dict[str, Any]:
    """Run the benchmark, print its table and verdict, and return the JSON report."""
    log = Console(stderr=True)
    out = _output_console()
    keypair = AggregatorKeyPair.generate()
    load_before = os.getloadavg()
    if args.micro_only:
        named = [(s.name, s.params) for s in SETTINGS]
        micro = microbench(
            named, (CNN_SIZE, LARGE_SIZE), RAW_SIZES, keypair, repeats=args.repeats, seed=0
        )
        out.print(micro_table(micro))
        return {
            "benchmark": "codec-micro",
            "micro": [dataclasses.asdict(row) for row in micro],
            "load_average_before": list(load_before),
        }
    plan = build_plan(args)
    runs_dir.mkdir(parents=True, exist_ok=True)
    runs = run_all(plan, runs_dir, verbose=args.verbose, log=log)
    settings = aggregate(plan, runs, keypair)
    out.print(settings_table(plan, settings))
    for line in verdict_lines(f"{plan.dataset}/{plan.model}", verdict(settings)):
        out.print(line, highlight=False, soft_wrap=True)
    load_after = os.getloadavg()
    out.print(
        f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} "
        f"on {os.cpu_count()} CPUs",
        highlight=False,
    )
    return report_json(plan, runs, settings, load_before)


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
    path = args.json or default_json(args)
    write_json(path, report)
    print(path, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
