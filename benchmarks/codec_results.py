"""The codec benchmark's numbers: one run's summary, a setting over seeds, and the verdict.

A run is summarized from its ``metrics.jsonl`` rows: sealed uplink bytes per received update;
downlink bytes per client and round (``bytes_down`` over the round's answering clients when
every row has a non-zero one, else the dense float32 model); final accuracy; the mean
steady-state round time (round 1 also starts the simulation engine, so it is left out when
there are later rounds). A setting aggregates its runs over seeds: mean bytes, the ratio of
dense float32 up + down to its up + down, accuracy mean and sample sd, its difference to dense
in points (mean minus dense mean; negative is a loss), and the codec share of round time: the
seconds to encode, seal, open and decode one update x clients per round / mean round seconds
(an upper bound: clients encode and seal in parallel), and beside it the signed downlink's
share (``benchmarks.codec_micro.downlink_seconds`` per node, the same way). The verdict checks
issue 18's targets; the codec share target is checked on the compressed settings, and dense
float32's share (sealing alone) is reported beside it.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.runs import BenchmarkError

DEFAULT_MAX_LOSS = 0.5
DEFAULT_MIN_UP_RATIO = 20.0
DEFAULT_MIN_DOWN_RATIO = 4.0
AGGRESSIVE_MIN_RATIO = 100.0
AGGRESSIVE_MAX_LOSS = 1.0
MAX_CODEC_SHARE = 0.01


@dataclass(frozen=True)
class RunSummary:
    """What one run's ``metrics.jsonl`` says about one setting and seed."""

    setting: str
    seed: int
    rounds: int
    parameters: int
    bytes_up: float
    bytes_down: float
    down_measured: bool
    final_accuracy: float
    round_seconds: float
    clients_per_round: float


@dataclass(frozen=True)
class SettingSummary:
    """One setting over its seeds, against dense float32 (the first setting)."""

    setting: str
    seeds: list[int]
    parameters: int
    bytes_up: float
    bytes_down: float
    down_measured: bool
    up_ratio: float
    down_ratio: float
    total_ratio: float
    accuracy_mean: float
    accuracy_sd: float
    accuracies: list[float]
    diff_points: float
    round_seconds: float
    codec_seconds: float
    codec_share: float
    downlink_seconds: float = 0.0
    downlink_share: float = 0.0


def summarize_metrics(setting: str, seed: int, rows: Sequence[Mapping[str, Any]]) -> RunSummary:
    """Reduce a run's metrics rows to bytes per client up and down, accuracy and round time.

    Raises:
        BenchmarkError: no round finished, or no update was received.

    """
    if not rows:
        raise BenchmarkError(f"{setting} seed {seed}: the run finished no round")
    updates = sum(len(r["clients"]) for r in rows)
    sealed = sum(int(r["bytes_sealed"]) for r in rows)
    dense = sum(int(r["bytes_dense"]) for r in rows)
    if updates == 0 or sealed == 0:
        raise BenchmarkError(f"{setting} seed {seed}: the server received no update")
    parameters = dense // updates // 4
    # Readers give rows written before ``bytes_down`` existed a 0: not measured.
    down_measured = all(r.get("bytes_down") for r in rows)
    if down_measured:
        # A rejected client downloaded the model too: count every client that answered.
        answering = sum(len(r["clients"]) + len(r["rejected"]) for r in rows)
        bytes_down = sum(int(r["bytes_down"]) for r in rows) / answering
    else:
        bytes_down = float(4 * parameters)
    steady = rows[1:] or rows
    return RunSummary(
        setting=setting,
        seed=seed,
        rounds=len(rows),
        parameters=parameters,
        bytes_up=sealed / updates,
        bytes_down=bytes_down,
        down_measured=down_measured,
        final_accuracy=float(rows[-1]["accuracy"]),
        round_seconds=statistics.fmean(float(r["seconds"]) for r in steady),
        clients_per_round=updates / len(rows),
    )


def summarize_setting(
    runs: Sequence[RunSummary],
    dense: Sequence[RunSummary],
    codec_seconds: float,
    downlink_seconds: float = 0.0,
) -> SettingSummary:
    """Aggregate one setting's runs (one per seed) against the dense float32 runs.

    ``codec_seconds``: one update's encode, seal, open and decode; ``downlink_seconds``: one
    node's share of the signed downlink a round.

    Raises:
        BenchmarkError: ``runs`` or ``dense`` is empty.

    """
    if not runs or not dense:
        raise BenchmarkError("a setting needs at least one run, and so does dense float32")
    accuracies = [r.final_accuracy for r in runs]
    mean = statistics.fmean(accuracies)
    dense_mean = statistics.fmean(r.final_accuracy for r in dense)
    parameters = runs[0].parameters
    up = statistics.fmean(r.bytes_up for r in runs)
    down = statistics.fmean(r.bytes_down for r in runs)
    round_seconds = statistics.fmean(r.round_seconds for r in runs)
    clients = statistics.fmean(r.clients_per_round for r in runs)
    return SettingSummary(
        setting=runs[0].setting,
        seeds=[r.seed for r in runs],
        parameters=parameters,
        bytes_up=up,
        bytes_down=down,
        down_measured=all(r.down_measured for r in runs),
        up_ratio=4 * parameters / up,
        down_ratio=4 * parameters / down,
        total_ratio=8 * parameters / (up + down),
        accuracy_mean=mean,
        accuracy_sd=statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
        accuracies=accuracies,
        diff_points=100.0 * (mean - dense_mean),
        round_seconds=round_seconds,
        codec_seconds=codec_seconds,
        codec_share=codec_seconds * clients / round_seconds,
        downlink_seconds=downlink_seconds,
        downlink_share=downlink_seconds * clients / round_seconds,
    )


def verdict(settings: Sequence[SettingSummary]) -> dict[str, Any]:
    """Return issue 18's checks for one model; ``settings[0]`` is dense float32.

    ``default``: of the settings within ``DEFAULT_MAX_LOSS`` points of dense with an uplink
    ratio of at least ``DEFAULT_MIN_UP_RATIO``, the one with the highest total ratio.
    ``aggressive``: of the settings with a total ratio of at least ``AGGRESSIVE_MIN_RATIO``,
    the one losing the fewest points. Either is ``None`` when no setting qualifies; the
    ``*_met`` flags add the downlink ratio and the loss bound.
    """
    compressed = settings[1:]
    default = max(
        (
            s
            for s in compressed
            if s.diff_points >= -DEFAULT_MAX_LOSS and s.up_ratio >= DEFAULT_MIN_UP_RATIO
        ),
        key=lambda s: s.total_ratio,
        default=None,
    )
    aggressive = max(
        (s for s in compressed if s.total_ratio >= AGGRESSIVE_MIN_RATIO),
        key=lambda s: s.diff_points,
        default=None,
    )
    max_share = max((s.codec_share for s in compressed), default=0.0)
    both = max((s.codec_share + s.downlink_share for s in compressed), default=0.0)
    return {
        "default": _brief(default),
        "default_met": default is not None and default.down_ratio >= DEFAULT_MIN_DOWN_RATIO,
        "aggressive": _brief(aggressive),
        "aggressive_met": aggressive is not None and aggressive.diff_points >= -AGGRESSIVE_MAX_LOSS,
        "max_codec_share": max_share,
        "codec_share_met": max_share <= MAX_CODEC_SHARE,
        "max_share_with_downlink": both,
        "dense_codec_share": settings[0].codec_share,
    }


def _brief(s: SettingSummary | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {
        "setting": s.setting,
        "up_ratio": s.up_ratio,
        "down_ratio": s.down_ratio,
        "total_ratio": s.total_ratio,
        "diff_points": s.diff_points,
    }


def verdict_lines(model: str, v: Mapping[str, Any]) -> list[str]:
    """Return the verdict as lines of text, one per target."""

    def name(b: Mapping[str, Any] | None) -> str:
        if b is None:
            return "none qualifies"
        return (
            f"{b['setting']} ({b['up_ratio']:.1f}x up, {b['down_ratio']:.1f}x down, "
            f"{b['total_ratio']:.1f}x total, {b['diff_points']:+.2f} pts)"
        )

    met = {True: "met", False: "not met"}
    return [
        f"{model}: default target (<= {DEFAULT_MAX_LOSS:g} pt below dense, >= "
        f"{DEFAULT_MIN_UP_RATIO:g}x up, >= {DEFAULT_MIN_DOWN_RATIO:g}x down) "
        f"{met[v['default_met']]}: {name(v['default'])}",
        f"{model}: aggressive target (>= {AGGRESSIVE_MIN_RATIO:g}x total, <= "
        f"{AGGRESSIVE_MAX_LOSS:g} pt) {met[v['aggressive_met']]}: {name(v['aggressive'])}",
        f"{model}: codec + seal <= {100 * v['max_codec_share']:.3f} % of round time "
        f"({met[v['codec_share_met']]}, target {100 * MAX_CODEC_SHARE:g} %); with the signed "
        f"downlink <= {100 * v['max_share_with_downlink']:.3f} %; dense float32's seal alone "
        f"{100 * v['dense_codec_share']:.3f} %",
    ]
