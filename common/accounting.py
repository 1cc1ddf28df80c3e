"""Privacy accounting for DP-SGD with Poisson sampling, on Opacus's accountants.

A history is a list of ``(noise_multiplier, sample_rate, steps)`` entries with Opacus's meaning:
``steps`` DP-SGD steps, each sampling every example independently with probability
``sample_rate`` and adding Gaussian noise of std ``noise_multiplier * max_grad_norm``. Anyone can
recompute ε from a history with any accountant; this module is the one place fedveil does.

Peer-supplied facts go through ``bound_entry`` first: it moves them into ``ACCOUNTABLE``, the
domain both accountants compute in bounded time and memory, and says whether the move could only
raise ε (sound) or could lower it (the ε is then a lower bound). The PRV accountant allocates a
grid that grows with ε and steps; past ``PRV_MAX_RDP_EPSILON`` or ``PRV_MAX_STEPS`` the RDP bound,
also a valid upper bound, stands in for it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

HistoryEntry = tuple[float, float, int]

ACCOUNTANTS = ("rdp", "prv")


@dataclass(frozen=True)
class Domain:
    """Closed ranges of ``(σ, q, steps)`` an accountant is asked to compute."""

    sigma: tuple[float, float] = (1e-3, 1e6)
    rate: tuple[float, float] = (1e-9, 1.0)
    steps: tuple[int, int] = (1, 1_000_000)


ACCOUNTABLE = Domain()
# Steps of one merged history entry: a million rounds of the largest accountable entry.
MAX_HISTORY_STEPS = 10**12
# Where PRV's grid stays small (see docs/privacy.md); beyond, RDP's ε stands in for PRV's.
PRV_MAX_RDP_EPSILON = 30.0
PRV_MAX_STEPS = 5_000


def bound_entry(sigma: float, rate: float, steps: float) -> tuple[HistoryEntry, bool]:
    """Move peer-declared DP facts into ``ACCOUNTABLE``; say whether that can only raise ε.

    Raising q, lowering σ or raising steps never lowers ε, so those moves keep the charge an
    upper bound (``True``); raising σ or cutting steps could lower it, so the ε of the result is
    only a lower bound for what was declared (``False``).

    Raises:
        ValueError: a fact is NaN, which no move makes meaningful.

    """
    if any(math.isnan(x) for x in (sigma, rate, steps)):
        raise ValueError(f"DP facts include NaN: σ={sigma} q={rate} steps={steps}")
    d = ACCOUNTABLE
    sound = sigma >= d.sigma[0] and steps <= d.steps[1]
    bounded_sigma = min(max(sigma, d.sigma[0]), d.sigma[1])
    bounded_rate = min(max(rate, d.rate[0]), d.rate[1])
    bounded_steps = math.ceil(min(max(steps, d.steps[0]), d.steps[1]))
    return (float(bounded_sigma), float(bounded_rate), bounded_steps), sound


def _computable(entry: HistoryEntry) -> bool:
    """σ and q in ``ACCOUNTABLE``; steps up to ``MAX_HISTORY_STEPS`` (merged rounds add up)."""
    s, q, n = entry
    d = ACCOUNTABLE
    return d.sigma[0] <= s <= d.sigma[1] and d.rate[0] <= q <= d.rate[1] and n <= MAX_HISTORY_STEPS


def in_domain(entry: HistoryEntry) -> bool:
    """Return whether ``entry`` lies in ``ACCOUNTABLE`` (``bound_entry`` leaves it unchanged)."""
    s, q, n = entry
    d = ACCOUNTABLE
    return (
        d.sigma[0] <= s <= d.sigma[1]
        and d.rate[0] <= q <= d.rate[1]
        and d.steps[0] <= n <= d.steps[1]
    )


def epsilon_from_history(
    history: Sequence[HistoryEntry], *, delta: float, accountant: str
) -> float:
    """Return ε at ``delta`` spent by ``history`` under the named accountant (0 when empty).

    Entries whose σ or q lie outside ``ACCOUNTABLE``, or with more than ``MAX_HISTORY_STEPS``
    steps, are refused (``ValueError``): bound peer facts first (``bound_entry``). For
    ``prv``, a history past ``PRV_MAX_RDP_EPSILON`` (by RDP) or ``PRV_MAX_STEPS`` gets the RDP ε.
    """
    from opacus.accountants import create_accountant

    if accountant not in ACCOUNTANTS:
        raise ValueError(f"`accountant` must be one of {ACCOUNTANTS}, got {accountant!r}")
    if not 0 < delta < 1:
        raise ValueError(f"`delta` must be in (0, 1), got {delta}")
    outside = [e for e in history if int(e[2]) > 0 and not _computable(e)]
    if outside:
        raise ValueError(f"history entry {outside[0]} is outside what an accountant computes")
    entries = merge_history(history)
    if not entries:
        return 0.0
    rdp = _rdp_epsilon(entries, delta)
    if accountant == "rdp":
        return rdp
    if rdp > PRV_MAX_RDP_EPSILON or sum(n for _, _, n in entries) > PRV_MAX_STEPS:
        return rdp
    acc = create_accountant(mechanism=accountant)
    acc.history = entries
    return float(acc.get_epsilon(delta=delta))


def _rdp_epsilon(entries: Sequence[HistoryEntry], delta: float) -> float:
    """ε of Opacus's ``RDPAccountant``, with each one-step RDP curve computed once per process.

    RDP composes additively, so ``steps`` steps cost ``steps`` times one step's curve; this is
    exactly what ``RDPAccountant.get_privacy_spent`` sums, minus the repeated series evaluation.
    """
    from opacus.accountants.analysis import rdp as privacy_analysis

    total = sum(n * _rdp_one_step(s, q) for s, q, n in entries)
    eps, _ = privacy_analysis.get_privacy_spent(orders=_rdp_orders(), rdp=total, delta=delta)
    return float(eps)


@lru_cache(maxsize=1)
def _rdp_orders() -> list[float]:
    from opacus.accountants import RDPAccountant

    return [float(a) for a in RDPAccountant.DEFAULT_ALPHAS]


@lru_cache(maxsize=256)
def _rdp_one_step(noise_multiplier: float, sample_rate: float) -> npt.NDArray[np.float64]:
    from opacus.accountants.analysis import rdp as privacy_analysis

    return np.asarray(
        privacy_analysis.compute_rdp(
            q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=_rdp_orders()
        ),
        dtype=np.float64,
    )


def merge_history(history: Sequence[HistoryEntry]) -> list[HistoryEntry]:
    """Sum the steps of entries with equal ``(σ, q)``.

    Composition of subsampled Gaussian mechanisms is order-free, so this changes no ε; it makes
    the accountant's cost independent of the number of rounds (one RDP curve per ``(σ, q)``).
    """
    steps: dict[tuple[float, float], int] = {}
    for s, q, n in history:
        if int(n) > 0:
            key = (float(s), float(q))
            steps[key] = steps.get(key, 0) + int(n)
    return [(s, q, n) for (s, q), n in steps.items()]


def sample_rate(num_examples: int, batch_size: int) -> float:
    """Poisson sampling rate Opacus uses for a loader of ``num_examples`` and ``batch_size``."""
    if num_examples < 1 or batch_size < 1:
        raise ValueError(f"need >= 1 example and batch size, got {num_examples}, {batch_size}")
    return 1.0 / math.ceil(num_examples / batch_size)


def steps_per_round(num_examples: int, batch_size: int, local_epochs: int) -> int:
    """DP-SGD steps one round of ``local_epochs`` takes (Opacus's DPDataLoader length).

    Opacus's Poisson sampler runs ``int(1 / sample_rate)`` steps per epoch, which is one fewer
    than ``ceil(n / batch)`` when ``1 / (1 / k)`` rounds below ``k`` (k = 93, 99, 105, ...):
    count exactly what it runs, so the history records the steps really taken.
    """
    return local_epochs * int(1 / sample_rate(num_examples, batch_size))


@lru_cache(maxsize=1024)
def calibrate_noise_multiplier(
    *, target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str
) -> float:
    """Return the smallest noise multiplier whose ε after ``steps`` stays below the target.

    Cached: clients of equal ``(q, steps)`` share σ, so planning 1,000 clients costs a few
    dozen calibrations, not a thousand.
    """
    from opacus.accountants.utils import get_noise_multiplier

    if not target_epsilon > 0:
        raise ValueError(f"`target_epsilon` must be > 0, got {target_epsilon}")
    if not 0 < delta < 1:
        raise ValueError(f"`delta` must be in (0, 1), got {delta}")
    if not 0 < sample_rate <= 1:
        raise ValueError(f"`sample_rate` must be in (0, 1], got {sample_rate}")
    if steps < 1:
        raise ValueError(f"`steps` must be >= 1, got {steps}")
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"`accountant` must be one of {ACCOUNTANTS}, got {accountant!r}")
    with warnings.catch_warnings():
        # The search brackets σ from far above the answer; at those σ the best RDP order is the
        # largest one and Opacus warns that the bound could be tighter. Only the bracket uses
        # those bounds, never the returned σ's ε.
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
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
