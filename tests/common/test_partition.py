from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from common.data import ImageSet, load_data
from common.partition import (
    PartitionError,
    PartitionSpec,
    cached_partitions,
    partition_pool,
    task_partitions,
)
from common.task import Examples, Task, TaskError, TaskSettings, load_task


@pytest.fixture(scope="module")
def digits_pool() -> ImageSet:
    return load_data("digits", "", 0, 0.2).train


def synthetic_pool(n: int, *, classes: int = 10, writers: list[str] | None = None) -> ImageSet:
    rng = np.random.default_rng(n)
    labels = rng.integers(0, classes, n).astype(np.int64)
    images = np.zeros((n, 1, 2, 2), dtype=np.uint8)
    return ImageSet(images, labels, None if writers is None else np.array(writers))


def assert_disjoint_cover(parts: list[np.ndarray], size: int) -> None:
    assert all(p.dtype == np.int64 for p in parts)
    assert all(np.array_equal(p, np.sort(p)) for p in parts)
    joined = np.concatenate(parts)
    assert len(joined) == size, "an example is missing or owned twice"
    assert np.array_equal(np.sort(joined), np.arange(size))


def mean_label_tv(parts: list[np.ndarray], labels: np.ndarray, classes: int) -> float:
    """Mean total-variation distance of each partition's label histogram to the pool's."""
    pool = np.bincount(labels, minlength=classes) / len(labels)
    distances = []
    for p in parts:
        local = np.bincount(labels[p], minlength=classes) / len(p)
        distances.append(0.5 * np.abs(local - pool).sum())
    return float(np.mean(distances))


# --------------------------------------------------------------------------------------- iid


@settings(max_examples=8, deadline=None)
@given(n=st.integers(1, 300), k=st.integers(1, 12), seed=st.integers(0, 2**32 - 1))
def test_iid_is_a_balanced_disjoint_cover(n: int, k: int, seed: int) -> None:
    pool = synthetic_pool(n)
    if k > n:
        k = n

    parts = partition_pool(pool, PartitionSpec("iid", k, seed))

    assert len(parts) == k
    assert_disjoint_cover(parts, n)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_iid_is_deterministic_in_seed(digits_pool: ImageSet) -> None:
    first = partition_pool(digits_pool, PartitionSpec("iid", 10, seed=0))
    again = partition_pool(digits_pool, PartitionSpec("iid", 10, seed=0))
    other = partition_pool(digits_pool, PartitionSpec("iid", 10, seed=1))

    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_iid_is_shuffled_not_contiguous(digits_pool: ImageSet) -> None:
    parts = partition_pool(digits_pool, PartitionSpec("iid", 10, seed=0))

    # Contiguous shards would each span ~1/10 of the index range; shuffled ones span nearly all.
    spans = [int(p[-1] - p[0]) for p in parts]
    assert min(spans) > 0.8 * len(digits_pool)


def test_iid_label_distribution_is_close_to_the_pool(digits_pool: ImageSet) -> None:
    parts = partition_pool(digits_pool, PartitionSpec("iid", 10, seed=0))

    assert mean_label_tv(parts, digits_pool.labels, 10) < 0.15


# --------------------------------------------------------------------------------- dirichlet


@pytest.mark.parametrize("alpha", [0.1, 0.5, 10.0])
def test_dirichlet_is_a_disjoint_cover(digits_pool: ImageSet, alpha: float) -> None:
    parts = partition_pool(digits_pool, PartitionSpec("dirichlet", 10, seed=0, alpha=alpha))

    assert len(parts) == 10
    assert_disjoint_cover(parts, len(digits_pool))
    assert min(len(p) for p in parts) >= 2


def test_dirichlet_skews_labels_far_more_than_iid(digits_pool: ImageSet) -> None:
    labels = digits_pool.labels
    iid = partition_pool(digits_pool, PartitionSpec("iid", 10, seed=0))
    skewed = partition_pool(digits_pool, PartitionSpec("dirichlet", 10, seed=0, alpha=0.1))

    tv_iid = mean_label_tv(iid, labels, 10)
    tv_skewed = mean_label_tv(skewed, labels, 10)

    assert tv_skewed > 0.4
    assert tv_skewed > 4 * tv_iid


def test_dirichlet_skew_shrinks_as_alpha_grows(digits_pool: ImageSet) -> None:
    labels = digits_pool.labels

    tv = [
        mean_label_tv(
            partition_pool(digits_pool, PartitionSpec("dirichlet", 10, seed=0, alpha=a)),
            labels,
            10,
        )
        for a in (0.1, 100.0)
    ]

    assert tv[0] > 2 * tv[1]


def test_dirichlet_is_deterministic_in_seed(digits_pool: ImageSet) -> None:
    spec = PartitionSpec("dirichlet", 10, seed=3, alpha=0.5)
    first = partition_pool(digits_pool, spec)
    again = partition_pool(digits_pool, spec)
    other = partition_pool(digits_pool, PartitionSpec("dirichlet", 10, seed=4, alpha=0.5))

    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert [len(p) for p in first] != [len(p) for p in other]


# --------------------------------------------------------------------------------- by-writer


WRITERS = ["w3"] * 5 + ["w1"] * 1 + ["w5"] * 3 + ["w0"] * 7 + ["w2"] * 2 + ["w4"] * 4


def femnist_like_pool() -> ImageSet:
    order = np.random.default_rng(0).permutation(len(WRITERS))  # writers interleaved
    return synthetic_pool(len(WRITERS), classes=62, writers=[WRITERS[i] for i in order])


def test_by_writer_gives_each_client_one_whole_writer() -> None:
    pool = femnist_like_pool()
    assert pool.writers is not None

    parts = partition_pool(pool, PartitionSpec("by-writer", 6, seed=0))

    assert_disjoint_cover(parts, len(pool))
    owners = [set(pool.writers[p].tolist()) for p in parts]
    assert all(len(o) == 1 for o in owners)
    for part, (writer,) in zip(parts, owners, strict=True):
        assert np.array_equal(part, np.flatnonzero(pool.writers == writer))


def test_by_writer_with_fewer_clients_than_writers() -> None:
    pool = femnist_like_pool()
    assert pool.writers is not None

    parts = partition_pool(pool, PartitionSpec("by-writer", 4, seed=0))

    assert len(parts) == 4
    owners = [set(pool.writers[p].tolist()) for p in parts]
    assert all(len(o) == 1 for o in owners)
    assert len(set.union(*owners)) == 4
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined)


def test_by_writer_is_deterministic_in_seed() -> None:
    pool = femnist_like_pool()

    first = partition_pool(pool, PartitionSpec("by-writer", 6, seed=0))
    again = partition_pool(pool, PartitionSpec("by-writer", 6, seed=0))

    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))


def test_by_writer_more_clients_than_writers_names_the_numbers() -> None:
    pool = femnist_like_pool()

    with pytest.raises(PartitionError) as info:
        partition_pool(pool, PartitionSpec("by-writer", 7, seed=0))

    assert "6 writers" in str(info.value)
    assert "7 clients" in str(info.value)


def test_by_writer_without_writers() -> None:
    with pytest.raises(PartitionError, match="writers"):
        partition_pool(synthetic_pool(20), PartitionSpec("by-writer", 2, seed=0))


# ----------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_more_clients_than_examples_names_the_numbers(scheme: str) -> None:
    with pytest.raises(PartitionError) as info:
        partition_pool(synthetic_pool(5), PartitionSpec(scheme, 6, seed=0))

    assert "5 examples" in str(info.value)
    assert "6 clients" in str(info.value)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "by-writer"])
@pytest.mark.parametrize("clients", [0, -1])
def test_no_clients_is_refused(scheme: str, clients: int) -> None:
    pool = femnist_like_pool()

    with pytest.raises(PartitionError, match=str(clients)):
        partition_pool(pool, PartitionSpec(scheme, clients, seed=0))


def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(PartitionError, match="pathological"):
        partition_pool(synthetic_pool(20), PartitionSpec("pathological", 2, seed=0))


def test_cached_partitions_equal_a_fresh_split(digits_pool: ImageSet) -> None:
    spec = PartitionSpec("iid", 5, seed=0)

    cached = cached_partitions("digits", "", 0, 0.2, spec)
    fresh = partition_pool(digits_pool, spec)

    assert isinstance(cached, tuple)
    assert all(np.array_equal(a, b) for a, b in zip(cached, fresh, strict=True))
    assert cached_partitions("digits", "", 0, 0.2, spec) is cached


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_a_built_in_tasks_partitions_are_the_data_sets(scheme: str) -> None:
    spec = PartitionSpec(scheme, 7, seed=2, alpha=0.5)
    task = load_task("digits", TaskSettings(seed=0, data_dir="", test_fraction=0.2, model="auto"))

    from_task = task_partitions(task, spec)
    from_data = cached_partitions("digits", "", 0, 0.2, spec)

    assert len(from_task) == len(from_data) == 7
    assert all(np.array_equal(a, b) for a, b in zip(from_task, from_data, strict=True))
    assert task_partitions(task, spec) is from_task  # computed once per process


def test_a_task_without_a_pool_cannot_be_partitioned() -> None:
    class NodesOnly(Task):
        num_classes = property(lambda self: 2)
        input_shape = property(lambda self: (3,))

        def build_model(self) -> torch.nn.Module:
            return torch.nn.Linear(3, 2)

        def node_examples(self, data_path: Path) -> Examples:
            raise NotImplementedError

        def test_examples(self) -> Examples:
            raise NotImplementedError

    with pytest.raises(TaskError, match="data-path"):
        task_partitions(NodesOnly(), PartitionSpec("iid", 2, seed=0))


def test_a_task_that_is_not_hashable_partitions_like_any_other() -> None:
    from dataclasses import dataclass

    @dataclass  # eq=True without frozen: instances are unhashable, as a user's may be
    class Blobs(Task):
        n: int = 40

        num_classes = property(lambda self: 2)
        input_shape = property(lambda self: (3,))

        def build_model(self) -> torch.nn.Module:
            return torch.nn.Linear(3, 2)

        def pool(self) -> Examples:
            labels = torch.arange(self.n) % 2
            return Examples(torch.zeros(self.n, 3), labels.to(torch.int64))

        def node_examples(self, data_path: Path) -> Examples:
            raise NotImplementedError

        def test_examples(self) -> Examples:
            raise NotImplementedError

    task, spec = Blobs(), PartitionSpec("iid", 4, seed=0)

    parts = task_partitions(task, spec)

    assert sorted(np.concatenate(parts).tolist()) == list(range(40))
    assert task_partitions(task, spec) is parts
    assert task_partitions(Blobs(), spec) is not parts  # another object, its own entry
