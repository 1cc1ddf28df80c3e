"""The one-run audit's bound: guesses about canaries turned into a lower bound on ε.

Steinke, Nasr and Jagielski, "Privacy Auditing with One (1) Training Run", NeurIPS 2023,
https://arxiv.org/abs/2305.08846. ``m`` canaries are each included in training independently
with probability 1/2; after training the auditor guesses inclusion for ``r`` of them (abstaining
on the rest) and is right ``v`` times. If training is (ε, δ)-DP for each canary, their
Theorem 5.2 bounds the chance of ``v`` or more right guesses by
``f(v) + 2mδ · max_{1<=i<=v} (f(v-i) - f(v)) / i``, with ``f(u) = P[Binomial(r, e^ε/(1+e^ε)) >= u]``
(``p_value``). ``epsilon_lower_bound`` is the largest ε that this p-value rejects at level β,
found by bisection as in the paper's reference code (scipy's binomial, as there; the tests
check this module against that code): with probability >= 1-β the mechanism is
not (ε', δ)-DP for any ε' below it.

Caveat that voids the bound: the inclusion bits must be fair coins independent of everything the
guesser chose beforehand, and the guesses must be fixed without looking at the bits. Trying
several guess counts and keeping the best spends β across them (``audit_scores`` divides β by
their number, a Bonferroni correction).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import special, stats

# Bisection steps after bracketing; the paper's code takes 30 on a bracket of width <= 1.
_BISECTION_STEPS = 40


def _check_counts(m: int, r: int, v: int) -> None:
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= correct <= guesses <= canaries, got {v}, {r}, {m}")


def _binomial_pmf(r: int, epsilon: float) -> npt.NDArray[np.float64]:
    """Return P[Binomial(r, q) = k] for k = 0..r, q = e^ε/(1+e^ε) (ε-DP randomized response)."""
    pmf: npt.NDArray[np.float64] = stats.binom.pmf(np.arange(r + 1), r, special.expit(epsilon))
    return pmf


def p_value(m: int, r: int, v: int, *, epsilon: float, delta: float) -> float:
    """Return the largest chance of ``v`` or more right guesses out of ``r`` under (ε, δ)-DP.

    Args:
        m: canaries, each included independently with probability 1/2.
        r: guesses made (abstentions excluded).
        v: right guesses.
        epsilon: ε of the null hypothesis, >= 0.
        delta: δ of the null hypothesis, in [0, 1].

    Returns:
        The p-value of Theorem 5.2, capped at 1.

    """
    _check_counts(m, r, v)
    if not epsilon >= 0 or not 0 <= delta <= 1:
        raise ValueError(f"need epsilon >= 0 and delta in [0, 1], got {epsilon}, {delta}")
    if v == 0:
        return 1.0
    pmf = _binomial_pmf(r, epsilon)
    tail = float(pmf[v:].sum())  # f(v) = P[Binomial(r, q) >= v]
    # f(v-i) - f(v) = P[v > Binomial(r, q) >= v-i], the pmf summed over v-1 down to v-i.
    window = np.cumsum(pmf[v - 1 :: -1])
    alpha = float(np.max(window / np.arange(1, v + 1)))
    return min(tail + alpha * delta * 2 * m, 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, *, delta: float, beta: float = 0.05) -> float:
    """Return the ε the audit proves at confidence ``1 - beta``; 0 when it proves nothing.

    Args:
        m: canaries, each included independently with probability 1/2.
        r: guesses made.
        v: right guesses.
        delta: δ of the guarantee being audited (the run's ``dp.delta``).
        beta: the chance that the bound is wrong, in (0, 1).

    Returns:
        The largest ε (to about 1e-9) whose p-value is below ``beta``.

    """
    _check_counts(m, r, v)
    if not 0 < beta < 1:
        raise ValueError(f"`beta` must be in (0, 1), got {beta}")
    if p_value(m, r, v, epsilon=0.0, delta=delta) >= beta:
        return 0.0
    low, high = 0.0, 1.0  # p(low) < beta <= p(high)
    while p_value(m, r, v, epsilon=high, delta=delta) < beta:
        low, high = high, high + 1.0
    for _ in range(_BISECTION_STEPS):
        mid = (low + high) / 2
        if p_value(m, r, v, epsilon=mid, delta=delta) < beta:
            low = mid
        else:
            high = mid
    return low


@dataclass(frozen=True)
class AuditResult:
    """What one audit found: the bound, and the counts it rests on."""

    epsilon_lower_bound: float
    m: int
    guesses: int
    correct: int


def guess_counts(m: int, shares: Sequence[float] = (0.01, 0.02, 0.05)) -> tuple[int, ...]:
    """Return the guess counts for ``m`` canaries: ``shares`` of m, each even and >= 2.

    Each count ``r`` guesses the ``r/2`` highest scores in and the ``r/2`` lowest out; fewer,
    surer guesses prove more when the signal is strong, more guesses when it is weak. The
    default (``audit_scores``'s) suits thousands of canaries.
    """
    return tuple(sorted({max(2, 2 * int(m * f / 2)) for f in shares if m >= 2}))


def audit_scores(
    scores: npt.ArrayLike,
    included: npt.ArrayLike,
    *,
    delta: float,
    beta: float = 0.05,
    counts: Sequence[int] | None = None,
) -> AuditResult:
    """Guess inclusion from ``scores`` (higher = more likely included) and bound ε.

    For each guess count ``r`` in ``counts`` (default ``guess_counts(m)``), the ``r/2`` highest
    scores are guessed in and the ``r/2`` lowest out; each count is tested at ``beta /
    len(counts)``, so the best of them still holds at confidence ``1 - beta``. Ties are broken
    by index, which is independent of the inclusion bits.

    Args:
        scores: one score per canary, shape ``(m,)``, finite.
        included: the true inclusion bits, shape ``(m,)``.
        delta: δ of the guarantee being audited.
        beta: the chance that the reported bound is wrong.
        counts: even guess counts, each <= m.

    Returns:
        The best bound and the counts behind it (0 right of 0 guesses if m < 2).

    """
    s = np.asarray(scores, dtype=np.float64)
    bits = np.asarray(included, dtype=bool)
    m = int(s.shape[0])
    if s.shape != (m,) or bits.shape != (m,) or not np.all(np.isfinite(s)):
        raise ValueError("`scores` and `included` must be finite vectors of one length")
    tried = tuple(guess_counts(m) if counts is None else counts)
    if not tried:
        return AuditResult(0.0, m, 0, 0)
    if any(r < 2 or r % 2 or r > m for r in tried):
        raise ValueError(f"guess counts must be even, >= 2 and <= {m}, got {tried}")
    order = np.argsort(-s, kind="stable")
    best = AuditResult(0.0, m, 0, 0)
    for r in tried:
        half = r // 2
        correct = int(bits[order[:half]].sum()) + int((~bits[order[m - half :]]).sum())
        bound = epsilon_lower_bound(m, r, correct, delta=delta, beta=beta / len(tried))
        if bound > best.epsilon_lower_bound or best.guesses == 0:
            best = AuditResult(bound, m, r, correct)
    return best
