from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.audit import audit_scores, epsilon_lower_bound, guess_counts, p_value


def test_one_right_guess_has_the_p_value_derived_by_hand() -> None:
    # r = v = 1: f(1) = q and the δ term is 2mδ · P[Binomial(1, q) = 0] = 2mδ(1 - q).
    q = 1 / (1 + math.exp(-2.0))
    assert p_value(50, 1, 1, epsilon=2.0, delta=1e-3) == pytest.approx(q + 2 * 50 * 1e-3 * (1 - q))


def test_p_value_without_delta_is_the_binomial_tail() -> None:
    q = 1 / (1 + math.exp(-1.5))
    expected = sum(math.comb(20, k) * q**k * (1 - q) ** (20 - k) for k in range(15, 21))
    assert p_value(100, 20, 15, epsilon=1.5, delta=0.0) == pytest.approx(expected)


@pytest.mark.parametrize("n", [5, 10, 40])
def test_all_right_without_delta_solves_q_to_the_n_equals_beta(n: int) -> None:
    # p = q^n with q = 1/(1 + e^-ε): the bound is ε = -ln(β^(-1/n) - 1).
    expected = -math.log(0.05 ** (-1 / n) - 1)
    assert epsilon_lower_bound(n, n, n, delta=0.0) == pytest.approx(expected, abs=1e-7)


def test_more_perfect_guesses_prove_more() -> None:
    bounds = [epsilon_lower_bound(1000, n, n, delta=1e-5) for n in (10, 30, 100, 300)]
    assert bounds == sorted(bounds)
    assert bounds[0] > 0
    assert bounds[-1] > bounds[0] + 2


@pytest.mark.parametrize("r", [2, 20, 200])
def test_chance_level_guesses_prove_nothing(r: int) -> None:
    assert epsilon_lower_bound(1000, r, r // 2, delta=1e-5) == 0.0


def test_delta_weakens_the_bound() -> None:
    assert epsilon_lower_bound(10_000, 100, 100, delta=1e-3) < epsilon_lower_bound(
        10_000, 100, 100, delta=1e-6
    )


def test_bound_is_where_the_p_value_crosses_beta() -> None:
    eps = epsilon_lower_bound(1000, 200, 170, delta=1e-5)
    assert p_value(1000, 200, 170, epsilon=eps, delta=1e-5) < 0.05
    assert p_value(1000, 200, 170, epsilon=eps + 1e-6, delta=1e-5) >= 0.05


@pytest.mark.parametrize(("m", "r", "v"), [(10, 11, 5), (10, 5, 6), (10, 5, -1)])
def test_impossible_counts_are_refused(m: int, r: int, v: int) -> None:
    with pytest.raises(ValueError, match="correct <= guesses <= canaries"):
        epsilon_lower_bound(m, r, v, delta=1e-5)


def test_perfect_scores_give_a_positive_bound_and_random_scores_none() -> None:
    rng = np.random.default_rng(0)
    bits = rng.random(1000) < 0.5
    perfect = audit_scores(bits.astype(float), bits, delta=1e-5)
    noise = audit_scores(rng.standard_normal(1000), bits, delta=1e-5)
    assert perfect.correct == perfect.guesses > 0
    assert perfect.epsilon_lower_bound > 2
    assert noise.epsilon_lower_bound == 0.0


def test_reversed_scores_prove_nothing() -> None:
    rng = np.random.default_rng(1)
    bits = rng.random(500) < 0.5
    assert audit_scores(-bits.astype(float), bits, delta=1e-5).epsilon_lower_bound == 0.0


def test_each_guess_count_is_tested_at_a_share_of_beta() -> None:
    bits = np.arange(400) % 2 == 0
    scores = bits.astype(float)
    one = audit_scores(scores, bits, delta=1e-5, counts=(40,))
    split = audit_scores(scores, bits, delta=1e-5, counts=(40, 20))
    assert one.epsilon_lower_bound == pytest.approx(epsilon_lower_bound(400, 40, 40, delta=1e-5))
    assert split.guesses == 40
    assert split.epsilon_lower_bound == pytest.approx(
        epsilon_lower_bound(400, 40, 40, delta=1e-5, beta=0.025)
    )


def test_guess_counts_are_even_and_within_m() -> None:
    for m in (2, 7, 100, 1000):
        counts = guess_counts(m)
        assert counts and all(c % 2 == 0 and 2 <= c <= m for c in counts)
    assert guess_counts(1) == ()


def _reference_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    # The paper's reference code (Steinke et al. 2023, appendix), with scipy's binomial.
    from scipy import stats

    q = 1 / (1 + math.exp(-eps))
    beta = stats.binom.sf(v - 1, r, q)
    alpha, total = 0.0, 0.0
    for i in range(1, v + 1):
        total += stats.binom.pmf(v - i, r, q)
        if total > i * alpha:
            alpha = total / i
    return float(min(beta + alpha * delta * 2 * m, 1))


@pytest.mark.parametrize(
    ("m", "r", "v", "eps", "delta"),
    [
        (1000, 100, 90, 1.0, 1e-5),
        (4810, 240, 213, 2.5, 1e-5),
        (200, 20, 20, 0.3, 1e-3),
        (50, 50, 30, 0.0, 1e-2),
        (10_000, 2000, 1300, 0.7, 1e-6),
        (100, 10, 10, 30.0, 1e-5),
    ],
)
def test_p_value_matches_the_papers_reference_code(
    m: int, r: int, v: int, eps: float, delta: float
) -> None:
    ours = p_value(m, r, v, epsilon=eps, delta=delta)
    assert ours == pytest.approx(_reference_p_value(m, r, v, eps, delta), rel=1e-9, abs=1e-15)


@settings(max_examples=60, deadline=None)
@given(
    r=st.integers(1, 300),
    data=st.data(),
    eps=st.floats(0, 10),
    step=st.floats(0.01, 3),
    delta=st.sampled_from([0.0, 1e-6, 1e-5, 1e-3]),
)
def test_p_value_is_a_probability_that_grows_with_epsilon(
    r: int, data: st.DataObject, eps: float, step: float, delta: float
) -> None:
    v = data.draw(st.integers(0, r))
    low = p_value(1000, r, v, epsilon=eps, delta=delta)
    high = p_value(1000, r, v, epsilon=eps + step, delta=delta)
    assert 0 <= low <= high + 1e-12 <= 1 + 1e-12


@settings(max_examples=40, deadline=None)
@given(r=st.integers(2, 200), data=st.data())
def test_more_right_guesses_never_prove_less(r: int, data: st.DataObject) -> None:
    v = data.draw(st.integers(0, r - 1))
    assert (
        0
        <= epsilon_lower_bound(1000, r, v, delta=1e-5)
        <= epsilon_lower_bound(1000, r, v + 1, delta=1e-5)
    )
