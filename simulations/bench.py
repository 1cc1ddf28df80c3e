"""``fedveil bench``: what fedveil's privacy costs, as ratios to plain Flower.

One invocation runs the same task (model, data, partition, clients, rounds, seed) twice, each in
its own process so that memory is measured per variant (``simulations.bench_process``):

(a) ``plain``: Flower's own ``FedAvg`` with ``strategy.start`` and a minimal Message-API
    ClientApp, plain SGD, no DP, no codec, no sealing (``simulations.bench_plain_variant``);
(b) ``fedveil``: the full stack (DP-SGD, codec, sealing, opening and validation, aggregation,
    ledger, checkpoints; ``simulations.bench_fedveil_variant``),

timed through public hooks only (``simulations.bench_timing``), and then times DP-SGD steps
against non-private ones (``simulations.bench_steps``). Prints the tables
(``simulations.bench_render``) and writes ``bench.json`` to ``--out`` (default: a temp folder):
``task``, ``device`` (where the config's ``device`` resolves here), ``device_name`` (the GPU's
model, or the device type) and ``torch``, ``variants`` (``simulations.bench_summary``), ``ratios``
(fedveil over plain), ``steps``, ``client_round``, load, CPUs, actors.
``--quick``: digits, 10 clients, 3 rounds, fewer step samples; without it, 6 rounds.
``--config``/``--set`` take any fedveil scenario; ``--only`` runs one variant; ``--no-steps``
skips the step timings; ``--ray-address`` runs both variants on an existing Ray cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

from common.config import ConfigError, FedveilConfig, load_toml, parse_assignment
from common.device import device_name, resolve_device
from simulations.bench_child import VARIANTS

QUICK = {"dataset": "digits", "sim.clients": 10, "num-server-rounds": 3}
FULL = {"dataset": "digits", "sim.clients": 10, "num-server-rounds": 6}


def build_config(args: argparse.Namespace) -> FedveilConfig:
    """Defaults, then ``--quick``'s or the full task, then ``--config``, then ``--set``."""
    flat: dict[str, Any] = dict(QUICK if args.quick else FULL)
    if args.data_dir:
        flat["data-dir"] = args.data_dir
    if args.config:
        flat.update(load_toml(Path(args.config)))
    for text in args.assignments:
        key, value = parse_assignment(text)
        flat[key] = value
    flat.setdefault("out-dir", tempfile.gettempdir())
    return FedveilConfig.from_flat(flat)


def build_parser() -> argparse.ArgumentParser:
    """Return the benchmark's argument parser."""
    p = argparse.ArgumentParser(
        prog="fedveil bench",
        description="fedveil's full stack vs plain Flower FedAvg on the same task, as ratios.",
    )
    p.add_argument("--quick", action="store_true", help="digits, 3 rounds, short step bench")
    p.add_argument("--config", help="a fedveil TOML scenario (applied after the built-in task)")
    p.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--data-dir", default="", help="folder of MNIST etc. (sets `data-dir`)")
    p.add_argument("--out", type=Path, help="folder for bench.json and the runs (default: temp)")
    p.add_argument("--only", choices=VARIANTS, help="run one variant (no ratios to the other)")
    p.add_argument("--no-steps", action="store_true", help="skip the DP-SGD step bench")
    p.add_argument("--ray-address", default="", help="run on an existing Ray cluster")
    p.add_argument("--sample-every", type=float, default=0.25, help="memory sampling period (s)")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--child-dir", type=Path, help=argparse.SUPPRESS)
    return p


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def _child(args: argparse.Namespace) -> int:
    from simulations.bench_child import run_child

    folder: Path = args.child_dir
    config = FedveilConfig.from_flat(json.loads((folder / "config.json").read_text()))
    result = run_child(args.child, config, folder, args.ray_address)
    (folder / "result.json").write_text(json.dumps(result, indent=1))
    return 0


def _step_report(config: FedveilConfig, quick: bool, device: str) -> tuple[dict[str, Any], Any]:
    from simulations.bench_steps import STEP_MODELS, client_round_times, step_times

    print(f"timing DP-SGD steps on {device} ...", file=sys.stderr, flush=True)
    blocks, per_block = (6, 10) if quick else (12, 20)
    steps = {
        model: step_times(
            model,
            shape,
            batch_size=config.batch_size,
            blocks=blocks,
            steps_per_block=per_block,
            device=device,
        )
        for model, shape in STEP_MODELS
    }
    return steps, client_round_times(config, repeats=3 if quick else 7, device=device)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the tables and write ``bench.json``. Exit 0, 1 or 2 (input)."""
    from simulations.bench_process import BenchError, run_variant
    from simulations.bench_render import render
    from simulations.bench_summary import ratios, summarize

    args = build_parser().parse_args(argv)
    if args.child:
        return _child(args)
    try:
        config = build_config(args)
        device = resolve_device(config.device)
    except ConfigError as exc:
        print(f"fedveil bench: error: {exc}", file=sys.stderr)
        return 2
    out: Path = args.out or Path(tempfile.mkdtemp(prefix="fedveil-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    load_before = _load()
    started = time.perf_counter()
    actors = max(1, int((os.cpu_count() or 1) // config.sim_cpus_per_client))
    summaries: dict[str, dict[str, Any]] = {}
    try:
        for variant in [args.only] if args.only else VARIANTS:
            print(f"running {variant} ...", file=sys.stderr, flush=True)
            run = run_variant(
                variant,
                config,
                out / variant,
                ray_address=args.ray_address,
                sample_every=args.sample_every,
            )
            summaries[variant] = summarize(run, actors)
    except BenchError as exc:
        print(f"fedveil bench: {exc}", file=sys.stderr)
        return 1
    steps, client_round = (
        ({}, None) if args.no_steps else _step_report(config, args.quick, str(device))
    )
    report: dict[str, Any] = {
        "task": config.to_flat(),
        "quick": args.quick,
        "device": str(device),
        "device_name": device_name(device),
        "torch": version("torch"),
        "load": {"before": load_before, "after": _load()},
        "cpus": os.cpu_count(),
        "actors": actors,
        "ray_address": args.ray_address or None,
        "variants": summaries,
        "steps": steps,
        "step_batch": config.batch_size,
        "client_round": client_round,
        "bench_seconds": time.perf_counter() - started,
    }
    fed = summaries.get("fedveil")
    if fed is not None:
        report["ratios"] = ratios(summaries.get("plain"), fed, steps)
        print(render(report))
    (out / "bench.json").write_text(json.dumps(report, indent=1))
    print(out / "bench.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
