"""``privacy.json`` (contract in architecture.md): its one typed reader and writer.

:class:`PrivacyFile` is the document: unit, accountant, δ, each client's ε, budget and
``history`` of ``[noise_multiplier, sample_rate, steps]`` with the round each entry was charged
in, the server's central account, the DP plan and why the run stopped early. A client entry also
names the ``label`` (partition or data label) its node declared and the ``node`` id, its
``flags`` (``server.ledger.FLAGS``) and the node's own ``node_limits`` (protocol metric keys);
each is optional on read, so older ledgers stay readable. ``to_json`` gives
the keys in the contract's order; ``from_json`` checks every type and domain and refuses keys
from another version. ``server.ledger.PrivacyLedger`` converts its live accounts to and from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.accounting import ACCOUNTABLE, ACCOUNTANTS, HistoryEntry, in_domain
from common.files import write_atomic
from server.audit_file import AuditEntry
from server.json_checks import Fields, read_json
from server.planning import ClientPlan

REQUIRED = ("unit", "accountant", "delta", "clients", "central")
OPTIONAL = ("plan", "stopped_reason")
CLIENT_REQUIRED = ("epsilon", "budget", "exhausted", "history", "rounds")
PLAN_REQUIRED = (
    "noise_multiplier",
    "sample_rate",
    "steps_per_round",
    "planned_rounds",
    "planned_epsilon",
    "one_round_epsilon",
)
UNITS = ("example", "user")


@dataclass(frozen=True)
class ClientEntry:
    """One client's account: what it spent, under which budget, and in which rounds."""

    cid: str
    epsilon: float
    budget: float | None
    exhausted: bool
    history: tuple[HistoryEntry, ...]
    rounds: tuple[int, ...]
    reported_epsilon: float | None = None
    mismatch: bool = False
    label: str | None = None
    node: int | None = None
    flags: tuple[str, ...] = ()
    node_limits: dict[str, float] = field(default_factory=dict)
    audit: AuditEntry | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the client's object in ``privacy.json``."""
        return {
            "epsilon": self.epsilon,
            "budget": self.budget,
            "exhausted": self.exhausted,
            "history": [[s, q, n] for s, q, n in self.history],
            "rounds": list(self.rounds),
            "reported_epsilon": self.reported_epsilon,
            "mismatch": self.mismatch,
            "label": self.label,
            "node": self.node,
            "flags": list(self.flags),
            "node_limits": dict(self.node_limits),
            # The empirical audit (server.audit_file), null when the run has none.
            "audit": None if self.audit is None else self.audit.to_json(self.epsilon),
        }


@dataclass(frozen=True)
class CentralEntry:
    """User-level DP on the server: one Gaussian release per entry of ``history``."""

    epsilon: float
    delta: float
    noise_multiplier: float | None
    clip: float | None
    history: tuple[HistoryEntry, ...]

    def to_json(self) -> dict[str, Any]:
        """Return ``central`` of ``privacy.json``."""
        return {
            "epsilon": self.epsilon,
            "delta": self.delta,
            "noise_multiplier": self.noise_multiplier,
            "clip": self.clip,
            "history": [[s, q, n] for s, q, n in self.history],
        }


@dataclass(frozen=True)
class PrivacyFile:
    """The ``privacy.json`` document; ``clients`` keep the file's order."""

    unit: str
    accountant: str
    delta: float
    clients: tuple[ClientEntry, ...]
    central: CentralEntry | None = None
    plan: dict[str, ClientPlan] = field(default_factory=dict)
    stopped_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the document, keys in the contract's order."""
        return {
            "unit": self.unit,
            "accountant": self.accountant,
            "delta": self.delta,
            "clients": {c.cid: c.to_json() for c in self.clients},
            "central": None if self.central is None else self.central.to_json(),
            "plan": {cid: p.to_json() for cid, p in self.plan.items()},
            "stopped_reason": self.stopped_reason,
        }

    @classmethod
    def from_json(cls, doc: Any, where: str | Path = "privacy.json") -> PrivacyFile:
        """Check a ``privacy.json`` document and rebuild it; ``where`` leads every error."""
        f = Fields(where)
        doc = f.obj(doc, "the ledger")
        unknown = sorted(set(doc) - set(REQUIRED) - set(OPTIONAL))
        if unknown:
            raise f.error(f"unknown keys {unknown}: a ledger from another fedveil version")
        f.need(doc, REQUIRED, "the ledger")
        if doc["unit"] not in UNITS:
            raise f.error(f"unit must be one of {UNITS}, got {doc['unit']!r}")
        if doc["accountant"] not in ACCOUNTANTS:
            raise f.error(f"accountant must be one of {ACCOUNTANTS}, got {doc['accountant']!r}")
        delta = f.number(doc["delta"], "delta")
        if not 0 < delta < 1:
            raise f.error(f"delta must be in (0, 1), got {delta}")
        clients = tuple(
            _client(f, str(cid), f.obj(c, f"client {cid}"))
            for cid, c in f.obj(doc["clients"], "clients").items()
        )
        central = None if doc["central"] is None else _central(f, doc["central"], delta)
        raw_plan = doc.get("plan")
        plan = {
            str(cid): _plan(f, str(cid), p)
            for cid, p in f.obj({} if raw_plan is None else raw_plan, "plan").items()
        }
        stopped = doc.get("stopped_reason")
        return cls(
            unit=doc["unit"],
            accountant=doc["accountant"],
            delta=delta,
            clients=clients,
            central=central,
            plan=plan,
            stopped_reason=None if stopped is None else f.text(stopped, "stopped_reason") or None,
        )


def _client(f: Fields, cid: str, c: dict[str, Any]) -> ClientEntry:
    f.need(c, CLIENT_REQUIRED, f"client {cid}")
    return ClientEntry(
        cid=cid,
        epsilon=f.number(c["epsilon"], f"client {cid} epsilon"),
        budget=f.optional_number(c["budget"], f"client {cid} budget"),
        exhausted=f.boolean(c["exhausted"], f"client {cid} exhausted"),
        history=_accountable(f, f.history(c["history"], f"client {cid} history"), f"client {cid}"),
        rounds=tuple(f.integers(c["rounds"], f"client {cid} rounds", minimum=1)),
        reported_epsilon=f.optional_number(
            c.get("reported_epsilon"), f"client {cid} reported_epsilon"
        ),
        mismatch=f.boolean(c.get("mismatch", False), f"client {cid} mismatch"),
        label=None if c.get("label") is None else f.text(c["label"], f"client {cid} label"),
        node=None if c.get("node") is None else f.integer(c["node"], f"client {cid} node"),
        flags=tuple(
            f.text(x, f"client {cid} flag")
            for x in f.array(c.get("flags", []), f"client {cid} flags")
        ),
        node_limits={
            str(k): f.number(v, f"client {cid} node limit {k}")
            for k, v in f.obj(c.get("node_limits", {}), f"client {cid} node_limits").items()
        },
        audit=None
        if c.get("audit") is None
        else AuditEntry.from_json(f, c["audit"], f"client {cid} audit"),
    )


def _accountable(
    f: Fields, history: tuple[HistoryEntry, ...], what: str
) -> tuple[HistoryEntry, ...]:
    """Refuse history entries no accountant computes (the ledger never writes one)."""
    for i, entry in enumerate(history):
        if not in_domain(entry):
            low, high = ACCOUNTABLE.sigma
            raise f.error(
                f"{what} history[{i}] = {list(entry)} is outside what an accountant "
                f"computes (σ in [{low:g}, {high:g}], q >= {ACCOUNTABLE.rate[0]:g}, steps <= "
                f"{ACCOUNTABLE.steps[1]})"
            )
    return history


def _central(f: Fields, value: Any, delta: float) -> CentralEntry:
    c = f.obj(value, "central")
    f.need(c, ("epsilon", "history"), "central")
    central = CentralEntry(
        epsilon=f.number(c["epsilon"], "central epsilon"),
        delta=f.number(c.get("delta", delta), "central delta"),
        noise_multiplier=f.optional_number(c.get("noise_multiplier"), "central noise_multiplier"),
        clip=f.optional_number(c.get("clip"), "central clip"),
        history=_accountable(f, f.history(c["history"], "central history"), "central"),
    )
    if not 0 < central.delta < 1:
        raise f.error(f"central delta must be in (0, 1), got {central.delta}")
    return central


def _plan(f: Fields, cid: str, value: Any) -> ClientPlan:
    what = f"plan of client {cid}"
    p = f.obj(value, what)
    f.need(p, PLAN_REQUIRED, what)
    return ClientPlan(
        client_id=f.text(p.get("client_id", cid), f"{what} client_id"),
        noise_multiplier=f.number(p["noise_multiplier"], f"{what} noise_multiplier"),
        sample_rate=f.number(p["sample_rate"], f"{what} sample_rate"),
        steps_per_round=f.integer(p["steps_per_round"], f"{what} steps_per_round"),
        planned_rounds=f.integer(p["planned_rounds"], f"{what} planned_rounds"),
        planned_epsilon=f.number(p["planned_epsilon"], f"{what} planned_epsilon"),
        one_round_epsilon=f.number(p["one_round_epsilon"], f"{what} one_round_epsilon"),
    )


def read_privacy(path: Path) -> PrivacyFile:
    """Read and check ``privacy.json``; raise ``RunFileError`` naming the file on any fault."""
    return PrivacyFile.from_json(read_json(path), path)


def write_privacy(path: Path, privacy: PrivacyFile) -> None:
    """Write ``privacy.json`` atomically."""
    write_atomic(path, (json.dumps(privacy.to_json(), indent=2) + "\n").encode())
