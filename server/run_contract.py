"""Check that a run directory keeps the contract in architecture.md, through the typed readers.

``check_run_contract(path)`` reads ``config.json`` (a JSON object), ``metrics.jsonl`` (at least
one round; every line has the contract's keys and types, every rejection a node and a reason,
rounds increasing), ``privacy.json`` (unit, accountant ``rdp``/``prv``, δ, every client's ε,
budget, ``exhausted`` and ``history`` of ``[noise_multiplier, sample_rate, steps]``, central) and
the header of ``model.safetensors``. It returns a one-line summary, or raises ``ContractBroken``
naming the first broken promise. It checks the files' form, not whether their ε add up (that is
the report's check).
"""

from __future__ import annotations

from pathlib import Path

from server.json_checks import RunFileError
from server.ledger_file import read_privacy
from server.rundir import (
    CONFIG,
    METRICS,
    MODEL,
    PRIVACY,
    read_config,
    read_model_shapes,
    read_rounds,
)


class ContractBroken(ValueError):  # noqa: N818 (reads as what it says: the contract is broken)
    """A run directory breaks its contract; the message names the first broken promise."""


def check_run_contract(path: Path) -> str:
    """Return ``contract holds: N rounds, M clients, final accuracy A``; else ``ContractBroken``."""
    for name in (CONFIG, METRICS, PRIVACY, MODEL):
        if not (path / name).is_file():
            raise ContractBroken(f"{name} missing in {path}")
    try:
        read_config(path)
        rounds = read_rounds(path)
        if not rounds:
            raise ContractBroken(f"{path / METRICS}: no rounds")
        privacy = read_privacy(path / PRIVACY)
        read_model_shapes(path / MODEL)
    except RunFileError as exc:
        raise ContractBroken(str(exc)) from None
    return (
        f"contract holds: {len(rounds)} rounds, {len(privacy.clients)} clients, "
        f"final accuracy {rounds[-1].accuracy:.3f}"
    )
