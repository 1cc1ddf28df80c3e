from __future__ import annotations

import math
import random
from collections.abc import Sequence

import dp_accounting
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant, create_accountant
from opacus.data_loader import DPDataLoader
from torch.utils.data import DataLoader, TensorDataset

from common.accounting import (
    ACCOUNTANTS,
    HistoryEntry,
    calibrate_noise_multiplier,
    epsilon_from_history,
    merge_history,
    sample_rate,
    steps_per_round,
)

# Opacus warns when the optimal RDP order lies at an end of its list: tightness, not us.
pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the (largest|smallest) alpha")

# One-step RDP curves cost ~0.1 s per (σ, q) in Opacus: few examples keep the file fast.
PROPERTY = settings(
    max_examples=8, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

sigmas = st.floats(0.5, 5.0)
rates = st.floats(1e-3, 1.0)
step_counts = st.integers(1, 500)
entries = st.tuples(sigmas, rates, step_counts)
histories = st.lists(entries, min_size=1, max_size=3, unique_by=lambda e: (e[0], e[1]))


def opacus_rdp_epsilon(history: Sequence[HistoryEntry], delta: float) -> float:
    """ε from Opacus's own RDPAccountant, fed the history as it would record it."""
    accountant = create_accountant("rdp")
    accountant.history = list(history)
    return float(accountant.get_epsilon(delta=delta))


def dp_accounting_event(history: Sequence[HistoryEntry]) -> dp_accounting.DpEvent:
    return dp_accounting.ComposedDpEvent(
        [
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(s)), n
            )
            for s, q, n in history
        ]
    )


# ----------------------------------------------------------------------- known answers


DIGITS_Q = 64 / 1797  # batch 64 of scikit-learn's 1,797 digits


@pytest.mark.parametrize(
    ("accountant", "expected", "tolerance"),
    [("rdp", 3.33, 0.01), ("prv", 2.88, 0.02)],
)
def test_pinned_epsilon(accountant: str, expected: float, tolerance: float) -> None:
    epsilon = epsilon_from_history([(1.0, DIGITS_Q, 140)], delta=1e-5, accountant=accountant)

    assert epsilon == pytest.approx(expected, abs=tolerance)


@pytest.mark.parametrize("accountant", ACCOUNTANTS)
def test_empty_history_costs_nothing(accountant: str) -> None:
    assert epsilon_from_history([], delta=1e-5, accountant=accountant) == 0.0
    assert epsilon_from_history([(1.0, 0.1, 0)], delta=1e-5, accountant=accountant) == 0.0


# --------------------------------------------------------------- against Opacus itself


@PROPERTY
@given(histories, st.sampled_from([1e-5, 1e-6, 1e-3]))
def test_fast_rdp_equals_opacus_rdp_exactly(history: list[HistoryEntry], delta: float) -> None:
    ours = epsilon_from_history(history, delta=delta, accountant="rdp")

    assert ours == opacus_rdp_epsilon(history, delta)


@PROPERTY
@given(histories, st.lists(st.integers(1, 4), min_size=3, max_size=3), st.randoms())
def test_splitting_and_reordering_a_history_keeps_epsilon(
    history: list[HistoryEntry], pieces: list[int], rnd: random.Random
) -> None:
    # The same steps recorded round by round, in any order, cost the same ε.
    split: list[HistoryEntry] = []
    for (s, q, n), k in zip(history, pieces, strict=False):
        cuts = [n // k + (1 if i < n % k else 0) for i in range(k)]
        split.extend((s, q, c) for c in cuts)
    rnd.shuffle(split)

    merged = merge_history(split)

    assert sorted(merged) == sorted(history)
    assert epsilon_from_history(split, delta=1e-5, accountant="rdp") == pytest.approx(
        epsilon_from_history(history, delta=1e-5, accountant="rdp"), rel=1e-12
    )


def test_merge_history_sums_equal_keys_in_first_seen_order() -> None:
    history = [(1.0, 0.1, 3), (2.0, 0.1, 4), (1.0, 0.1, 5), (1.0, 0.2, 0), (2.0, 0.1, 1)]

    assert merge_history(history) == [(1.0, 0.1, 8), (2.0, 0.1, 5)]


def test_merge_history_accepts_json_shaped_entries() -> None:
    # privacy.json stores entries as lists, with ints where a float was recorded as 1.
    assert merge_history([[1, 0.5, 2.0], (1.0, 0.5, 3)]) == [(1.0, 0.5, 5)]  # type: ignore[list-item]


def test_merge_history_keeps_prv_epsilon() -> None:
    history = [(1.0, DIGITS_Q, 70), (1.5, 0.05, 20), (1.0, DIGITS_Q, 70)]

    split = epsilon_from_history(history, delta=1e-5, accountant="prv")
    whole = epsilon_from_history(
        [(1.0, DIGITS_Q, 140), (1.5, 0.05, 20)], delta=1e-5, accountant="prv"
    )

    assert split == pytest.approx(whole, rel=1e-9)


@PROPERTY
@given(entries, st.integers(1, 200))
def test_epsilon_grows_with_steps_and_shrinks_with_noise(entry: HistoryEntry, more: int) -> None:
    s, q, n = entry
    base = epsilon_from_history([entry], delta=1e-5, accountant="rdp")

    assert epsilon_from_history([(s, q, n + more)], delta=1e-5, accountant="rdp") >= base
    assert epsilon_from_history([(s * 1.5, q, n)], delta=1e-5, accountant="rdp") <= base


# --------------------------------------------- against an independent implementation


INDEPENDENT = [
    [(1.0, DIGITS_Q, 140)],
    [(0.8, 0.01, 1000)],
    [(2.0, 0.1, 50), (1.1, 0.02, 300)],
]


@pytest.mark.parametrize("history", INDEPENDENT)
def test_rdp_agrees_with_google_dp_accounting(history: list[HistoryEntry]) -> None:
    reference = dp_accounting.rdp.RdpAccountant(orders=RDPAccountant.DEFAULT_ALPHAS)
    reference.compose(dp_accounting_event(history))

    ours = epsilon_from_history(history, delta=1e-5, accountant="rdp")

    assert ours == pytest.approx(reference.get_epsilon(1e-5), rel=0.02)


@pytest.mark.parametrize("history", INDEPENDENT)
def test_prv_agrees_with_google_pld(history: list[HistoryEntry]) -> None:
    reference = dp_accounting.pld.PLDAccountant()
    reference.compose(dp_accounting_event(history))

    ours = epsilon_from_history(history, delta=1e-5, accountant="prv")

    assert ours == pytest.approx(reference.get_epsilon(1e-5), rel=0.02)
    # PRV is tighter than RDP on the same history: the reason to offer it.
    assert ours < epsilon_from_history(history, delta=1e-5, accountant="rdp")


# ------------------------------------------------------------------------- calibration


@settings(max_examples=8, deadline=None, database=None)
@given(
    target=st.floats(0.5, 20.0),
    q=st.floats(0.005, 0.1),
    steps=st.integers(10, 2000),
    delta=st.sampled_from([1e-5, 1e-6]),
)
def test_calibrated_noise_never_overshoots_and_is_tight(
    target: float, q: float, steps: int, delta: float
) -> None:
    sigma = calibrate_noise_multiplier(
        target_epsilon=target, delta=delta, sample_rate=q, steps=steps, accountant="rdp"
    )

    epsilon = epsilon_from_history([(sigma, q, steps)], delta=delta, accountant="rdp")

    assert epsilon <= target
    assert epsilon >= 0.98 * target


def test_calibrated_noise_with_prv() -> None:
    target = 3.0

    sigma = calibrate_noise_multiplier(
        target_epsilon=target, delta=1e-5, sample_rate=0.05, steps=200, accountant="prv"
    )
    epsilon = epsilon_from_history([(sigma, 0.05, 200)], delta=1e-5, accountant="prv")

    assert 0.98 * target <= epsilon <= target


def test_calibration_for_the_digits_default_matches_the_pinned_answer() -> None:
    # At σ = 1.0 the pinned ε is 3.33; calibrating to ε = 3.33 must give σ close to 1.0.
    sigma = calibrate_noise_multiplier(
        target_epsilon=3.34, delta=1e-5, sample_rate=DIGITS_Q, steps=140, accountant="rdp"
    )

    assert sigma == pytest.approx(1.0, abs=0.01)


VALID = {
    "target_epsilon": 1.0,
    "delta": 1e-5,
    "sample_rate": 0.01,
    "steps": 100,
    "accountant": "rdp",
}


@pytest.mark.parametrize(
    ("parameter", "value"),
    [
        ("target_epsilon", 0.0),
        ("target_epsilon", -1.0),
        ("target_epsilon", math.nan),
        ("steps", 0),
        ("steps", -5),
        ("accountant", "gdp"),
        ("accountant", "RDP"),
        ("accountant", ""),
        ("delta", 0.0),
        ("delta", 1.0),
        ("sample_rate", 0.0),
        ("sample_rate", 1.5),
    ],
)
def test_calibration_refuses_bad_input_naming_it(parameter: str, value: object) -> None:
    with pytest.raises(ValueError) as info:
        calibrate_noise_multiplier(**{**VALID, parameter: value})  # type: ignore[arg-type]

    assert f"`{parameter}`" in str(info.value)


@pytest.mark.parametrize(("accountant", "delta"), [("gdp", 1e-5), ("", 1e-5), ("rdp", 0.0)])
def test_epsilon_refuses_bad_input_naming_it(accountant: str, delta: float) -> None:
    with pytest.raises(ValueError) as info:
        epsilon_from_history([(1.0, 0.1, 10)], delta=delta, accountant=accountant)

    assert ("`accountant`" if accountant != "rdp" else "`delta`") in str(info.value)


# -------------------------------------------------------- sample rate and step counts


def opacus_loader(n: int, batch: int) -> DPDataLoader:
    loader = DataLoader(TensorDataset(torch.zeros(n, 1)), batch_size=batch)
    return DPDataLoader.from_data_loader(loader, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    ("n", "batch"),
    [(1, 1), (10, 3), (64, 64), (65, 64), (1437, 64), (6000, 64), (93, 1), (5900, 64), (7, 100)],
)
def test_rate_and_steps_match_opacus_dp_data_loader(n: int, batch: int) -> None:
    loader = opacus_loader(n, batch)

    assert sample_rate(n, batch) == loader.sample_rate
    assert steps_per_round(n, batch, 1) == len(loader)
    assert steps_per_round(n, batch, 3) == 3 * len(loader)


@pytest.mark.parametrize(("n", "batch"), [(93, 1), (10, 3), (5900, 64)])
def test_steps_match_the_batches_opacus_actually_yields(n: int, batch: int) -> None:
    # 93 and 5900/64 are cases where 1 / (1 / 93) < 93: Opacus runs 92 steps, not 93.
    batches = sum(1 for _ in opacus_loader(n, batch))

    assert steps_per_round(n, batch, 1) == batches


@settings(max_examples=60, deadline=None, database=None)
@given(n=st.integers(1, 30_000), batch=st.integers(1, 1024))
def test_rate_and_steps_match_opacus_property(n: int, batch: int) -> None:
    loader = opacus_loader(n, batch)

    assert sample_rate(n, batch) == loader.sample_rate
    assert steps_per_round(n, batch, 2) == 2 * len(loader)


@pytest.mark.parametrize(("n", "batch"), [(0, 64), (10, 0), (-1, 1)])
def test_sample_rate_refuses_empty(n: int, batch: int) -> None:
    with pytest.raises(ValueError):
        sample_rate(n, batch)
