"""Split a training pool among clients with flwr-datasets partitioners.

The partitioners run on a light index table (``index``, ``label``, ``writer``) rather than on the
examples, so partitioning 60,000 MNIST images takes milliseconds and no pixels are copied. The
result is deterministic in ``seed`` and depends only on the labels (and writers), so a task's
pool (``task_partitions``) splits exactly as the same data set's ``ImageSet`` does. A node that
trains on a partition uses ``common.partition_numpy``, which gives the same indices without
flwr-datasets.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import numpy as np
import numpy.typing as npt

from common.data import ImageSet, load_data
from common.task import Examples, Task, TaskError, read_examples


class PartitionError(ValueError):
    """The requested split cannot be made from this data set (names the numbers)."""


@dataclass(frozen=True)
class PartitionSpec:
    """How to split: ``scheme`` is ``iid``, ``dirichlet`` or ``by-writer``."""

    scheme: str
    num_partitions: int
    seed: int
    alpha: float = 0.5


LabelArray = npt.NDArray[np.int64]
WriterArray = npt.NDArray[np.str_]


def _index_table(labels: LabelArray, writers: WriterArray | None, seed: int) -> object:
    from datasets import Dataset

    table: dict[str, list[object]] = {
        "index": list(range(len(labels))),
        "label": labels.tolist(),
    }
    if writers is not None:
        table["writer"] = writers.tolist()
    # IidPartitioner takes contiguous shards, so shuffle first (seeded) to make them IID.
    return Dataset.from_dict(table).shuffle(seed=seed)


SCHEMES = ("iid", "dirichlet", "by-writer")


def check_spec(size: int, spec: PartitionSpec, writers: WriterArray | None) -> None:
    """Refuse a split of ``size`` examples that ``spec`` cannot make, naming the numbers.

    Raises:
        PartitionError: fewer than one or more partitions than examples, an unknown scheme,
            or `by-writer` without writers or with more partitions than writers.

    """
    if spec.num_partitions < 1:
        raise PartitionError(f"need >= 1 client to split among, got {spec.num_partitions}")
    if spec.num_partitions > size:
        raise PartitionError(
            f"cannot split {size} examples among {spec.num_partitions} clients; lower `sim.clients`"
        )
    if spec.scheme not in SCHEMES:
        raise PartitionError(f"unknown partitioning {spec.scheme!r}; use iid, dirichlet, by-writer")
    if spec.scheme == "by-writer":
        if writers is None:
            raise PartitionError("`by-writer` partitioning needs a data set with writers (femnist)")
        distinct = len(np.unique(writers))
        if spec.num_partitions > distinct:
            raise PartitionError(
                f"`by-writer` gives one client per writer: {distinct} writers, "
                f"{spec.num_partitions} clients asked; set `sim.clients` <= {distinct}"
            )


def partition_pool(pool: ImageSet, spec: PartitionSpec) -> list[npt.NDArray[np.int64]]:
    """Return, for each partition id, the indices into ``pool`` that the client owns."""
    return partition_labels(pool.labels, spec, writers=pool.writers)


def partition_labels(
    labels: LabelArray, spec: PartitionSpec, *, writers: WriterArray | None = None
) -> list[npt.NDArray[np.int64]]:
    """Return, for each partition id, the indices into a pool of ``labels`` the client owns."""
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        NaturalIdPartitioner,
    )

    check_spec(len(labels), spec, writers)
    partitioner: IidPartitioner | DirichletPartitioner | NaturalIdPartitioner
    if spec.scheme == "iid":
        partitioner = IidPartitioner(num_partitions=spec.num_partitions)
    elif spec.scheme == "dirichlet":
        partitioner = DirichletPartitioner(
            num_partitions=spec.num_partitions,
            partition_by="label",
            alpha=spec.alpha,
            min_partition_size=2,
            self_balancing=True,
            seed=spec.seed,
        )
    else:
        partitioner = NaturalIdPartitioner(partition_by="writer")
    partitioner.dataset = _index_table(labels, writers, spec.seed)
    # Read each partition's rows in one slice: its `index` Column would otherwise be fetched
    # row by row.
    return [
        np.sort(np.asarray(partitioner.load_partition(pid)[:]["index"], dtype=np.int64))
        for pid in range(spec.num_partitions)
    ]


@lru_cache(maxsize=8)
def cached_partitions(
    dataset: str, data_dir: str, seed: int, test_fraction: float, spec: PartitionSpec
) -> tuple[npt.NDArray[np.int64], ...]:
    """Partition a data set's training pool once per process (clients reuse it every round)."""
    pool = load_data(dataset, data_dir, seed, test_fraction).train
    return tuple(partition_pool(pool, spec))


def task_pool(task: Task) -> Examples:
    """Return the task's simulation pool.

    Raises:
        TaskError: the task has no pool (it is meant for nodes with their own data).

    """
    pool = read_examples(task.pool, source="the task's pool")
    if pool is None:
        raise TaskError(
            "the task has no pool() to split among simulated nodes; give each node its own "
            "data with the node config `data-path`, or add pool() to the task"
        )
    return pool


class Splitter(Protocol):
    """A function that splits a pool's labels as ``partition_labels`` does."""

    def __call__(
        self, labels: LabelArray, spec: PartitionSpec, *, writers: WriterArray | None = None
    ) -> list[npt.NDArray[np.int64]]:
        """Return, for each partition id, the sorted indices it owns."""


_TASK_PARTITIONS: dict[
    tuple[int, PartitionSpec, Splitter], tuple[Task, tuple[npt.NDArray[np.int64], ...]]
] = {}
"""Partitions per (task object, spec, splitter). Keyed by identity, not hash: a user's task need
not be hashable (a plain ``@dataclass`` is not); the task is kept beside its entry so its id
cannot be reused by another object."""


def task_partitions(
    task: Task, spec: PartitionSpec, split: Splitter = partition_labels
) -> tuple[npt.NDArray[np.int64], ...]:
    """Partition a task's simulation pool once per process (clients reuse it every round).

    ``split`` is ``partition_labels`` (flwr-datasets) or its numpy twin
    ``common.partition_numpy.split_labels``, which gives the same indices.

    Raises:
        TaskError: the task has no pool (``task_pool``).
        PartitionError: the split cannot be made.

    """
    key = (id(task), spec, split)
    cached = _TASK_PARTITIONS.get(key)
    if cached is not None and cached[0] is task:
        return cached[1]
    pool = task_pool(task)
    writers = task.pool_writers()
    labels = pool.labels.numpy().astype(np.int64, copy=False)
    parts = tuple(split(labels, spec, writers=writers))
    _TASK_PARTITIONS[key] = (task, parts)
    return parts
