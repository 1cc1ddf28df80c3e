"""``python -m benchmarks.codec``: what the update codec saves and what sealing costs.

One command, one process, two tables on stdout (and the same numbers as JSON with ``--json``):

1. Uplink and accuracy. Dense float32 and each codec setting (``SETTINGS``) run the same rounds
   of the real stack (Flower's simulation engine, DP-SGD clients at the default ε target, sealed
   updates) on digits and, when ``--data-dir`` holds it, MNIST (20 clients, Dirichlet 0.5, the
   CNN). From each run's ``metrics.jsonl``: sealed bytes per update, the ratio of dense float32
   bytes to sealed bytes, final accuracy, the mean steady-state round time (round 1 also starts
   the simulation engine, so it is left out), and sealing's share of that round time.
2. Microbenchmarks. Codec encode and decode MB/s of a float32 vector the size of the CNN and of a
   4M vector for each setting; on each resulting payload, and on 1 MiB and 16 MiB dense payloads,
   seal+open MB/s of the envelope (``seal_client_update`` + ``open_client_update``, which also
   decodes and validates), of HPKE alone (``seal_update`` + ``open_update``), and of raw
   AES-256-GCM encrypt+decrypt from ``cryptography``.

Sealing share of round time = median seal+open seconds of one update (measured here on that
model's size and setting) x clients per round / mean steady-state round seconds. It is an upper
bound: in a round the clients seal in parallel and only the opening is serial on the server.

MB are 10**6 bytes; every time is the median of repeated ``time.perf_counter`` samples. The
raw-AES reference is the only low-level crypto import outside ``common.sealing``: it measures
the floor sealing is compared with and protects nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import itertools
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from rich.console import Console
from rich.table import Table

from common.codec import CodecParams, Float32Array, decode_update, encode_update
from common.config import ConfigValue, FedveilConfig
from common.envelope import DPFacts, open_client_update, seal_client_update
from common.sealing import AggregatorKeyPair, CodecHeader, SealContext, open_update, seal_update

MB = 1e6
CNN_SIZE = 26_010
"""Parameters of ``common.models.SmallCNN`` (the MNIST model); the test checks it."""
LARGE_SIZE = 4 * 2**20
"""The 4M-coordinate vector: 16 MiB as dense float32."""
RAW_SIZES = (2**20, 16 * 2**20)
"""Dense payload sizes (bytes) sealed beside the settings' payloads: 1 MiB and 16 MiB."""
TARGET_RATIO = 100.0
TARGET_LOSS_POINTS = 1.0
TARGET_SEAL_SHARE = 0.01

# What the facts inside a sealed update look like; their values do not change the cost.
_FACTS = DPFacts(noise_multiplier=1.0, sample_rate=0.02, steps=100, epsilon=1.0)
_CONTEXT = SealContext(run_id=1, server_round=1, node_id=1)


class BenchError(RuntimeError):
    """A benchmark run did not produce the numbers it needs."""


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
class RunSummary:
    """What one run's ``metrics.jsonl`` says about one setting."""

    setting: str
    rounds: int
    parameters: int
    bytes_per_update: float
    ratio: float
    final_accuracy: float
    round_seconds: float
    clients_per_round: float


@dataclass(frozen=True)
class RunResult:
    """A run's summary with the sealing cost measured for its model size and setting."""

    summary: RunSummary
    accuracy_loss_points: float
    seal_open_seconds: float
    seal_share: float


@dataclass(frozen=True)
class MicroRow:
    """Codec and sealing throughput on one vector (codec fields are ``None`` for raw rows)."""

    label: str
    size: int
    payload_bytes: int
    encode_mb_s: float | None
    decode_mb_s: float | None
    seal_open_mb_s: float
    hpke_mb_s: float
    aes_gcm_mb_s: float


@dataclass(frozen=True)
class Plan:
    """How much work one benchmark invocation does."""

    scenarios: tuple[Scenario, ...]
    skipped: dict[str, str]
    micro_sizes: tuple[int, ...]
    raw_sizes: tuple[int, ...]
    repeats: int


# ------------------------------------------------------------------------------ run metrics


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Return the rows of a ``metrics.jsonl`` file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarize_metrics(setting: str, rows: Sequence[dict[str, Any]]) -> RunSummary:
    """Reduce a run's metrics rows to bytes per update, ratio, final accuracy and round time.

    Raises:
        BenchError: no round finished, or no update was received.

    """
    if not rows:
        raise BenchError(f"{setting}: the run finished no round")
    updates = sum(len(r["clients"]) for r in rows)
    sealed = sum(int(r["bytes_sealed"]) for r in rows)
    dense = sum(int(r["bytes_dense"]) for r in rows)
    if updates == 0 or sealed == 0:
        raise BenchError(f"{setting}: the server received no update")
    # Round 1 also starts the engine and the client processes: not the steady state.
    steady = rows[1:] or rows
    return RunSummary(
        setting=setting,
        rounds=len(rows),
        parameters=dense // updates // 4,
        bytes_per_update=sealed / updates,
        ratio=dense / sealed,
        final_accuracy=float(rows[-1]["accuracy"]),
        round_seconds=statistics.fmean(float(r["seconds"]) for r in steady),
        clients_per_round=updates / len(rows),
    )


def run_setting(scenario: Scenario, setting: Setting, out: Path, *, verbose: bool) -> RunSummary:
    """Run ``setting`` on ``scenario`` through ``fedveil simulate``'s engine; summarize it."""
    from simulations.simulate import simulate

    config = FedveilConfig.from_flat({**scenario.flat, **setting.overrides()})
    console = Console(stderr=True) if verbose else Console(file=io.StringIO())
    run_path, result = simulate(config, out, console, verbose=verbose)
    if result.stopped_reason:
        raise BenchError(f"{scenario.dataset}/{setting.name} stopped: {result.stopped_reason}")
    return summarize_metrics(setting.name, read_metrics(run_path / "metrics.jsonl"))


def accuracy_loss_points(summary: RunSummary, dense: RunSummary) -> float:
    """Return how many accuracy points ``summary`` lost against dense float32 (negative: won)."""
    return 100.0 * (dense.final_accuracy - summary.final_accuracy)


def seal_share(seal_open_seconds: float, summary: RunSummary) -> float:
    """Return seal+open seconds of a round's updates as a fraction of the mean round time."""
    return seal_open_seconds * summary.clients_per_round / summary.round_seconds


# --------------------------------------------------------------------------------- timing


def median_seconds(action: Callable[[], object], repeats: int, min_sample: float = 0.02) -> float:
    """Return the median seconds of one ``action()`` over ``repeats`` samples.

    One warm-up call sizes each sample to at least ``min_sample`` seconds (many calls per sample
    for fast actions), so the timer's resolution never dominates.
    """
    start = time.perf_counter()
    action()
    first = time.perf_counter() - start
    inner = max(1, min(10_000, math.ceil(min_sample / max(first, 1e-9))))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            action()
        samples.append((time.perf_counter() - start) / inner)
    return statistics.median(samples)


def update_vector(size: int, rng: np.random.Generator) -> Float32Array:
    """Return a dense float32 update-like vector: Gaussian, weight-update magnitudes."""
    return (rng.standard_normal(size) * 1e-2).astype(np.float32)


def incompressible_vector(nbytes: int, rng: np.random.Generator) -> Float32Array:
    """Return finite float32 values with random bit patterns: zstd cannot shrink them much."""
    bits = rng.integers(0, 0x7F80_0000, size=nbytes // 4, dtype=np.uint32)
    bits |= rng.integers(0, 2, size=bits.size, dtype=np.uint32) << np.uint32(31)
    return bits.view(np.float32)


def seal_open_seconds(
    payload: bytes, params: CodecParams, size: int, keypair: AggregatorKeyPair, repeats: int
) -> float:
    """Median seconds to seal one encoded update with its DP facts, then open and decode it."""

    def round_trip() -> None:
        sealed = seal_client_update(
            payload,
            facts=_FACTS,
            params=params,
            size=size,
            public_key=keypair.public_bytes,
            context=_CONTEXT,
        )
        open_client_update(sealed, keypair=keypair, expected=_CONTEXT, params=params, size=size)

    return median_seconds(round_trip, repeats)


def hpke_seconds(
    payload: bytes, params: CodecParams, size: int, keypair: AggregatorKeyPair, repeats: int
) -> float:
    """Median seconds of HPKE alone: ``seal_update`` then ``open_update``, no decoding."""
    header = CodecHeader(topk=params.topk, bits=params.bits, size=size)

    def round_trip() -> None:
        sealed = seal_update(
            payload, public_key=keypair.public_bytes, context=_CONTEXT, codec=header
        )
        open_update(sealed, keypair=keypair, expected=_CONTEXT, max_payload=len(payload))

    return median_seconds(round_trip, repeats)


def aes_gcm_seconds(nbytes: int, repeats: int) -> float:
    """Median seconds of raw AES-256-GCM encrypt then decrypt of ``nbytes`` random bytes."""
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    data = os.urandom(nbytes)
    counter = itertools.count()

    def round_trip() -> None:
        nonce = next(counter).to_bytes(12, "big")  # never reused under one key
        aead.decrypt(nonce, aead.encrypt(nonce, data, None), None)

    return median_seconds(round_trip, repeats)


# ------------------------------------------------------------------------------ microbench


def _sealing_row(
    label: str,
    vector: Float32Array,
    params: CodecParams,
    keypair: AggregatorKeyPair,
    repeats: int,
    rng: np.random.Generator,
    *,
    with_codec: bool,
) -> MicroRow:
    size = vector.size
    payload = encode_update(vector, params, rng).payload
    encode_mb_s = decode_mb_s = None
    if with_codec:
        dense_bytes = 4 * size
        encode_s = median_seconds(lambda: encode_update(vector, params, rng), repeats)
        decode_s = median_seconds(lambda: decode_update(payload, size=size, params=params), repeats)
        encode_mb_s, decode_mb_s = dense_bytes / encode_s / MB, dense_bytes / decode_s / MB
    n = len(payload)
    return MicroRow(
        label=label,
        size=size,
        payload_bytes=n,
        encode_mb_s=encode_mb_s,
        decode_mb_s=decode_mb_s,
        seal_open_mb_s=n / seal_open_seconds(payload, params, size, keypair, repeats) / MB,
        hpke_mb_s=n / hpke_seconds(payload, params, size, keypair, repeats) / MB,
        aes_gcm_mb_s=n / aes_gcm_seconds(n, repeats) / MB,
    )


def microbench(plan: Plan, keypair: AggregatorKeyPair, seed: int) -> list[MicroRow]:
    """Codec rows (each setting x vector size), then raw dense payloads of ``plan.raw_sizes``."""
    rng = np.random.default_rng(seed)
    rows = []
    for size in plan.micro_sizes:
        vector = update_vector(size, rng)
        for setting in SETTINGS:
            rows.append(
                _sealing_row(
                    setting.name,
                    vector,
                    setting.params,
                    keypair,
                    plan.repeats,
                    rng,
                    with_codec=True,
                )
            )
    for nbytes in plan.raw_sizes:
        vector = incompressible_vector(nbytes, rng)
        label = f"raw {nbytes / 2**20:g} MiB"
        rows.append(
            _sealing_row(label, vector, DENSE.params, keypair, plan.repeats, rng, with_codec=False)
        )
    return rows


def update_seal_seconds(
    setting: Setting, size: int, keypair: AggregatorKeyPair, repeats: int, seed: int
) -> float:
    """Median seal+open seconds of one update of ``size`` coordinates under ``setting``."""
    rng = np.random.default_rng(seed)
    payload = encode_update(update_vector(size, rng), setting.params, rng).payload
    return seal_open_seconds(payload, setting.params, size, keypair, repeats)


# ------------------------------------------------------------------------------ scenarios


def mnist_missing(data_dir: Path) -> str | None:
    """Return why MNIST cannot be read from ``data_dir``, or ``None`` when it can."""
    from common.data import DataError, load_data

    if not data_dir.is_dir():
        return f"{data_dir} is not a folder"
    try:
        load_data("mnist", str(data_dir), 0, 0.2)
    except DataError as exc:
        return str(exc)
    return None


def user_overrides(assignments: Sequence[str]) -> dict[str, ConfigValue]:
    """Parse ``--set KEY=VALUE`` options; codec keys are refused (each setting sets them)."""
    from common.config import ConfigError, parse_assignment

    flat: dict[str, ConfigValue] = {}
    for text in assignments:
        key, value = parse_assignment(text)
        if key.startswith("codec."):
            raise ConfigError(f"config key `{key}` is set by each benchmark setting; drop it")
        flat[key] = value
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
        data_dir = args.data_dir.resolve()
        reason = mnist_missing(data_dir)
        if reason is None:
            scenarios.append(Scenario("mnist", {**mnist_keys(args, data_dir), **extra}))
        else:
            skipped["mnist"] = reason
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
    dense = summaries[0]
    results = []
    for setting, summary in zip(SETTINGS, summaries, strict=True):
        seconds = update_seal_seconds(setting, summary.parameters, keypair, plan.repeats, 0)
        results.append(
            RunResult(
                summary=summary,
                accuracy_loss_points=accuracy_loss_points(summary, dense),
                seal_open_seconds=seconds,
                seal_share=seal_share(seconds, summary),
            )
        )
    return results


# ------------------------------------------------------------------------------- verdict


def verdict(results: Sequence[RunResult]) -> dict[str, Any]:
    """Return the done-when check of one data set.

    ``at_ratio``: of the settings with ``ratio >= TARGET_RATIO``, the one losing the fewest
    accuracy points (``None`` when no setting compresses that much); the target is met when it
    loses at most ``TARGET_LOSS_POINTS``. ``within_loss``: of the compressed settings losing at
    most ``TARGET_LOSS_POINTS``, the one with the highest ratio (``None`` when none does).
    """
    compressed = [r for r in results if r.summary.setting != DENSE.name]
    at_ratio = [r for r in compressed if r.summary.ratio >= TARGET_RATIO]
    within = [r for r in compressed if r.accuracy_loss_points <= TARGET_LOSS_POINTS]
    best_at_ratio = min(at_ratio, key=lambda r: r.accuracy_loss_points, default=None)
    best_within = max(within, key=lambda r: r.summary.ratio, default=None)
    max_share = max(r.seal_share for r in results)
    return {
        "at_ratio": _brief(best_at_ratio),
        "within_loss": _brief(best_within),
        "ratio_and_accuracy_met": best_at_ratio is not None
        and best_at_ratio.accuracy_loss_points <= TARGET_LOSS_POINTS,
        "max_seal_share": max_share,
        "seal_share_met": max_share <= TARGET_SEAL_SHARE,
    }


def _brief(result: RunResult | None) -> dict[str, Any] | None:
    if result is None:
        return None
    return {
        "setting": result.summary.setting,
        "ratio": result.summary.ratio,
        "accuracy_loss_points": result.accuracy_loss_points,
    }


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


def _mb_s(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def micro_table(rows: Sequence[MicroRow]) -> Table:
    """Return table 2: codec MB/s and seal+open / HPKE / raw AES-256-GCM MB/s per payload."""
    table = Table(title="microbenchmarks (MB/s = 10^6 bytes/s, medians)")
    for name in (
        "setting",
        "coords",
        "payload B",
        "encode",
        "decode",
        "seal+open",
        "HPKE only",
        "AES-256-GCM",
    ):
        table.add_column(name, justify="left" if name == "setting" else "right")
    size = rows[0].size if rows else 0
    for row in rows:
        if row.size != size:
            table.add_section()
            size = row.size
        table.add_row(
            row.label,
            f"{row.size:,}",
            f"{row.payload_bytes:,}",
            _mb_s(row.encode_mb_s),
            _mb_s(row.decode_mb_s),
            _mb_s(row.seal_open_mb_s),
            _mb_s(row.hpke_mb_s),
            _mb_s(row.aes_gcm_mb_s),
        )
    return table


def verdict_lines(verdicts: dict[str, dict[str, Any]]) -> list[str]:
    """Return one line per data set on the done-when targets."""
    lines = []
    for dataset, v in verdicts.items():
        at, within = v["at_ratio"], v["within_loss"]
        parts = [
            f"{dataset}: target (>= {TARGET_RATIO:g}x at <= {TARGET_LOSS_POINTS:g} point) "
            + ("met" if v["ratio_and_accuracy_met"] else "not met"),
            f"at >= {TARGET_RATIO:g}x: "
            + (
                "none"
                if at is None
                else f"{at['setting']} {at['ratio']:.1f}x, {at['accuracy_loss_points']:+.2f} pts"
            ),
            f"within {TARGET_LOSS_POINTS:g} point: "
            + (
                "none"
                if within is None
                else f"{within['setting']} {within['ratio']:.1f}x, "
                f"{within['accuracy_loss_points']:+.2f} pts"
            ),
            f"seal+open <= {100 * v['max_seal_share']:.3f} % of round time "
            f"({'within' if v['seal_share_met'] else 'above'} {100 * TARGET_SEAL_SHARE:g} %)",
        ]
        lines.append("; ".join(parts))
    return lines


def report_json(
    plan: Plan,
    results: dict[str, list[RunResult]],
    micro: Sequence[MicroRow],
    environment: dict[str, Any],
) -> dict[str, Any]:
    """Return every number of the tables as one JSON-ready object."""
    return {
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
        "environment": environment,
    }


def _result_extras(r: RunResult) -> dict[str, float]:
    return {
        "accuracy_loss_points": r.accuracy_loss_points,
        "seal_open_seconds": r.seal_open_seconds,
        "seal_share": r.seal_share,
    }


def environment() -> dict[str, Any]:
    """Return what the timings depend on: CPUs, load, versions."""
    import cryptography

    return {
        "cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cryptography": cryptography.__version__,
    }


# ---------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """Return the benchmark's argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.codec",
        description="Uplink bytes, accuracy and sealing cost of dense float32 vs codec settings.",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("../shared/data"),
        help="folder holding mnist/ (MNIST is skipped when absent)",
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
    parser.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another config key for every run, e.g. local-epochs=1 (not codec.*)",
    )
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
    parser.add_argument("--json", type=Path, help="also write every number to this JSON file")
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
    before = environment()
    keypair = AggregatorKeyPair.generate()
    results = {
        scenario.dataset: run_scenario(
            scenario, runs_dir, keypair, plan, verbose=args.verbose, log=log
        )
        for scenario in plan.scenarios
    }
    log.print("microbenchmarks ...")
    micro = microbench(plan, keypair, args.seed)
    env = {**before, "load_average_after": list(os.getloadavg())}
    out = _output_console()
    if results:
        out.print(accuracy_table(results))
    for dataset, reason in plan.skipped.items():
        out.print(f"{dataset}: skipped ({reason})", highlight=False)
    out.print(micro_table(micro))
    for line in verdict_lines({d: verdict(r) for d, r in results.items()}):
        out.print(line, highlight=False, soft_wrap=True)
    out.print(
        f"load average before/after: {env['load_average'][0]:.2f} / "
        f"{env['load_average_after'][0]:.2f} on {env['cpus']} CPUs",
        highlight=False,
    )
    return report_json(plan, results, micro, env)


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
    except (BenchError, ConfigError, DataError, RunDirError) as exc:
        print(f"bench_codec: error: {exc}", file=sys.stderr)
        return 2
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
