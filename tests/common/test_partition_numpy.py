"""The numpy partitioner gives flwr-datasets' partitions index for index, and its refusals."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.data import load_data
from common.partition import PartitionError, PartitionSpec, partition_labels
from common.partition_numpy import split_labels


def flwr_datasets_split(
    labels: np.ndarray, spec: PartitionSpec, writers: np.ndarray | None = None
) -> list[np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DirichletPartitioner warns on each redraw
        return partition_labels(labels, spec, writers=writers)


def assert_same(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for mine, theirs in zip(a, b, strict=True):
        assert mine.dtype == np.int64
        np.testing.assert_array_equal(mine, theirs)


@pytest.fixture(scope="module")
def digits_labels() -> np.ndarray:
    return load_data("digits", "", 0, 0.2).train.labels


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
@pytest.mark.parametrize(
    ("clients", "seed", "alpha"), [(10, 0, 0.5), (7, 3, 0.1), (3, 2**31 + 5, 5.0)]
)
def test_the_built_in_pool_splits_as_flwr_datasets_does(
    digits_labels: np.ndarray, scheme: str, clients: int, seed: int, alpha: float
) -> None:
    spec = PartitionSpec(scheme, clients, seed, alpha)

    assert_same(split_labels(digits_labels, spec), flwr_datasets_split(digits_labels, spec))


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 300),
    classes=st.integers(2, 12),
    clients=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
    alpha=st.sampled_from([0.05, 0.3, 1.0, 20.0]),
    scheme=st.sampled_from(["iid", "dirichlet"]),
)
def test_any_label_pool_splits_as_flwr_datasets_does(
    n: int, classes: int, clients: int, seed: int, alpha: float, scheme: str
) -> None:
    labels = np.random.default_rng(seed).integers(0, classes, n).astype(np.int64)
    spec = PartitionSpec(scheme, min(clients, n), seed, alpha)
    try:
        expected = flwr_datasets_split(labels, spec)
    except ValueError:  # flwr-datasets gave up after its redraws: so must we
        with pytest.raises(PartitionError, match="dirichlet-alpha"):
            split_labels(labels, spec)
        return

    assert_same(split_labels(labels, spec), expected)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 200), writers=st.integers(1, 10), seed=st.integers(0, 2**32 - 1))
def test_writers_split_as_flwr_datasets_does(n: int, writers: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ids = np.array([f"writer-{i}" for i in rng.integers(0, writers, n)])
    labels = rng.integers(0, 5, n).astype(np.int64)
    spec = PartitionSpec("by-writer", len(np.unique(ids)) - (1 if n > 3 else 0), seed)
    if spec.num_partitions < 1:
        return

    assert_same(split_labels(labels, spec, writers=ids), flwr_datasets_split(labels, spec, ids))


@pytest.mark.parametrize(
    ("spec", "writers", "match"),
    [
        (PartitionSpec("iid", 0, 0), None, ">= 1 client"),
        (PartitionSpec("iid", 6, 0), None, "cannot split 5 examples"),
        (PartitionSpec("pathological", 2, 0), None, "unknown partitioning"),
        (PartitionSpec("by-writer", 2, 0), None, "needs a data set with writers"),
        (PartitionSpec("by-writer", 3, 0), np.array(["a", "b", "a", "b", "a"]), "2 writers"),
    ],
)
def test_a_split_that_cannot_be_made_is_refused_as_flwr_datasets_path_refuses(
    spec: PartitionSpec, writers: np.ndarray | None, match: str
) -> None:
    labels = np.arange(5, dtype=np.int64) % 2
    for split in (split_labels, partition_labels):
        with pytest.raises(PartitionError, match=match):
            split(labels, spec, writers=writers)
