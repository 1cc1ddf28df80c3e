"""Privacy accounting for DP-SGD with Poisson sampling, on Opacus's accountants.

A history is a list of ``(noise_multiplier, sample_rate, steps)`` entries with Opacus's meaning:
``steps`` DP-SGD steps, each sampling every example independently with probability
``sample_rate`` and adding Gaussian noise of std ``noise_multiplier * max_grad_norm``. Anyone can
recompute ε from a history with any accountant; this module is the one place fedveil does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

HistoryEntry = tuple[float, float, int]

ACCOUNTANTS = ("rdp", "prv")


def epsilon_from_history(
    history: Sequence[HistoryEntry], *, delta: float, accountant: str
) -> float:
    """Return ε at ``delta`` spent by ``history`` under the named accountant (0 when empty)."""
    from opacus.accountants import create_accountant

    if accountant not in ACCOUNTANTS:
        raise ValueError(f"`accountant` must be one of {ACCOUNTANTS}, got {accountant!r}")
    entries = [(float(s), float(q), int(n)) for s, q, n in history if int(n) > 0]
    if not entries:
        return 0.0
    acc = create_accountant(mechanism=accountant)
    acc.history = entries
    return float(acc.get_epsilon(delta=delta))


def sample_rate(num_examples: int, batch_size: int) -> float:
    """Poisson sampling rate Opacus uses for a loader of ``num_examples`` and ``batch_size``."""
    if num_examples < 1 or batch_size < 1:
        raise ValueError(f"need >= 1 example and batch size, got {num_examples}, {batch_size}")
    return 1.0 / math.ceil(num_examples / batch_size)


def steps_per_round(num_examples: int, batch_size: int, local_epochs: int) -> int:
    """DP-SGD steps one round of ``local_epochs`` takes (Opacus's DPDataLoader length)."""
    return local_epochs * math.ceil(num_examples / batch_size)


def calibrate_noise_multiplier(
    *, target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str
) -> float:
    """Return the smallest noise multiplier whose ε after ``steps`` stays below the target."""
    from opacus.accountants.utils import get_noise_multiplier

    if target_epsilon <= 0:
        raise ValueError(f"`target_epsilon` must be > 0, got {target_epsilon}")
    if steps < 1:
        raise ValueError(f"`steps` must be >= 1, got {steps}")
    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
            epsilon_tolerance=0.01,
        )
    )
