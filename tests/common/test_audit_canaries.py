from __future__ import annotations

import numpy as np
import pytest

from common.audit_canaries import CanarySpec, canary_layout


def test_canaries_are_orthogonal_and_of_the_given_norm() -> None:
    layout = canary_layout(7, 50, 1234, 1.5)
    dense = np.stack([layout.dense(np.eye(50, dtype=np.float32)[i]) for i in range(50)])
    gram = dense.astype(np.float64) @ dense.T.astype(np.float64)
    assert np.allclose(np.diag(gram), 1.5**2, rtol=1e-5)
    assert np.allclose(gram - np.diag(np.diag(gram)), 0.0)


def test_scores_of_a_canary_sum_recover_its_weights() -> None:
    # With orthogonal canaries of norm C, -<-sum_i w_i c_i, c_j> = w_j C^2 exactly.
    layout = canary_layout(3, 40, 999, 2.0)
    weights = np.random.default_rng(0).integers(0, 5, 40).astype(np.float32)
    assert np.allclose(layout.scores(-layout.dense(weights)), weights * 4.0, rtol=1e-5)


def test_the_same_seeds_give_the_same_canaries_on_client_and_server() -> None:
    a, b = CanarySpec(11, 22, 30), CanarySpec(11, 22, 30)
    assert np.array_equal(a.included(), b.included())
    la, lb = a.layout(300, 1.0), b.layout(300, 1.0)
    assert np.array_equal(la.coords, lb.coords) and np.array_equal(la.values, lb.values)


def test_bits_are_fair_coins_that_depend_on_the_bits_seed_only() -> None:
    bits = [CanarySpec(1, seed, 4000).included() for seed in (1, 2)]
    assert 0.45 < bits[0].mean() < 0.55
    assert not np.array_equal(bits[0], bits[1])
    assert np.array_equal(CanarySpec(99, 1, 4000).included(), bits[0])


@pytest.mark.parametrize(
    ("directions", "bits", "count", "match"),
    [
        (True, 1, 10, "directions_seed"),
        (-1, 1, 10, "directions_seed"),
        (1, 2**63, 10, "bits_seed"),
        (1, 1.0, 10, "bits_seed"),
        (1, 1, 0, "canary count"),
        (1, 1, 100_001, "canary count"),
    ],
)
def test_bad_specs_are_refused_with_the_field_named(
    directions: object, bits: object, count: object, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        CanarySpec(directions, bits, count)  # type: ignore[arg-type]


def test_more_canaries_than_coordinates_are_refused() -> None:
    with pytest.raises(ValueError, match="canaries <= coordinates"):
        canary_layout(1, 11, 10, 1.0)


def test_scores_refuse_an_update_of_another_size() -> None:
    with pytest.raises(ValueError, match="canaries span 100"):
        canary_layout(1, 10, 100, 1.0).scores(np.zeros(99))


def test_canaries_cut_to_a_subspace_have_norm_c_there_and_nothing_outside() -> None:
    layout = canary_layout(seed=3, m=50, size=2_000, norm=0.7)
    inside = np.random.default_rng(0).random(2_000) < 0.1
    inside[layout.coords[0]] = False  # one canary entirely outside this round

    cut = layout.restricted(inside, 0.7)

    dense = cut.dense(np.ones(50))
    assert not dense[~inside].any()
    norms = np.linalg.norm(cut.values.astype(np.float64), axis=1)
    touched = inside[layout.coords].any(axis=1)
    assert not touched[0] and touched.sum() > 40
    assert not norms[~touched].any()
    np.testing.assert_allclose(norms[touched], 0.7, rtol=1e-5)
    # Inside, each canary keeps its direction: only its length changes.
    kept = inside[layout.coords[1]]
    ratio = cut.values[1][kept] / layout.values[1][kept]
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)
    with pytest.raises(ValueError, match="mask"):
        layout.restricted(inside[:-1], 0.7)
