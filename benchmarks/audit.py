"""``python -m benchmarks.audit``: the one-run audit's lower bound against the ledger's ε.

Digits, 10 clients, every client sampled every round, DP-SGD calibrated so each client ends at
``dp.target-epsilon`` (4 by default); ``privacy.audit = true`` with one canary per trainable
parameter. Each run is ``fedveil simulate``'s own path (``benchmarks.runs``); its
``privacy.json`` holds each client's audited lower bound beside the accountant's ε. ``CASES``
are the product's codec (top-k 10 %, 8 bits, error feedback) and no compression, audited
white-box, the codec audited black-box (input canaries, a tenth of each client's examples), and
the codec without the audit (what the canaries cost in accuracy), each over ``--seeds`` seeds.
Per audited case: the largest bound / ε over every client and seed (an honest run must stay
<= 1) and the mean, median and smallest share; per case the final accuracy of each run. Writes
everything as one stamped JSON (``benchmarks/results/audit.json`` unless ``--json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.command_line import add_assignments, config_keys, refuse
from benchmarks.provenance import RESULTS_DIR, write_json
from benchmarks.runs import BenchmarkError, run_simulation
from common.config import ConfigError, ConfigValue

NAME = "audit"
BASE: dict[str, ConfigValue] = {
    "dataset": "digits",
    "sim.clients": 10,
    "fraction-train": 1.0,
    "num-server-rounds": 15,
    "dp.target-epsilon": 4.0,
    "dp.delta": 1e-5,
    "dp.accountant": "rdp",
    "privacy.audit": True,
    "privacy.audit-canaries": 0,
}
"""Shared by every run; ``seed`` and the case's keys are set per run."""

CASES: dict[str, dict[str, ConfigValue]] = {
    "codec": {},
    "uncompressed": {"codec.topk": 1.0, "codec.bits": 32, "codec.error-feedback": False},
    "black-box": {"privacy.audit-mode": "black-box"},
    "no-audit": {"privacy.audit": False},
}
"""The product's codec and no compression, audited white-box; the codec audited black-box; the
product's codec without the audit, the baseline of the audit's cost in accuracy."""


def client_audits(privacy: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Return each audited client's numbers from a ``privacy.json`` document."""
    rows = []
    for cid, c in privacy["clients"].items():
        audit = c.get("audit")
        if audit is None:
            continue
        rows.append(
            {
                "client": cid,
                "epsilon": c["epsilon"],
                "lower_bound": audit["epsilon_lower_bound"],
                "share": audit["epsilon_lower_bound"] / c["epsilon"],
                "m": audit["m"],
                "guesses": audit["guesses"],
                "correct": audit["correct"],
            }
        )
    return rows


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Return the shares of ε the audit reached, and whether any bound exceeded its ε."""
    shares = [float(r["share"]) for r in rows]
    if not shares:
        raise BenchmarkError("no client was audited")
    return {
        "clients": len(shares),
        "max_share": max(shares),
        "mean_share": statistics.fmean(shares),
        "median_share": statistics.median(shares),
        "min_share": min(shares),
        "any_bound_above_epsilon": any(s > 1 for s in shares),
    }


def run_case(
    case: str, seeds: Sequence[int], overrides: Mapping[str, ConfigValue], out: Path
) -> dict[str, Any]:
    """Run ``case`` once per seed; return every client's audit and the case's summary."""
    rows: list[dict[str, Any]] = []
    accuracy: list[float] = []
    started = time.perf_counter()
    config = {**BASE, **CASES[case], **overrides}
    for seed in seeds:
        rounds = run_simulation({**config, "seed": seed}, out / f"{case}-seed{seed}")
        accuracy.append(float(rounds[-1]["accuracy"]))
        privacy = json.loads(next((out / f"{case}-seed{seed}").rglob("privacy.json")).read_text())
        rows.extend({"seed": seed, **r} for r in client_audits(privacy))
    return {
        "config": config,
        "seeds": list(seeds),
        "seconds": round(time.perf_counter() - started, 1),
        "final_accuracy": accuracy,
        "mean_accuracy": statistics.fmean(accuracy),
        "summary": summarize(rows) if config["privacy.audit"] else None,
        "clients": rows,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the cases and write the JSON; exit 2 with one line on bad input."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{NAME}", description=__doc__)
    parser.add_argument("--seeds", type=int, default=5, help="runs per case (seeds 0..N-1)")
    parser.add_argument("--case", choices=sorted(CASES), action="append", help="default: all")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / f"{NAME}.json")
    parser.add_argument("--out", type=Path, help="keep the run directories here")
    add_assignments(parser, "override a config key of every run")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        return refuse(NAME, f"--seeds must be >= 1, got {args.seeds}")
    try:
        overrides = config_keys(args.assignments)
    except ConfigError as exc:
        return refuse(NAME, exc)
    cases = args.case or sorted(CASES)
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch)
        try:
            results = {c: run_case(c, range(args.seeds), overrides, out) for c in cases}
        except (BenchmarkError, ConfigError) as exc:
            return refuse(NAME, exc)
    write_json(args.json, {"benchmark": NAME, "cases": results})
    for case, result in results.items():
        s = result["summary"]
        audit = (
            "not audited"
            if s is None
            else f"{s['clients']} client audits, bound/ε max {s['max_share']:.1%}, "
            f"mean {s['mean_share']:.1%}, median {s['median_share']:.1%}, "
            f"min {s['min_share']:.1%}; any above ε: {s['any_bound_above_epsilon']}"
        )
        print(f"{case}: accuracy {result['mean_accuracy']:.4f}; {audit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
