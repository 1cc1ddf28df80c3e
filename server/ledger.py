"""The server's privacy ledger: per account, every round trained and the ε it cost.

The ledger is authoritative: it recomputes each account's ε from the ``(σ, q, steps)`` entries
of the rounds charged, with a real Opacus accountant, and compares the ε the client reported; a
mismatch is recorded, never silently trusted. An account is keyed by the node's identity (its
Flower node id in deployments; the declared partition in simulation, where node ids change at
every start; ``server.strategy.round_book``); the declared label is a separate field, and two
accounts claiming one label are both flagged ``shared-label``.

``charge`` takes the server's own entry for the round (the plan) and whatever the node declared,
moves each declaration into what an accountant computes (``common.accounting.bound_entry``) and
charges the candidate that costs most. It never raises for a peer's numbers: a declaration that
cannot be accounted closes the account (``exhausted``) and flags it ``unaccountable``, its ε then
being a lower bound. ``exhausted`` means the account can train no more: it refused, the next
round would pass its budget or its node's own limit, or it was closed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import protocol
from common.accounting import HistoryEntry, bound_entry, epsilon_from_history
from server.audit_file import AuditEntry
from server.json_checks import RunFileError
from server.ledger_file import CentralEntry, ClientEntry, PrivacyFile, write_privacy
from server.planning import ClientPlan

log = logging.getLogger(__name__)

# Relative tolerance between the ε a client reports and the ledger's own computation.
REPORT_TOLERANCE = 1e-6
# Account flags (``privacy.json``'s ``flags``), see docs/privacy.md.
DP_FACTS = "dp-facts"
UNACCOUNTABLE = "unaccountable"
ERROR_AFTER_TRAINING = "error-after-training"
SHARED_LABEL = "shared-label"
FLAGS = (DP_FACTS, UNACCOUNTABLE, ERROR_AFTER_TRAINING, SHARED_LABEL)
# What an accountant may raise on numbers it was not built for; caught per account, never fatal.
ACCOUNTING_FAILURES = (ArithmeticError, ValueError, MemoryError, RuntimeError)

RawFacts = tuple[float, float, float]
"""``(σ, q, steps)`` as a node declared them: any floats, NaN excepted upstream or not."""


@dataclass
class ClientAccount:
    """One account: history entries with the rounds they belong to, and what is known of it."""

    history: list[HistoryEntry] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)
    epsilon: float = 0.0
    reported_epsilon: float | None = None
    mismatch: bool = False
    exhausted: bool = False
    refusals: int = 0
    label: str | None = None
    node: int | None = None
    flags: set[str] = field(default_factory=set)
    node_limits: dict[str, float] = field(default_factory=dict)


@dataclass
class CentralAccount:
    """User-level DP on the server: one Gaussian release per round over a client sample.

    Each aggregated round clips every client's update to ``clip`` (L2) and adds noise of std
    ``noise_multiplier * clip / sampled`` to the mean; the sampling rate is the share of
    clients sampled. Accounted like DP-SGD with a client as the unit (McMahan et al. 2018).
    """

    noise_multiplier: float
    clip: float
    history: list[HistoryEntry] = field(default_factory=list)
    epsilon: float = 0.0

    def release(self, sample_rate: float, *, delta: float, accountant: str) -> None:
        """Record one noised aggregate."""
        self.history.append((self.noise_multiplier, sample_rate, 1))
        self.epsilon = epsilon_from_history(self.history, delta=delta, accountant=accountant)


@dataclass
class PrivacyLedger:
    """ε per client under one accountant, and the budget each may spend."""

    accountant: str
    delta: float
    budget: float | None
    unit: str = "example"
    clients: dict[str, ClientAccount] = field(default_factory=dict)
    plan: dict[str, ClientPlan] = field(default_factory=dict)
    central: CentralAccount | None = None
    stopped_reason: str | None = None
    # The empirical audit's entry per account (server.strategy.audit fills it), if audited.
    audits: dict[str, AuditEntry] = field(default_factory=dict)

    def account(self, client_id: str) -> ClientAccount:
        """Return the client's account, opening an empty one on first sight."""
        return self.clients.setdefault(client_id, ClientAccount())

    def epsilon_of(self, history: list[HistoryEntry]) -> float:
        """Return ε of a history under this ledger's accountant and δ."""
        return epsilon_from_history(history, delta=self.delta, accountant=self.accountant)

    def charge(
        self,
        client_id: str,
        server_round: int,
        entry: HistoryEntry,
        reported_epsilon: float | None = None,
        *,
        declared: Iterable[RawFacts] = (),
        flags: Iterable[str] = (),
    ) -> ClientAccount:
        """Charge one round (once per round) at the costliest of ``entry`` and ``declared``.

        Args:
            client_id: the account key.
            server_round: the round; a round already charged is not charged again.
            entry: the server's own entry for the round (the plan, or facts checked against it).
            reported_epsilon: the ε the client says it has spent, compared, never charged.
            declared: further ``(σ, q, steps)`` the node declared; each is bounded first.
            flags: account flags this round earned (``FLAGS``).

        Returns:
            The account. Never raises for a peer's numbers: a declaration outside what an
            accountant computes closes the account and flags it ``unaccountable``.

        """
        acct = self.account(client_id)
        acct.flags.update(flags)
        if server_round in acct.rounds:
            return acct
        sound = True
        candidates = [entry]
        for raw in declared:
            try:
                bounded, ok = bound_entry(*raw)
            except ValueError:
                sound = False
                continue
            sound = sound and ok
            candidates.append(bounded)
        best: tuple[float, HistoryEntry] | None = None
        for candidate in candidates:
            try:
                eps = self.epsilon_of([*acct.history, candidate])
            except ACCOUNTING_FAILURES as exc:
                log.warning("account %s: %s cannot be accounted (%s)", client_id, candidate, exc)
                sound = False
                continue
            if best is None or eps > best[0]:
                best = (eps, candidate)
        if best is None:
            # Not even the plan can be accounted: nothing finite to record, so close the account.
            acct.flags.add(UNACCOUNTABLE)
            acct.exhausted = True
            return acct
        acct.epsilon, charged = best
        acct.history.append(charged)
        acct.rounds.append(server_round)
        if not sound:
            acct.flags.add(UNACCOUNTABLE)
            acct.exhausted = True
        if reported_epsilon is not None:
            # privacy.json holds finite numbers only: a non-finite report is kept as a mismatch.
            finite = math.isfinite(reported_epsilon)
            acct.reported_epsilon = reported_epsilon if finite else None
            acct.mismatch = not (
                finite
                and math.isclose(
                    acct.epsilon, reported_epsilon, rel_tol=REPORT_TOLERANCE, abs_tol=1e-9
                )
            )
        self.can_train(client_id)  # marks the account exhausted if it can afford no more
        return acct

    def note_refusal(self, client_id: str) -> None:
        """Record that a client refused to train: its next round would pass its budget."""
        acct = self.account(client_id)
        acct.refusals += 1
        acct.exhausted = True

    def note_node(
        self, client_id: str, *, node: int, label: str, limits: dict[str, float] | None = None
    ) -> None:
        """Record which node and declared label an account speaks for, and the node's limits."""
        acct = self.account(client_id)
        acct.node, acct.label = node, label
        if limits:
            acct.node_limits.update(limits)

    def can_train(self, client_id: str) -> bool:
        """Return whether the account may train another round; mark it ``exhausted`` if not.

        Not when it is exhausted already, when its node's own ``max-rounds`` is reached, or when
        a round like its last (else its plan) would pass ``dp.budget`` or the node's own
        ``max-epsilon``; an ε that cannot be computed counts as passing.
        """
        acct = self.account(client_id)
        if acct.exhausted:
            return False
        max_rounds = acct.node_limits.get(protocol.NODE_MAX_ROUNDS)
        entry = self.next_entry(client_id)
        spent = max_rounds is not None and len(acct.rounds) >= max_rounds
        if not spent and entry is not None:
            spent = self.would_exceed(client_id, entry)
        if spent:
            acct.exhausted = True
        return not spent

    def limit_of(self, client_id: str) -> float | None:
        """Return the ε the account may not pass: ``dp.budget`` or its node's own, the lower."""
        own = self.account(client_id).node_limits.get(protocol.NODE_MAX_EPSILON)
        limits = [x for x in (self.budget, own) if x is not None]
        return min(limits) if limits else None

    def would_exceed(self, client_id: str, entry: HistoryEntry) -> bool:
        """Return whether one more round of ``entry`` would take the client past its limit."""
        limit = self.limit_of(client_id)
        if limit is None:
            return False
        acct = self.account(client_id)
        try:
            return self.epsilon_of([*acct.history, entry]) > limit
        except ACCOUNTING_FAILURES:
            return True

    def next_entry(self, client_id: str) -> HistoryEntry | None:
        """Return what the client's next round will cost: its plan, else its last entry."""
        plan = self.plan.get(client_id)
        if plan is not None:
            return (plan.noise_multiplier, plan.sample_rate, plan.steps_per_round)
        acct = self.account(client_id)
        return acct.history[-1] if acct.history else None

    def shared_labels(self) -> set[str]:
        """Return the accounts whose declared label another account declares too."""
        owners: dict[str, list[str]] = {}
        for cid, acct in self.clients.items():
            if acct.label is not None:
                owners.setdefault(acct.label, []).append(cid)
        return {cid for cids in owners.values() if len(cids) > 1 for cid in cids}

    def to_file(self) -> PrivacyFile:
        """Return the ``privacy.json`` document, clients in id order."""
        for cid in self.shared_labels():
            self.clients[cid].flags.add(SHARED_LABEL)
        return PrivacyFile(
            unit=self.unit,
            accountant=self.accountant,
            delta=self.delta,
            clients=tuple(
                ClientEntry(
                    cid=cid,
                    epsilon=acct.epsilon,
                    budget=self.budget,
                    exhausted=acct.exhausted,
                    history=tuple((s, q, int(n)) for s, q, n in acct.history),
                    rounds=tuple(acct.rounds),
                    reported_epsilon=acct.reported_epsilon,
                    mismatch=acct.mismatch,
                    label=acct.label,
                    node=acct.node,
                    flags=tuple(sorted(acct.flags)),
                    node_limits=dict(sorted(acct.node_limits.items())),
                    audit=self.audits.get(cid),
                )
                for cid, acct in sorted(self.clients.items(), key=lambda kv: _sort_key(kv[0]))
            ),
            central=None
            if self.central is None
            else CentralEntry(
                epsilon=self.central.epsilon,
                delta=self.delta,
                noise_multiplier=self.central.noise_multiplier,
                clip=self.central.clip,
                history=tuple(self.central.history),
            ),
            plan=dict(self.plan),
            stopped_reason=self.stopped_reason,
        )

    def to_json(self) -> dict[str, Any]:
        """Return the ``privacy.json`` document (the run-directory contract) as JSON."""
        return self.to_file().to_json()

    @classmethod
    def from_file(cls, doc: PrivacyFile) -> PrivacyLedger:
        """Rebuild a ledger from its ``privacy.json`` document (used when resuming).

        The file holds a budget per client; the ledger keeps one (the last client's), which
        the server replaces with ``dp.budget`` when it resumes. A resumed run starts without
        ``stopped_reason``: it is running again.
        """
        ledger = cls(
            accountant=doc.accountant,
            delta=doc.delta,
            budget=doc.clients[-1].budget if doc.clients else None,
            unit=doc.unit,
            plan=dict(doc.plan),
        )
        for c in doc.clients:
            ledger.clients[c.cid] = ClientAccount(
                history=list(c.history),
                rounds=list(c.rounds),
                epsilon=c.epsilon,
                reported_epsilon=c.reported_epsilon,
                mismatch=c.mismatch,
                exhausted=c.exhausted,
                label=c.label,
                node=c.node,
                flags=set(c.flags),
                node_limits=dict(c.node_limits),
            )
            if c.audit is not None:
                ledger.audits[c.cid] = c.audit
        if doc.central is not None:
            if doc.central.noise_multiplier is None or doc.central.clip is None:
                raise RunFileError("the ledger's central account lacks noise_multiplier or clip")
            ledger.central = CentralAccount(
                noise_multiplier=doc.central.noise_multiplier,
                clip=doc.central.clip,
                history=list(doc.central.history),
                epsilon=doc.central.epsilon,
            )
        return ledger

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PrivacyLedger:
        """Check a ``privacy.json`` document and rebuild the ledger (``RunFileError`` if bad)."""
        return cls.from_file(PrivacyFile.from_json(doc))

    def save(self, path: Path) -> None:
        """Write ``privacy.json`` atomically."""
        write_privacy(path, self.to_file())


def _sort_key(client_id: str) -> tuple[int, str]:
    return (int(client_id), "") if client_id.isdigit() else (1 << 62, client_id)
