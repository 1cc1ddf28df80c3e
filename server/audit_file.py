"""A client's ``audit`` object in ``privacy.json``: its typed form, writer and checked reader.

``{"epsilon_lower_bound", "epsilon_accountant", "m", "guesses", "correct", "mode"}``: the
empirical audit's lower bound on ε (``server.audit``) beside the ledger's ε for the same client,
the canaries, the guesses made and how many were right, and the audit's mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from server.json_checks import Fields


@dataclass(frozen=True)
class AuditEntry:
    """One client's audit in ``privacy.json``; the accountant's ε sits beside it when written."""

    epsilon_lower_bound: float
    m: int
    guesses: int
    correct: int
    mode: str

    def to_json(self, epsilon_accountant: float) -> dict[str, Any]:
        """Return the client's ``audit`` object of ``privacy.json``."""
        return {
            "epsilon_lower_bound": self.epsilon_lower_bound,
            "epsilon_accountant": epsilon_accountant,
            "m": self.m,
            "guesses": self.guesses,
            "correct": self.correct,
            "mode": self.mode,
        }

    @classmethod
    def from_json(cls, f: Fields, value: Any, what: str) -> AuditEntry:
        """Check a client's ``audit`` object (``RunFileError`` through ``f`` if bad)."""
        doc = f.obj(value, what)
        f.need(doc, ("epsilon_lower_bound", "m", "guesses", "correct", "mode"), what)
        entry = cls(
            epsilon_lower_bound=f.number(doc["epsilon_lower_bound"], f"{what} epsilon_lower_bound"),
            m=f.integer(doc["m"], f"{what} m"),
            guesses=f.integer(doc["guesses"], f"{what} guesses"),
            correct=f.integer(doc["correct"], f"{what} correct"),
            mode=f.text(doc["mode"], f"{what} mode"),
        )
        if not 0 <= entry.correct <= entry.guesses <= entry.m or entry.epsilon_lower_bound < 0:
            raise f.error(f"{what}: needs 0 <= correct <= guesses <= m and a bound >= 0")
        return entry
