"""The server's privacy ledger: per client, every round trained and the ε it cost.

The ledger is authoritative: it recomputes each client's ε from the ``(σ, q, steps)`` entries of
the rounds the client actually trained, with a real Opacus accountant, and compares the ε the
client reported; a mismatch is recorded, never silently trusted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.accounting import HistoryEntry, epsilon_from_history
from server.json_checks import RunFileError
from server.ledger_file import CentralEntry, ClientEntry, PrivacyFile, write_privacy
from server.planning import ClientPlan

# Relative tolerance between the ε a client reports and the ledger's own computation.
REPORT_TOLERANCE = 1e-6


@dataclass
class ClientAccount:
    """One client's account: history entries with the rounds they belong to."""

    history: list[HistoryEntry] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)
    epsilon: float = 0.0
    reported_epsilon: float | None = None
    mismatch: bool = False
    exhausted: bool = False
    refusals: int = 0


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

    def account(self, client_id: str) -> ClientAccount:
        """Return the client's account, opening an empty one on first sight."""
        return self.clients.setdefault(client_id, ClientAccount())

    def epsilon_of(self, history: list[HistoryEntry]) -> float:
        """Return ε of a history under this ledger's accountant and δ."""
        return epsilon_from_history(history, delta=self.delta, accountant=self.accountant)

    def charge(
        self, client_id: str, server_round: int, entry: HistoryEntry, reported_epsilon: float
    ) -> ClientAccount:
        """Record one trained round and recompute the client's ε; a round is charged once."""
        acct = self.account(client_id)
        if server_round in acct.rounds:
            return acct
        acct.history.append(entry)
        acct.rounds.append(server_round)
        acct.epsilon = self.epsilon_of(acct.history)
        acct.reported_epsilon = reported_epsilon
        acct.mismatch = not math.isclose(
            acct.epsilon, reported_epsilon, rel_tol=REPORT_TOLERANCE, abs_tol=1e-9
        )
        return acct

    def note_refusal(self, client_id: str) -> None:
        """Record that a client refused to train: its next round would pass its budget."""
        acct = self.account(client_id)
        acct.refusals += 1
        acct.exhausted = True

    def would_exceed(self, client_id: str, entry: HistoryEntry) -> bool:
        """Return whether one more round of ``entry`` would take the client past its budget."""
        if self.budget is None:
            return False
        acct = self.account(client_id)
        return self.epsilon_of([*acct.history, entry]) > self.budget

    def next_entry(self, client_id: str) -> HistoryEntry | None:
        """Return what the client's next round will cost: its last entry, else its plan."""
        acct = self.account(client_id)
        if acct.history:
            return acct.history[-1]
        plan = self.plan.get(client_id)
        if plan is None:
            return None
        return (plan.noise_multiplier, plan.sample_rate, plan.steps_per_round)

    def to_file(self) -> PrivacyFile:
        """Return the ``privacy.json`` document, clients in id order."""
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
            )
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
