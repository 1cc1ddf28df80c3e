"""The bench's figures: a variant's rounds, probes and memory reduced, and fedveil over plain.

``summarize`` reduces one ``VariantRun``. Steady rounds are rounds 2.. (round 1 also starts the
engine and imports torch in each actor); a round's seconds are ``metrics.jsonl``'s (sampling
to the end of central evaluation). ``breakdown`` holds the mean steady-round server seconds per
phase (``server_*``, ``simulations.bench_timing.SERVER_PHASES``) and the mean seconds per
client train call (``client_*``: ``total``, ``cpu`` and, for fedveil, each step of
``simulations.bench_client.STEPS``). ``seal_open_share`` (fedveil only) is the clients' seal
step (delta, error feedback, codec, HPKE seal) divided by the actors that run in parallel,
plus the server's ``aggregate_train`` (HPKE open, decode, validate, screen, aggregate), over
the steady rounds' seconds: an upper bound on what sealing and opening cost a round.
``ratios`` gives fedveil over plain for every figure that has both, and the DP-SGD step over
the non-private step per model and mode; ``check_ratios`` names the ones that are unusable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from simulations.bench_process import BenchError, VariantRun
from simulations.bench_steps import MODES
from simulations.bench_timing import TRACE_IDS

RATIO_FIELDS = (
    ("steady_round_time", "steady_round_seconds"),
    ("wall_time", "wall_seconds"),
    ("uplink_bytes_per_round", "uplink_bytes_per_round"),
    ("downlink_bytes_per_round", "downlink_bytes_per_round"),
    ("peak_tree_rss", "peak_tree_rss"),
    ("peak_tree_pss", "peak_tree_pss"),
)
"""``ratios`` key and the summary field it divides."""


def mean(values: Sequence[float]) -> float:
    """Return the mean of ``values`` (``nan`` when empty)."""
    return sum(values) / len(values) if values else float("nan")


def breakdown(
    server: dict[str, dict[str, float]], clients: list[dict[str, Any]], steady: set[int]
) -> dict[str, float]:
    """Mean server seconds per steady round and phase; mean seconds per steady client call."""
    rounds = [server[str(r)] for r in sorted(steady) if str(r) in server]
    out: dict[str, float] = {}
    for label in sorted({k for s in rounds for k in s}):
        out[f"server_{label}"] = mean([s.get(label, 0.0) for s in rounds])
    calls = [c for c in clients if c["round"] in steady]
    for label in sorted({k for c in calls for k in c if k not in TRACE_IDS}):
        out[f"client_{label}"] = mean([float(c.get(label, 0.0)) for c in calls])
    return out


def seal_open_share(
    server: dict[str, dict[str, float]],
    clients: list[dict[str, Any]],
    steady: set[int],
    steady_seconds: float,
    actors: int,
) -> float | None:
    """Return the share of the steady rounds' time spent sealing and opening (see above)."""
    if steady_seconds <= 0:
        return None
    # Clients seal in parallel (one per actor); the server opens one reply after another.
    opened = sum(server.get(str(r), {}).get("aggregate", 0.0) for r in steady)
    sealed = sum(float(c.get("seal", 0.0)) for c in clients if c["round"] in steady)
    return (sealed / max(actors, 1) + opened) / steady_seconds


def summarize(run: VariantRun, actors: int) -> dict[str, Any]:
    """Reduce a variant's rounds, probes and memory to the benchmark's figures."""
    rounds = run.child["rounds"]
    if not rounds:
        raise BenchError(f"{run.variant}: no round finished")
    steady = rounds[1:] or rounds
    steady_ids = {int(r["round"]) for r in steady}
    steady_seconds = sum(r["seconds"] for r in steady)
    server, clients = run.child["server"], run.child["clients"]
    share = None
    if run.variant == "fedveil":
        share = seal_open_share(server, clients, steady_ids, steady_seconds, actors)
    return {
        "rounds": len(rounds),
        # Round 1 of the baseline also starts the actors; fedveil's plan query does that first.
        "first_round_seconds": rounds[0]["seconds"] + run.child["plan_seconds"],
        "steady_round_seconds": steady_seconds / len(steady),
        "wall_seconds": run.wall_seconds,
        "import_seconds": run.child["import_seconds"],
        "simulation_seconds": run.child["simulation_seconds"],
        "plan_seconds": run.child["plan_seconds"],
        "uplink_bytes_per_round": mean([float(r["uplink_bytes"]) for r in rounds]),
        "downlink_bytes_per_round": mean([float(r.get("downlink_bytes", 0)) for r in rounds]),
        "clients_per_round": mean([float(r["clients"]) for r in rounds]),
        "final_accuracy": rounds[-1]["accuracy"],
        "peak_tree_rss": run.peak_rss,
        "peak_tree_pss": run.peak_pss,
        "peak_processes": run.peak_processes,
        "seal_open_share": share,
        "breakdown": breakdown(server, clients, steady_ids),
        "round_seconds": [r["seconds"] for r in rounds],
        "actor_processes": len({c["pid"] for c in clients}),
        "ray_nodes": sorted({c["ray_node"] for c in clients if c["ray_node"]}),
    }


def ratios(
    plain: dict[str, Any] | None,
    fedveil: dict[str, Any],
    steps: dict[str, dict[str, float]],
) -> dict[str, Any]:
    """Fedveil over plain for every figure that has both, plus DP-step ratios per mode."""
    out: dict[str, Any] = {}
    if plain is not None:
        for key, field in RATIO_FIELDS:
            out[key] = fedveil[field] / plain[field] if plain[field] else float("nan")
        pc, fc = plain["breakdown"].get("client_cpu"), fedveil["breakdown"].get("client_cpu")
        if pc and fc:
            out["client_cpu_per_call"] = fc / pc
    if steps:
        out["dp_step"] = {
            model: {m: t[m] / t["nonprivate"] for m in MODES if m in t}
            for model, t in steps.items()
        }
    out["seal_open_share"] = fedveil["seal_open_share"]
    return out


def check_ratios(report: dict[str, Any]) -> list[str]:
    """Return the ratio fields that are not positive and finite (empty when all are)."""
    bad: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            bad.append(prefix)

    walk("", report["ratios"])
    return bad
