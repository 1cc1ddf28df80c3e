"""A finished run's files read as plain JSON, as a user's own tools would read them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.accounting import epsilon_from_history


def metrics_rows(run: Path) -> list[dict[str, Any]]:
    """Return the objects of ``run/metrics.jsonl``, one per finished round."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def privacy(run: Path) -> dict[str, Any]:
    """Return ``run/privacy.json``."""
    ledger: dict[str, Any] = json.loads((run / "privacy.json").read_text())
    return ledger


def recomputed_epsilon(entry: dict[str, Any], ledger: dict[str, Any]) -> float:
    """Return ε of a client's or the central ``entry`` from its history alone (ledger's δ)."""
    history = [tuple(step) for step in entry["history"]]
    return epsilon_from_history(history, delta=ledger["delta"], accountant=ledger["accountant"])
