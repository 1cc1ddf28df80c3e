"""Read and check a run directory's files, and recompute every client's ε.

``analyse(run_dir)`` reads ``config.json``, ``metrics.jsonl``, ``privacy.json`` and
``model.safetensors`` (contract in architecture.md), checks that they are complete, of this
version and that their numbers add up, and recomputes every client's ε with both accountants.
Anything wrong raises ``ReportError`` with one line naming the file and the problem.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.accounting import ACCOUNTANTS, HistoryEntry, epsilon_from_history, merge_history

CONFIG = "config.json"
METRICS = "metrics.jsonl"
PRIVACY = "privacy.json"
MODEL = "model.safetensors"

# A stored ε more than 2 % away from the ε recomputed from its history does not add up.
EPSILON_TOLERANCE = 0.02
# Same tolerance as the ledger's: a client's own ε that differs from the ledger's is a mismatch.
REPORTED_TOLERANCE = 1e-6
PRIVACY_REQUIRED = ("unit", "accountant", "delta", "clients", "central")
PRIVACY_OPTIONAL = ("plan", "stopped_reason")
CLIENT_REQUIRED = ("epsilon", "budget", "exhausted", "history", "rounds")
PLAN_REQUIRED = (
    "noise_multiplier",
    "sample_rate",
    "steps_per_round",
    "planned_rounds",
    "planned_epsilon",
)
ROUND_REQUIRED = (
    "round",
    "accuracy",
    "loss",
    "watermark_accuracy",
    "clients",
    "rejected",
    "flagged",
    "bytes_sealed",
    "bytes_dense",
    "seconds",
)


class ReportError(ValueError):
    """The run directory cannot be reported on: a file is missing, foreign or inconsistent."""


# ---------------------------------------------------------------------------- the run's files


@dataclass(frozen=True)
class ClientLedger:
    """One client's entry of ``privacy.json``."""

    cid: str
    epsilon: float
    budget: float | None
    exhausted: bool
    history: tuple[HistoryEntry, ...]
    rounds: tuple[int, ...]
    reported_epsilon: float | None
    mismatch: bool


@dataclass(frozen=True)
class CentralLedger:
    """User-level DP on the server (``central`` in ``privacy.json``)."""

    epsilon: float
    delta: float
    noise_multiplier: float | None
    clip: float | None
    history: tuple[HistoryEntry, ...]


@dataclass(frozen=True)
class PlanEntry:
    """One client's DP plan, made before the first round."""

    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    planned_rounds: int
    planned_epsilon: float


@dataclass(frozen=True)
class Ledger:
    """``privacy.json``, checked."""

    unit: str
    accountant: str
    delta: float
    clients: tuple[ClientLedger, ...]
    central: CentralLedger | None
    plan: dict[str, PlanEntry]
    stopped_reason: str | None


@dataclass(frozen=True)
class RoundLine:
    """One line of ``metrics.jsonl``, checked."""

    round: int
    accuracy: float
    loss: float
    watermark_accuracy: float | None
    contributed: int
    rejected: tuple[tuple[str, str, str], ...]  # node, reason, detail
    flagged: int
    refused: int
    bytes_sealed: int
    bytes_dense: int


class _File:
    """Type checks on one JSON document whose failures name the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, problem: str) -> ReportError:
        return ReportError(f"{self.path}: {' '.join(problem.split())}")

    def obj(self, value: Any, what: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(f"{what} must be an object, got {type(value).__name__}")
        return value

    def need(self, doc: Mapping[str, Any], keys: Iterable[str], what: str) -> None:
        missing = [k for k in keys if k not in doc]
        if missing:
            raise self.error(f"{what} lacks {', '.join(missing)} (written by another version?)")

    def number(self, value: Any, what: str, *, finite: bool = True) -> float:
        if type(value) not in (int, float) or (finite and not math.isfinite(value)):
            raise self.error(f"{what} must be a finite number, got {value!r}")
        return float(value)

    def integer(self, value: Any, what: str, *, minimum: int = 0) -> int:
        if type(value) is not int or value < minimum:
            raise self.error(f"{what} must be an integer >= {minimum}, got {value!r}")
        return value

    def count(self, value: Any, what: str) -> int:
        if not isinstance(value, list):
            raise self.error(f"{what} must be a list, got {type(value).__name__}")
        return len(value)

    def history(self, value: Any, what: str) -> tuple[HistoryEntry, ...]:
        if not isinstance(value, list):
            raise self.error(f"{what} must be a list of [noise_multiplier, sample_rate, steps]")
        out: list[HistoryEntry] = []
        for i, entry in enumerate(value):
            if not (isinstance(entry, list) and len(entry) == 3):
                raise self.error(f"{what}[{i}] must be [noise_multiplier, sample_rate, steps]")
            sigma = self.number(entry[0], f"{what}[{i}] noise multiplier")
            rate = self.number(entry[1], f"{what}[{i}] sample rate")
            steps = self.integer(entry[2], f"{what}[{i}] steps")
            if sigma <= 0 or not 0 < rate <= 1:
                raise self.error(f"{what}[{i}] = {entry} is out of range (σ > 0, 0 < q <= 1)")
            out.append((sigma, rate, steps))
        return tuple(out)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _File(path).error(f"not readable JSON ({exc})") from None


def _require_files(run_dir: Path) -> None:
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: not a directory; give a fedveil run directory")
    for name in (CONFIG, PRIVACY, MODEL):
        if not (run_dir / name).is_file():
            raise ReportError(f"{run_dir / name}: missing; {run_dir} is not a complete run")


def load_config(path: Path) -> dict[str, Any]:
    """Read ``config.json``; the report needs the clip norm and the batch size."""
    f = _File(path)
    doc = f.obj(_read_json(path), "the configuration")
    f.need(doc, ("dp.max-grad-norm", "batch-size"), "the configuration")
    if f.number(doc["dp.max-grad-norm"], "dp.max-grad-norm") <= 0:
        raise f.error(f"dp.max-grad-norm must be > 0, got {doc['dp.max-grad-norm']}")
    f.integer(doc["batch-size"], "batch-size", minimum=1)
    return doc


def load_ledger(path: Path) -> Ledger:
    """Read and check the shape of ``privacy.json`` (numbers are checked in ``analyse``)."""
    f = _File(path)
    doc = f.obj(_read_json(path), "the ledger")
    unknown = sorted(set(doc) - set(PRIVACY_REQUIRED) - set(PRIVACY_OPTIONAL))
    if unknown:
        raise f.error(f"unknown keys {unknown}: a ledger from another fedveil version")
    f.need(doc, PRIVACY_REQUIRED, "the ledger")
    if doc["unit"] not in ("example", "user"):
        raise f.error(f"unit must be 'example' or 'user', got {doc['unit']!r}")
    if doc["accountant"] not in ACCOUNTANTS:
        raise f.error(f"accountant must be one of {ACCOUNTANTS}, got {doc['accountant']!r}")
    delta = f.number(doc["delta"], "delta")
    if not 0 < delta < 1:
        raise f.error(f"delta must be in (0, 1), got {delta}")
    clients = tuple(
        _client(f, str(cid), f.obj(c, f"client {cid}"))
        for cid, c in f.obj(doc["clients"], "clients").items()
    )
    central = None
    if doc["central"] is not None:
        c = f.obj(doc["central"], "central")
        f.need(c, ("epsilon", "history"), "central")
        central = CentralLedger(
            epsilon=f.number(c["epsilon"], "central epsilon"),
            delta=f.number(c.get("delta", delta), "central delta"),
            noise_multiplier=_optional(f, c.get("noise_multiplier"), "central noise_multiplier"),
            clip=_optional(f, c.get("clip"), "central clip"),
            history=f.history(c["history"], "central history"),
        )
        if not 0 < central.delta < 1:
            raise f.error(f"central delta must be in (0, 1), got {central.delta}")
    plan: dict[str, PlanEntry] = {}
    raw_plan = doc.get("plan")
    for cid, p in f.obj({} if raw_plan is None else raw_plan, "plan").items():
        p = f.obj(p, f"plan of client {cid}")
        f.need(p, PLAN_REQUIRED, f"plan of client {cid}")
        plan[str(cid)] = PlanEntry(
            noise_multiplier=f.number(p["noise_multiplier"], f"plan {cid} noise_multiplier"),
            sample_rate=f.number(p["sample_rate"], f"plan {cid} sample_rate"),
            steps_per_round=f.integer(p["steps_per_round"], f"plan {cid} steps_per_round"),
            planned_rounds=f.integer(p["planned_rounds"], f"plan {cid} planned_rounds"),
            planned_epsilon=f.number(p["planned_epsilon"], f"plan {cid} planned_epsilon"),
        )
    stopped = doc.get("stopped_reason")
    if stopped is not None and not isinstance(stopped, str):
        raise f.error(f"stopped_reason must be a string or null, got {stopped!r}")
    return Ledger(
        unit=doc["unit"],
        accountant=doc["accountant"],
        delta=delta,
        clients=clients,
        central=central,
        plan=plan,
        stopped_reason=stopped or None,
    )


def _optional(f: _File, value: Any, what: str) -> float | None:
    return None if value is None else f.number(value, what)


def _client(f: _File, cid: str, c: dict[str, Any]) -> ClientLedger:
    f.need(c, CLIENT_REQUIRED, f"client {cid}")
    if type(c["exhausted"]) is not bool:
        raise f.error(f"client {cid} exhausted must be true or false, got {c['exhausted']!r}")
    if not isinstance(c["rounds"], list):
        raise f.error(f"client {cid} rounds must be a list of round numbers")
    rounds = tuple(f.integer(r, f"client {cid} round", minimum=1) for r in c["rounds"])
    reported = _optional(f, c.get("reported_epsilon"), f"client {cid} reported_epsilon")
    epsilon = f.number(c["epsilon"], f"client {cid} epsilon")
    stored_mismatch = c.get("mismatch", False)
    if type(stored_mismatch) is not bool:
        raise f.error(f"client {cid} mismatch must be true or false, got {stored_mismatch!r}")
    differs = reported is not None and not math.isclose(
        reported, epsilon, rel_tol=REPORTED_TOLERANCE, abs_tol=1e-9
    )
    return ClientLedger(
        cid=cid,
        epsilon=epsilon,
        budget=_optional(f, c["budget"], f"client {cid} budget"),
        exhausted=c["exhausted"],
        history=f.history(c["history"], f"client {cid} history"),
        rounds=rounds,
        reported_epsilon=reported,
        mismatch=stored_mismatch or differs,
    )


def load_metrics(path: Path) -> tuple[RoundLine, ...]:
    """Read ``metrics.jsonl``: one checked line per finished round, rounds increasing."""
    f = _File(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise f.error(f"not readable ({exc})") from None
    out: list[RoundLine] = []
    for no, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            parsed = json.loads(text)
        except ValueError as exc:
            raise f.error(f"line {no} is not JSON ({exc})") from None
        doc = f.obj(parsed, f"line {no}")
        where = f"line {no}"
        f.need(doc, ROUND_REQUIRED, where)
        rnd = f.integer(doc["round"], f"{where} round", minimum=1)
        if out and rnd <= out[-1].round:
            raise f.error(f"{where}: round {rnd} follows round {out[-1].round}")
        if not isinstance(doc["rejected"], list):
            raise f.error(f"{where}: rejected must be a list")
        rejected = []
        for rej in doc["rejected"]:
            rej = f.obj(rej, f"{where} rejection")
            f.need(rej, ("node", "reason"), f"{where} rejection")
            rejected.append((str(rej["node"]), str(rej["reason"]), str(rej.get("detail", ""))))
        wm = doc["watermark_accuracy"]
        out.append(
            RoundLine(
                round=rnd,
                accuracy=f.number(doc["accuracy"], f"{where} accuracy", finite=False),
                loss=f.number(doc["loss"], f"{where} loss", finite=False),
                watermark_accuracy=None if wm is None else f.number(wm, f"{where} watermark"),
                contributed=f.count(doc["clients"], f"{where} clients"),
                rejected=tuple(rejected),
                flagged=f.count(doc["flagged"], f"{where} flagged"),
                refused=f.count(doc.get("refused", []), f"{where} refused"),
                bytes_sealed=f.integer(doc["bytes_sealed"], f"{where} bytes_sealed"),
                bytes_dense=f.integer(doc["bytes_dense"], f"{where} bytes_dense"),
            )
        )
    return tuple(out)


def model_parameters(path: Path) -> int:
    """Return the number of parameters in a safetensors file, reading only its header."""
    f = _File(path)
    try:
        with path.open("rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            raw = fh.read(size) if 2 <= size <= min(100_000_000, path.stat().st_size - 8) else b""
    except OSError as exc:
        raise f.error(f"not readable ({exc.strerror})") from None
    if not raw:
        raise f.error(f"not a safetensors file (header length {size})")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise f.error(f"not a safetensors file ({exc})") from None
    header = f.obj(header, "the safetensors header")
    total = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        shape = f.obj(info, f"tensor {name}").get("shape")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise f.error(f"tensor {name} has no valid shape")
        total += math.prod(shape)
    return total


# ---------------------------------------------------------------------------- the numbers


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
    ledger: Ledger
    rounds: tuple[RoundLine, ...]
    parameters: int
    other: str  # the accountant privacy.json does not name
    other_epsilon: dict[str, float]
    status: dict[str, str]  # per client, see ``status_of``
    series: dict[str, list[tuple[int, float]]]  # cumulative ε after each round trained
    central_other: float | None


def _differs(stored: float, recomputed: float) -> bool:
    return abs(stored - recomputed) > EPSILON_TOLERANCE * max(abs(recomputed), 1e-12) + 1e-9


def analyse(run_dir: Path) -> Analysis:
    """Read and check the run directory and recompute ε; raise ``ReportError`` on any fault."""
    _require_files(run_dir)
    config = load_config(run_dir / CONFIG)
    privacy = _File(run_dir / PRIVACY)
    ledger = load_ledger(privacy.path)
    metrics_path = run_dir / METRICS
    if metrics_path.is_file():
        rounds = load_metrics(metrics_path)
    elif ledger.stopped_reason and not any(c.history for c in ledger.clients):
        rounds = ()  # the run stopped before its first round: nothing was trained
    else:
        raise ReportError(f"{metrics_path}: missing; {run_dir} is not a complete run")
    parameters = model_parameters(run_dir / MODEL)

    for key, value in (("dp.accountant", ledger.accountant), ("dp.delta", ledger.delta)):
        if key in config and config[key] != value:
            raise privacy.error(f"{key} is {value!r} but config.json has {config[key]!r}")
    finished = {r.round for r in rounds}
    epsilons = _Epsilons()
    series: dict[str, list[tuple[int, float]]] = {}
    for c in ledger.clients:
        if len(c.history) != len(c.rounds):
            raise privacy.error(
                f"client {c.cid} has {len(c.history)} history entries but {len(c.rounds)} rounds"
            )
        if any(b <= a for a, b in zip(c.rounds, c.rounds[1:], strict=False)):
            raise privacy.error(f"client {c.cid} rounds {list(c.rounds)} are not increasing")
        unfinished = sorted(set(c.rounds) - finished)
        if unfinished:
            raise privacy.error(
                f"client {c.cid} was charged in rounds {unfinished}, which {METRICS} lacks"
            )
        series[c.cid] = [
            (rnd, epsilons.of(c.history[: i + 1], delta=ledger.delta, accountant=ledger.accountant))
            for i, rnd in enumerate(c.rounds)
        ]
        recomputed = series[c.cid][-1][1] if series[c.cid] else 0.0
        if _differs(c.epsilon, recomputed):
            raise privacy.error(
                f"client {c.cid} epsilon {c.epsilon:.4f} differs from {recomputed:.4f}, "
                f"recomputed from its history ({ledger.accountant}, δ = {ledger.delta:g})"
            )
    central_other = None
    other = next(a for a in ACCOUNTANTS if a != ledger.accountant)
    if ledger.central is not None:
        central = ledger.central
        recomputed = epsilons.of(central.history, delta=central.delta, accountant=ledger.accountant)
        if _differs(central.epsilon, recomputed):
            raise privacy.error(
                f"central epsilon {central.epsilon:.4f} differs from {recomputed:.4f}, "
                f"recomputed from its history ({ledger.accountant}, δ = {central.delta:g})"
            )
        central_other = epsilons.of(central.history, delta=central.delta, accountant=other)
    other_epsilon = {
        c.cid: epsilons.of(c.history, delta=ledger.delta, accountant=other) for c in ledger.clients
    }
    status = {
        c.cid: status_of(
            c,
            epsilons.of(
                (*c.history, c.history[-1]), delta=ledger.delta, accountant=ledger.accountant
            )
            if c.history and c.budget is not None
            else None,
        )
        for c in ledger.clients
    }
    return Analysis(
        run_dir=run_dir,
        config=config,
        ledger=ledger,
        rounds=rounds,
        parameters=parameters,
        other=other,
        other_epsilon=other_epsilon,
        status=status,
        series=series,
        central_other=central_other,
    )


def status_of(c: ClientLedger, next_epsilon: float | None) -> str:
    """Return ``ok``, ``budget reached`` or ``over budget``, and ``reported ε mismatch``.

    A client has reached its budget when it refused a round or when one more round like its
    last would take it past the budget (the server no longer samples it).
    """
    parts = []
    if c.budget is not None and c.epsilon > c.budget * (1 + 1e-9):
        parts.append("over budget")
    elif c.exhausted or (
        c.budget is not None
        and (c.epsilon >= c.budget or (next_epsilon is not None and next_epsilon > c.budget))
    ):
        parts.append("budget reached")
    if c.mismatch:
        parts.append("reported ε mismatch")
    return ", ".join(parts) or "ok"
