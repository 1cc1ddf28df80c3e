"""The privacy-budget and training report of a run directory: ``report.html``, ``report.md``, plots.

``write_report(run_dir)`` reads ``config.json``, ``metrics.jsonl``, ``privacy.json`` and
``model.safetensors`` (contract in architecture.md), checks that they are complete, of this
version and that their numbers add up, recomputes every client's ε with both accountants, and
only then writes ``plots/*.png``, ``report.md`` and ``report.html`` (self-contained: inline CSS,
plots as ``data:`` URIs), each atomically. Anything wrong raises ``ReportError`` with one line
naming the file and the problem, and nothing is written.

The report states the guarantee in plain words first, then names every channel a client sends
and how it is protected, what the guarantee does not cover, and the numbers behind it.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.accounting import ACCOUNTANTS, HistoryEntry, epsilon_from_history, merge_history
from common.weights import write_atomic
from server import plots

log = logging.getLogger(__name__)

CONFIG = "config.json"
METRICS = "metrics.jsonl"
PRIVACY = "privacy.json"
MODEL = "model.safetensors"
HTML_NAME = "report.html"
MARKDOWN_NAME = "report.md"
PLOTS_DIR = "plots"

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
# Settings named in the report's closing paragraph, when config.json has them.
ABOUT_KEYS = (
    "dataset",
    "partitioning",
    "sim.clients",
    "fraction-train",
    "aggregation",
    "local-epochs",
    "batch-size",
    "lr",
    "seed",
)
ACCOUNTANT_NAMES = {
    "rdp": "Rényi-DP (RDP) accountant",
    "prv": "privacy-random-variable (PRV) accountant",
}


class ReportError(ValueError):
    """The run directory cannot be reported on: a file is missing, foreign or inconsistent."""


@dataclass(frozen=True)
class ReportFiles:
    """What ``write_report`` wrote."""

    html: Path
    markdown: Path
    plots: tuple[Path, ...]


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
    """Read and check the shape of ``privacy.json`` (numbers are checked in ``_analyse``)."""
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


# ---------------------------------------------------------------------------- the document


@dataclass(frozen=True)
class Para:
    """A paragraph; ``**bold**`` and ```code``` are the only markup."""

    text: str


@dataclass(frozen=True)
class Bullets:
    """A bulleted list."""

    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    """A table with a caption; ``warn`` holds the indices of rows to highlight."""

    caption: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    warn: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Plot:
    """A figure: written to ``plots/<name>.png`` and embedded in the HTML."""

    name: str
    png: bytes
    alt: str
    caption: str


Block = Para | Bullets | Table | Plot


@dataclass(frozen=True)
class Section:
    """A titled section of the report."""

    title: str
    anchor: str
    blocks: tuple[Block, ...]


def _eps(x: float) -> str:
    return f"{x:.3f}"


def _num(x: float) -> str:
    return f"{x:.4g}"


def _delta_words(delta: float) -> str:
    k = -math.log10(delta)
    if abs(k - round(k)) < 1e-9 and 1 <= round(k) <= 15:
        return f"one chance in {10 ** round(k):,}"
    return f"probability {delta:g}"


def _rate(q: float) -> str:
    inv = 1 / q
    return f"{q:.4g} (1/{round(inv)})" if abs(inv - round(inv)) < 1e-6 else f"{q:.4g}"


def _span(values: Iterable[float], fmt: Callable[[float], str]) -> str:
    distinct = sorted(set(values))
    if not distinct:
        return "-"
    if len(distinct) == 1:
        return fmt(distinct[0])
    return f"{fmt(distinct[0])} to {fmt(distinct[-1])}"


def _codec_words(config: Mapping[str, Any]) -> str:
    topk, bits, feedback = (
        config.get(k) for k in ("codec.topk", "codec.bits", "codec.error-feedback")
    )
    if topk is None or bits is None:
        return "compressed (codec settings not in config.json)"
    if topk >= 1 and bits == 32:
        return "not compressed (raw float32)"
    parts = [
        f"top-k sparsification keeping {topk:.0%} of coordinates" if topk < 1 else "no pruning"
    ]
    parts.append(f"{bits}-bit stochastic quantization" if bits < 32 else "raw float32 values")
    if feedback:
        parts.append("error feedback")
    return "compressed (" + ", ".join(parts) + ")"


def statement(a: Analysis) -> tuple[Block, ...]:
    """Return the plain-words privacy statement: unit, (ε, δ), accountants, mechanism, budget."""
    led = a.ledger
    trained = [c for c in led.clients if c.history]
    delta = f"{led.delta:g}"
    blocks: list[Block] = []
    if not trained:
        blocks.append(
            Para(
                f"**No client trained in this run, so no privacy was spent (ε = 0 at "
                f"δ = {delta}).** Nothing derived from any client's data left a client."
            )
        )
    else:
        eps = max(c.epsilon for c in led.clients)
        spread = ""
        if len({round(c.epsilon, 3) for c in led.clients}) > 1:
            spread = (
                f" ε is the largest any client spent; they range from "
                f"{_eps(min(c.epsilon for c in led.clients))} to {_eps(eps)} (table below)."
            )
        blocks.append(
            Para(
                f"**Unit of privacy: one training example.** Each of the {len(led.clients)} "
                f"clients trained on its own data with differentially private SGD (DP-SGD). For "
                f"every client, the model updates it sent in this run, and so every model the "
                f"server built from them, are **(ε = {_eps(eps)}, δ = {delta})-differentially "
                f"private** with respect to any one of that client's training examples: adding "
                f"or removing that example changes the probability of any result an observer "
                f"could see by at most a factor of e^ε ≈ {math.exp(eps):,.0f}, except with "
                f"{_delta_words(led.delta)} (δ).{spread}"
            )
        )
        other_max = max(a.other_epsilon.values())
        blocks.append(
            Para(
                f"**Accountant: {ACCOUNTANT_NAMES[led.accountant]}** (Opacus, `{led.accountant}`), "
                f"named in privacy.json and used to enforce the budget. It computes ε from each "
                f"client's exact noise multiplier, sampling rate and step count of every round "
                f"it trained. The {ACCOUNTANT_NAMES[a.other]} (`{a.other}`), recomputed from the "
                f"same histories for comparison, gives **ε = {_eps(other_max)}**. RDP gives a "
                f"guaranteed upper bound; PRV computes the privacy loss numerically (to within "
                f"0.01 of ε) and is usually tighter."
            )
        )
        blocks.append(Para(_mechanism(a, trained)))
    if led.central is not None:
        c = led.central
        noise = f"multiplier σ = {_num(c.noise_multiplier)}" if c.noise_multiplier else "noise"
        clip = f"L2 norm {_num(c.clip)}" if c.clip else "a fixed L2 norm"
        blocks.append(
            Para(
                f"**User level: a client's whole data set.** The server also clips each "
                f"client's update to {clip} and adds Gaussian {noise} to their aggregate, in "
                f"{len(c.history)} rounds: every global model it released is **(ε = "
                f"{_eps(c.epsilon)}, δ = {c.delta:g})-differentially private** with respect to "
                f"all of one client's data ({led.accountant.upper()}; {a.other.upper()} gives "
                f"ε = {_eps(a.central_other or 0.0)}). This protects against whoever receives the "
                f"models, not against the aggregator, which sees each update before the noise."
            )
        )
    if led.stopped_reason:
        blocks.append(Para(f"**The run ended early:** {led.stopped_reason.rstrip('.')}."))
    over = [c.cid for c in led.clients if a.status[c.cid].startswith("over budget")]
    if over:
        blocks.append(
            Para(
                f"**Warning: clients {', '.join(over)} spent more than their budget.** The "
                f"budget was not enforced for them; their ε in the table below is what they spent."
            )
        )
    differ = [c.cid for c in led.clients if c.mismatch]
    if differ:
        blocks.append(
            Para(
                f"**Clients {', '.join(differ)} reported an ε that differs from the ledger's.** "
                f"The ledger's ε, computed by the server from the DP facts sealed in each update, "
                f"is the one stated here."
            )
        )
    blocks.append(
        Para(
            "**Covered:** the model updates, the only channel that carries what was learned from "
            "client data, and everything derived from them (aggregates, global models, this "
            "report). **Not covered:** the facts each client sends in the clear, "
            "hyper-parameter tuning, and the quality of the noise generator; and the aggregator "
            "sees each client's noised update on its own. The next two sections name every "
            "channel and every limit."
        )
    )
    return tuple(blocks)


def _mechanism(a: Analysis, trained: Sequence[ClientLedger]) -> str:
    entries = [e for c in trained for e in c.history]
    budgets = {c.budget for c in a.ledger.clients if c.budget is not None}
    ran = len(a.rounds)
    configured = a.config.get("num-server-rounds")
    of_rounds = f"{ran} rounds" if configured in (None, ran) else f"{ran} of {configured} rounds"
    max_steps = max(sum(n for _, _, n in c.history) for c in trained)
    max_rounds = max(len(c.rounds) for c in trained)
    text = (
        f"**Mechanism:** DP-SGD with Poisson sampling at rate q = "
        f"{_span((q for _, q, _ in entries), _rate)}, per-example gradients clipped to L2 norm "
        f"{_num(a.config['dp.max-grad-norm'])} (`dp.max-grad-norm`) and Gaussian noise of "
        f"multiplier σ = {_span((s for s, _, _ in entries), _num)} (noise std σ × clip norm), "
        f"{_span((float(n) for _, _, n in entries), lambda x: f'{x:.0f}')} steps per round. "
        f"Over the {of_rounds} that ran, a client trained in up to {max_rounds} rounds, "
        f"{max_steps} steps in all."
    )
    if budgets:
        text += (
            f" No client may spend more than ε = {_span(budgets, _num)} (`dp.budget`): a "
            f"client refuses any round that would take it past its budget."
        )
    else:
        text += " No per-client ε budget was set (`dp.budget`)."
    return text


def channels(a: Analysis) -> tuple[Block, ...]:
    """Return every channel a client sends on, and how it is protected."""
    batch = a.config["batch-size"]
    planning = (
        " Also sent once, before the first round, in reply to the server's planning query "
        "(q and steps per round), so the server can calibrate σ."
        if a.ledger.plan
        else ""
    )
    rows = (
        (
            "Model update (DP-SGD output)",
            "every round the client trains",
            "Differentially private (the guarantee above); "
            + _codec_words(a.config)
            + "; sealed with HPKE (RFC 9180: X25519, HKDF-SHA256, AES-256-GCM) to the "
            "aggregator's public key and bound to the run, the round and the sending node, so "
            "the relay can neither read nor alter it and it cannot be replayed or misrouted.",
        ),
        (
            "DP facts: σ, q, steps, ε",
            "every reply, in the clear (a copy sealed inside the update is what the ledger "
            "charges)",
            f"Not protected by DP. q = 1 / ceil(n / batch-size) reveals ceil(n / {batch}), "
            f"the client's number of examples to within {batch}; steps, σ and ε follow from q "
            f"and the configuration.{planning}",
        ),
        (
            "Partition id",
            "every reply, in the clear",
            "Not protected: it says which data partition (client) a reply comes from.",
        ),
        (
            "Status: trained or refused, with a one-line reason",
            "every reply, in the clear",
            "Not protected: it says that a client reached its budget, which its DP facts "
            "reveal anyway.",
        ),
        (
            "Example count",
            "never",
            "Not sent: every client's update is aggregated with the same weight.",
        ),
        (
            "Training metrics (loss, accuracy)",
            "never",
            "Not sent.",
        ),
        (
            "Federated evaluation",
            "never",
            "Off: clients do not evaluate the global model; the server evaluates it on its "
            "own test split, which no client trains on.",
        ),
    )
    return (
        Para(
            "Everything a client sends to the server (through the Flower relay), and how it is "
            "protected. Nothing else leaves a client."
        ),
        Table("What each client sends", ("channel", "when", "protection"), rows),
    )


def limits(a: Analysis) -> tuple[Block, ...]:
    """Return what the guarantee does not cover, and what costs no privacy."""
    items = [
        "**Hyper-parameter tuning.** Choosing settings (learning rate, σ, rounds, clip norm, "
        "...) by comparing runs on the same client data leaks information that no ledger "
        "counts: the ε above holds for this run with its settings fixed in advance.",
        "**The noise generator.** DP-SGD's Gaussian noise and Poisson sampling draw from "
        "PyTorch's default pseudo-random generator, seeded from OS entropy (never from the "
        "run's public seed). It is not a cryptographically secure generator: Opacus's "
        "`secure_mode` (torchcsprng) is unavailable, so the guarantee assumes that no one can "
        "predict or reconstruct the generator's output.",
        "**No secure aggregation.** The aggregator opens and sees each client's DP-noised "
        "update on its own; against the aggregator each client is protected by its own ε, "
        "with nothing gained from being averaged with others.",
        "**Facts sent in the clear.** σ, q, steps, ε, the partition id, the status, and in "
        "which rounds a client took part are not DP-protected; q reveals "
        f"ceil(n / {a.config['batch-size']}).",
    ]
    if a.ledger.central is None:
        items.append(
            "**Only single examples are protected.** Someone who contributed k examples to a "
            "client is protected at roughly k·ε (group privacy), and properties of a client's "
            "data set as a whole (its size, its label mix) are not hidden. User-level DP "
            "(`central-dp.noise-multiplier`) was off in this run."
        )
    free = (
        "**Costs no privacy (post-processing).** Compression, sealing, aggregation, "
        "watermarking and the server's evaluation act only on outputs that are already "
        "differentially private, or on the server's own data; they are not charged."
    )
    return (Bullets((*items, free)),)


def client_table(a: Analysis) -> Table:
    """Per client: mechanism parameters, ε under both accountants, budget, status."""
    acc, other = a.ledger.accountant.upper(), a.other.upper()
    rows, warn = [], set()
    for i, c in enumerate(a.ledger.clients):
        status = a.status[c.cid]
        if status not in ("ok", "budget reached"):
            warn.add(i)
        rows.append(
            (
                c.cid,
                _span((s for s, _, _ in c.history), _num),
                _span((q for _, q, _ in c.history), _rate),
                str(len(c.rounds)),
                str(sum(n for _, _, n in c.history)),
                _eps(c.epsilon),
                _eps(a.other_epsilon[c.cid]),
                "-" if c.reported_epsilon is None else _eps(c.reported_epsilon),
                "none" if c.budget is None else _num(c.budget),
                status,
            )
        )
    return Table(
        f"Privacy spent per client (δ = {a.ledger.delta:g}). ε ({acc}) is the ledger's, with "
        f"the accountant named in privacy.json; ε ({other}) is recomputed from the same "
        f"history; the client's own ε is what it reported.",
        (
            "client",
            "σ",
            "q",
            "rounds trained",
            "steps",
            f"ε ({acc})",
            f"ε ({other})",
            "client's own ε",
            "budget",
            "status",
        ),
        tuple(rows),
        frozenset(warn),
    )


def _client_order(cid: str) -> tuple[int, str]:
    return (int(cid), "") if cid.isdigit() else (1 << 62, cid)


def plan_table(a: Analysis) -> Table:
    """Planned against spent, for every client with a plan."""
    spent = {c.cid: c for c in a.ledger.clients}
    rows = []
    for cid, p in sorted(a.ledger.plan.items(), key=lambda kv: _client_order(kv[0])):
        c = spent.get(cid)
        eps = 0.0 if c is None else c.epsilon
        share = f"{eps / p.planned_epsilon:.0%}" if p.planned_epsilon > 0 else "-"
        rows.append(
            (
                cid,
                _num(p.noise_multiplier),
                _rate(p.sample_rate),
                str(p.steps_per_round),
                str(p.planned_rounds),
                _eps(p.planned_epsilon),
                "0" if c is None else str(len(c.rounds)),
                _eps(eps),
                share,
            )
        )
    return Table(
        "Planned before the first round against spent: σ was calibrated so that a client "
        "training the planned number of rounds ends at the planned ε.",
        (
            "client",
            "planned σ",
            "q",
            "steps per round",
            "planned rounds",
            "planned ε",
            "rounds trained",
            "ε spent",
            "spent / planned",
        ),
        tuple(rows),
    )


def epsilon_table(a: Analysis) -> Table:
    """Cumulative ε after each round: smallest and largest over clients, and who was charged."""
    rows = []
    for line in a.rounds:
        latest = [
            max((e for r, e in points if r <= line.round), default=0.0)
            for points in a.series.values()
        ]
        charged = sum(1 for c in a.ledger.clients if line.round in c.rounds)
        rows.append(
            (
                str(line.round),
                str(charged),
                _eps(min(latest, default=0.0)),
                _eps(max(latest, default=0.0)),
            )
        )
    return Table(
        f"Cumulative ε after each round ({a.ledger.accountant.upper()}, δ = "
        f"{a.ledger.delta:g}), reconstructed from every client's history and the round each "
        f"entry was charged in.",
        ("round", "clients charged", "smallest ε", "largest ε"),
        tuple(rows),
    )


def training_table(a: Analysis) -> Table:
    """Per round: accuracy, loss, clients, traffic."""
    rows = tuple(
        (
            str(r.round),
            f"{r.accuracy:.4f}",
            f"{r.loss:.4f}",
            str(r.contributed),
            str(len(r.rejected)),
            str(r.flagged),
            str(r.refused),
            f"{r.bytes_sealed:,}",
            f"{r.bytes_dense:,}",
        )
        for r in a.rounds
    )
    return Table(
        "Per round: the global model on the server's test split, clients aggregated, "
        "rejected, flagged and refused, and bytes received.",
        (
            "round",
            "accuracy",
            "loss",
            "aggregated",
            "rejected",
            "flagged",
            "refused",
            "bytes sealed",
            "bytes dense",
        ),
        rows,
    )


def figures(a: Analysis) -> dict[str, Plot]:
    """Draw every plot the run's data supports."""
    if not a.rounds:
        return {}
    rounds = [r.round for r in a.rounds]
    led = a.ledger
    acc = led.accountant.upper()
    out = {
        "epsilon": Plot(
            "epsilon",
            plots.epsilon_plot(
                a.series,
                budgets=[c.budget for c in led.clients if c.budget is not None],
                last_round=rounds[-1],
                accountant=led.accountant,
            ),
            "ε spent per client over rounds, with the budget",
            f"ε spent by each client after every round ({acc} accountant, δ = {led.delta:g}). "
            f"Dashed red: the per-client budget. A curve is flat through rounds its client did "
            f"not train in; curves of clients with the same history coincide.",
        ),
        "accuracy": Plot(
            "accuracy",
            plots.accuracy_plot(rounds, [r.accuracy for r in a.rounds], [r.loss for r in a.rounds]),
            "test accuracy and loss of the global model per round",
            "Accuracy (blue, left axis) and loss (orange, right axis) of the global model on the "
            "server's test split after every round; no client trains on that split.",
        ),
    }
    sealed = sum(r.bytes_sealed for r in a.rounds)
    dense = sum(r.bytes_dense for r in a.rounds)
    ratio = (
        f" Over the run the sealed updates weigh {sealed / dense:.1%} of dense." if dense else ""
    )
    out["bytes"] = Plot(
        "bytes",
        plots.bytes_plot(
            rounds, [r.bytes_sealed for r in a.rounds], [r.bytes_dense for r in a.rounds]
        ),
        "bytes received per round, sealed and dense",
        "Bytes of the updates the server received per round: sealed (compressed and encrypted) "
        f"beside what the same updates weigh as dense float32 (log scale).{ratio}",
    )
    out["clients"] = Plot(
        "clients",
        plots.clients_plot(
            rounds,
            contributed=[r.contributed for r in a.rounds],
            rejected=[len(r.rejected) for r in a.rounds],
            flagged=[r.flagged for r in a.rounds],
            refused=[r.refused for r in a.rounds],
        ),
        "clients aggregated, rejected, flagged and refused per round",
        "Per round: clients whose update was aggregated (line); clients whose update was "
        "rejected (it failed to open or to validate), flagged as an outlier, or who refused to "
        "train because the round would pass their budget (bars).",
    )
    if any(r.watermark_accuracy is not None for r in a.rounds):
        out["watermark"] = Plot(
            "watermark",
            plots.watermark_plot(rounds, [r.watermark_accuracy for r in a.rounds]),
            "watermark trigger-set accuracy per round",
            "Accuracy of the global model on the server's secret watermark trigger set, after "
            "every round it was measured. Watermarking is post-processing: it costs no privacy.",
        )
    return out


def sections(a: Analysis, figs: Mapping[str, Plot]) -> tuple[Section, ...]:
    """Return the report in reading order: statement, channels, limits, numbers, plots."""
    led = a.ledger
    spent: list[Block] = [client_table(a)]
    if led.plan:
        spent.append(plan_table(a))
    over_time: list[Block] = [figs["epsilon"]] if "epsilon" in figs else []
    over_time.append(epsilon_table(a))
    training: list[Block] = [
        figs[k] for k in ("accuracy", "bytes", "clients", "watermark") if k in figs
    ]
    if not a.rounds:
        training.append(Para("No round finished, so there is nothing to plot."))
    else:
        training.append(training_table(a))
    rejected = tuple((str(r.round), *rej) for r in a.rounds for rej in r.rejected)
    if rejected:
        training.append(
            Table(
                "Rejected updates and why (nodes are Flower node ids; the privacy tables use "
                "partition ids).",
                ("round", "node", "reason", "detail"),
                rejected,
            )
        )
    about = Para(
        f"Run directory `{a.run_dir.resolve().name}`: {len(led.clients)} clients with privacy "
        f"accounts, {len(a.rounds)} rounds finished, a global model of {a.parameters:,} "
        f"parameters (model.safetensors). Settings from config.json: "
        + "; ".join(f"{k} {a.config[k]}" for k in ABOUT_KEYS if k in a.config)
        + "."
    )
    recompute = Para(
        "Every ε in this report can be recomputed from privacy.json: each client's `history` "
        "lists `[noise_multiplier, sample_rate, steps]` for every round it trained (with "
        "Opacus's meaning) and `rounds` the server round each entry was charged in; "
        "`common.accounting.epsilon_from_history(history, delta=δ, accountant=...)` gives ε."
    )
    return (
        Section("Privacy statement", "statement", statement(a)),
        Section("What each client sends", "channels", channels(a)),
        Section("What the guarantee does not cover", "limits", limits(a)),
        Section("Privacy spent per client", "clients", tuple(spent)),
        Section("Privacy spent over rounds", "over-time", tuple(over_time)),
        Section("Training", "training", tuple(training)),
        Section("About this run", "about", (about, recompute)),
    )


# ---------------------------------------------------------------------------- rendering

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1f;
 max-width:1100px;margin:2em auto;padding:0 1.2em;line-height:1.5;background:#fff}
h1{font-size:1.7em;border-bottom:3px solid #2a6f97;padding-bottom:.3em}
h2{font-size:1.3em;margin-top:2em;color:#2a6f97;border-bottom:1px solid #ddd}
#statement{background:#f1f7fb;border-left:5px solid #2a6f97;padding:.4em 1.2em;margin:1em 0}
table{border-collapse:collapse;margin:1em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#eef2f5}tr.warn td{background:#fde8e8}
figure{margin:1.5em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-style:italic;color:#444;font-size:.92em}
figure.table figcaption{margin-bottom:.4em}figure.table table{margin:0}
code{background:#f3f3f3;padding:0 .25em;border-radius:3px;font-size:.92em}
"""


def _inline_html(text: str) -> str:
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def _block_html(block: Block) -> str:
    if isinstance(block, Para):
        return f"<p>{_inline_html(block.text)}</p>"
    if isinstance(block, Bullets):
        items = "".join(f"<li>{_inline_html(i)}</li>" for i in block.items)
        return f"<ul>{items}</ul>"
    if isinstance(block, Table):
        head = "".join(f"<th>{_inline_html(h)}</th>" for h in block.header)
        body = "".join(
            ('<tr class="warn">' if i in block.warn else "<tr>")
            + "".join(f"<td>{_inline_html(cell)}</td>" for cell in row)
            + "</tr>"
            for i, row in enumerate(block.rows)
        )
        return (
            f'<figure class="table"><figcaption>{_inline_html(block.caption)}</figcaption>'
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></figure>"
        )
    data = base64.b64encode(block.png).decode("ascii")
    return (
        f'<figure id="plot-{block.name}"><img src="data:image/png;base64,{data}" '
        f'alt="{html.escape(block.alt)}"><figcaption>{_inline_html(block.caption)}'
        f"</figcaption></figure>"
    )


def render_html(title: str, parts: Sequence[Section]) -> str:
    """Return the self-contained HTML report: inline CSS, plots as ``data:`` URIs, no scripts."""
    body = "\n".join(
        f'<section id="{s.anchor}">\n<h2>{html.escape(s.title)}</h2>\n'
        + "\n".join(_block_html(b) for b in s.blocks)
        + "\n</section>"
        for s in parts
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n{body}\n</body>\n</html>\n"
    )


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _block_markdown(block: Block) -> str:
    if isinstance(block, Para):
        return block.text
    if isinstance(block, Bullets):
        return "\n".join(f"- {i}" for i in block.items)
    if isinstance(block, Table):
        lines = [
            f"*{block.caption}*",
            "",
            "| " + " | ".join(_md_cell(h) for h in block.header) + " |",
            "|" + "---|" * len(block.header),
        ]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
        return "\n".join(lines)
    return f"![{block.alt}]({PLOTS_DIR}/{block.name}.png)\n\n*{block.caption}*"


def render_markdown(title: str, parts: Sequence[Section]) -> str:
    """Return the Markdown report; plots are linked from ``plots/``."""
    out = [f"# {title}"]
    for s in parts:
        out.append(f"## {s.title}")
        out += [_block_markdown(b) for b in s.blocks]
    return "\n\n".join(out) + "\n"


def write_report(run_dir: Path) -> ReportFiles:
    """Check ``run_dir`` and write ``report.html``, ``report.md`` and ``plots/*.png`` into it.

    Every file is read and checked and every number computed before the first write, so a
    ``ReportError`` leaves the directory untouched; each file is then replaced atomically.
    """
    run_dir = Path(run_dir)
    analysis = analyse(run_dir)
    figs = figures(analysis)
    parts = sections(analysis, figs)
    title = f"fedveil run {run_dir.resolve().name}: privacy and training report"
    html_text = render_html(title, parts)
    md_text = render_markdown(title, parts)
    written = []
    for fig in figs.values():
        path = run_dir / PLOTS_DIR / f"{fig.name}.png"
        write_atomic(path, fig.png)
        written.append(path)
    files = ReportFiles(
        html=run_dir / HTML_NAME, markdown=run_dir / MARKDOWN_NAME, plots=tuple(written)
    )
    write_atomic(files.markdown, md_text.encode("utf-8"))
    write_atomic(files.html, html_text.encode("utf-8"))
    log.info("report written to %s", files.html)
    return files
