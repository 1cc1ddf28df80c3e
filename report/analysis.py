"""Read a run directory, check that its numbers add up, and recompute every client's ε.

``analyse(run_dir)`` reads ``config.json``, ``metrics.jsonl``, ``privacy.json`` and
``model.safetensors`` through the server's typed readers (``server.rundir``,
``server.ledger_file``), then checks what no single file can: δ and the accountant agree with
the configuration, every charged round finished, and every stored ε matches the ε recomputed
from its history. It also recomputes ε with the other accountant for comparison. Anything wrong
raises ``ReportError`` with one line naming the file and the problem.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.accounting import ACCOUNTANTS, HistoryEntry, epsilon_from_history, merge_history
from server.json_checks import Fields, RunFileError
from server.ledger_file import ClientEntry, PrivacyFile, read_privacy
from server.rundir import (
    CONFIG,
    METRICS,
    MODEL,
    PRIVACY,
    RoundRecord,
    read_config,
    read_model_shapes,
    read_rounds,
)

# A stored ε more than 2 % away from the ε recomputed from its history does not add up.
EPSILON_TOLERANCE = 0.02
# Same tolerance as the ledger's: a client's own ε that differs from the ledger's is a mismatch.
REPORTED_TOLERANCE = 1e-6


class ReportError(ValueError):
    """The run directory cannot be reported on: a file is missing, foreign or inconsistent."""


class _Epsilons:
    """ε of histories, each distinct ``(accountant, δ, merged history)`` computed once."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, float, tuple[HistoryEntry, ...]], float] = {}

    def of(self, history: Sequence[HistoryEntry], *, delta: float, accountant: str) -> float:
        merged = tuple(sorted(merge_history(history)))
        key = (accountant, delta, merged)
        if key not in self._cache:
            with warnings.catch_warnings():
                # Opacus's PRV evaluates log(1 - q) on both sides of an np.where: at q = 1
                # (every client sampled, central DP) the unused side warns; ε is unaffected.
                warnings.filterwarnings("ignore", "divide by zero encountered in log")
                eps = epsilon_from_history(merged, delta=delta, accountant=accountant)
            self._cache[key] = eps
        return self._cache[key]


@dataclass(frozen=True)
class Analysis:
    """Everything the report shows, computed and checked before anything is written."""

    run_dir: Path
    config: dict[str, Any]
    ledger: PrivacyFile
    rounds: tuple[RoundRecord, ...]
    parameters: int
    other: str  # the accountant privacy.json does not name
    other_epsilon: dict[str, float]
    status: dict[str, str]  # per client, see ``status_of``
    series: dict[str, list[tuple[int, float]]]  # cumulative ε after each round trained
    central_other: float | None
    mismatched: frozenset[str]  # clients whose own ε differs from the ledger's


@dataclass(frozen=True)
class _Files:
    config: dict[str, Any]
    ledger: PrivacyFile
    rounds: tuple[RoundRecord, ...]
    parameters: int


def _read(run_dir: Path) -> _Files:
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: not a directory; give a fedveil run directory")
    for name in (CONFIG, PRIVACY, MODEL):
        if not (run_dir / name).is_file():
            raise ReportError(f"{run_dir / name}: missing; {run_dir} is not a complete run")
    try:
        config = read_config(run_dir)
        _check_config(config, Fields(run_dir / CONFIG))
        ledger = read_privacy(run_dir / PRIVACY)
        if (run_dir / METRICS).is_file():
            rounds = tuple(read_rounds(run_dir))
        elif ledger.stopped_reason and not any(c.history for c in ledger.clients):
            rounds = ()  # the run stopped before its first round: nothing was trained
        else:
            raise ReportError(f"{run_dir / METRICS}: missing; {run_dir} is not a complete run")
        shapes = read_model_shapes(run_dir / MODEL)
    except RunFileError as exc:
        raise ReportError(str(exc)) from None
    return _Files(config, ledger, rounds, sum(math.prod(s) for s in shapes.values()))


def _check_config(config: dict[str, Any], f: Fields) -> None:
    """Refuse a configuration without the clip norm and the batch size the report needs."""
    f.need(config, ("dp.max-grad-norm", "batch-size"), "the configuration")
    if f.number(config["dp.max-grad-norm"], "dp.max-grad-norm") <= 0:
        raise f.error(f"dp.max-grad-norm must be > 0, got {config['dp.max-grad-norm']}")
    f.integer(config["batch-size"], "batch-size", minimum=1)


def _differs(stored: float, recomputed: float) -> bool:
    return abs(stored - recomputed) > EPSILON_TOLERANCE * max(abs(recomputed), 1e-12) + 1e-9


def _series(
    c: ClientEntry, ledger: PrivacyFile, finished: set[int], epsilons: _Epsilons, f: Fields
) -> list[tuple[int, float]]:
    """Return the client's cumulative ε after each round it trained, checked."""
    if len(c.history) != len(c.rounds):
        raise f.error(
            f"client {c.cid} has {len(c.history)} history entries but {len(c.rounds)} rounds"
        )
    if any(b <= a for a, b in zip(c.rounds, c.rounds[1:], strict=False)):
        raise f.error(f"client {c.cid} rounds {list(c.rounds)} are not increasing")
    unfinished = sorted(set(c.rounds) - finished)
    if unfinished:
        raise f.error(f"client {c.cid} was charged in rounds {unfinished}, which {METRICS} lacks")
    series = [
        (rnd, epsilons.of(c.history[: i + 1], delta=ledger.delta, accountant=ledger.accountant))
        for i, rnd in enumerate(c.rounds)
    ]
    recomputed = series[-1][1] if series else 0.0
    if _differs(c.epsilon, recomputed):
        raise f.error(
            f"client {c.cid} epsilon {c.epsilon:.4f} differs from {recomputed:.4f}, "
            f"recomputed from its history ({ledger.accountant}, δ = {ledger.delta:g})"
        )
    return series


def analyse(run_dir: Path) -> Analysis:
    """Read and check the run directory and recompute ε; raise ``ReportError`` on any fault."""
    files = _read(run_dir)
    config, ledger, rounds = files.config, files.ledger, files.rounds
    privacy = Fields(run_dir / PRIVACY)
    try:
        for key, value in (("dp.accountant", ledger.accountant), ("dp.delta", ledger.delta)):
            if key in config and config[key] != value:
                raise privacy.error(f"{key} is {value!r} but config.json has {config[key]!r}")
        finished = {r.round for r in rounds}
        epsilons = _Epsilons()
        series = {c.cid: _series(c, ledger, finished, epsilons, privacy) for c in ledger.clients}
        other = next(a for a in ACCOUNTANTS if a != ledger.accountant)
        central_other = None
        if ledger.central is not None:
            central = ledger.central
            recomputed = epsilons.of(
                central.history, delta=central.delta, accountant=ledger.accountant
            )
            if _differs(central.epsilon, recomputed):
                raise privacy.error(
                    f"central epsilon {central.epsilon:.4f} differs from {recomputed:.4f}, "
                    f"recomputed from its history ({ledger.accountant}, δ = {central.delta:g})"
                )
            central_other = epsilons.of(central.history, delta=central.delta, accountant=other)
    except RunFileError as exc:
        raise ReportError(str(exc)) from None
    mismatched = frozenset(
        c.cid
        for c in ledger.clients
        if c.mismatch
        or (
            c.reported_epsilon is not None
            and not math.isclose(
                c.reported_epsilon, c.epsilon, rel_tol=REPORTED_TOLERANCE, abs_tol=1e-9
            )
        )
    )
    status = {
        c.cid: status_of(
            c,
            epsilons.of(
                (*c.history, c.history[-1]), delta=ledger.delta, accountant=ledger.accountant
            )
            if c.history and c.budget is not None
            else None,
            mismatch=c.cid in mismatched,
        )
        for c in ledger.clients
    }
    return Analysis(
        run_dir=run_dir,
        config=config,
        ledger=ledger,
        rounds=rounds,
        parameters=files.parameters,
        other=other,
        other_epsilon={
            c.cid: epsilons.of(c.history, delta=ledger.delta, accountant=other)
            for c in ledger.clients
        },
        status=status,
        series=series,
        central_other=central_other,
        mismatched=mismatched,
    )


# What each account flag means in the report's status column (server.ledger.FLAGS).
FLAG_WORDS = {
    "dp-facts": "DP facts differed from its plan",
    "unaccountable": "ε is a lower bound",
    "error-after-training": "failed after training",
    "shared-label": "label shared",
}


def status_of(c: ClientEntry, next_epsilon: float | None, *, mismatch: bool) -> str:
    """Return ``ok``, ``budget reached`` or ``over budget``, a mismatch, and the account flags.

    A client has reached its budget when it can train no more (``exhausted``: it refused a round,
    its node's own limit was reached, the server closed the account) or when one more round like
    its last would take it past the budget (the server no longer samples it).
    """
    parts = []
    if c.budget is not None and c.epsilon > c.budget * (1 + 1e-9):
        parts.append("over budget")
    elif c.exhausted or (
        c.budget is not None
        and (c.epsilon >= c.budget or (next_epsilon is not None and next_epsilon > c.budget))
    ):
        parts.append("budget reached")
    if mismatch:
        parts.append("reported ε mismatch")
    parts.extend(FLAG_WORDS.get(flag, flag) for flag in c.flags)
    return ", ".join(parts) or "ok"
