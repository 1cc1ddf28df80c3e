"""The splits of ``common.partition.partition_labels``, computed with numpy alone.

A node that trains on a partition of a shared pool (``partition-id``/``num-partitions``) needs
its own share of the indices, nothing more; flwr-datasets (with ``datasets``, pandas and
pyarrow) would be most of its memory, and the client install does not ship it. This module
repeats, step for step and with the same numpy generators, what ``partition_labels`` asks of
flwr-datasets: ``Dataset.shuffle(seed)`` (``default_rng(seed).permutation``), then
``IidPartitioner`` (contiguous shards), ``DirichletPartitioner`` (``min_partition_size=2``,
self-balancing, ``default_rng(seed)``) or ``NaturalIdPartitioner`` (sorted natural ids).
The results are equal to flwr-datasets' index for index, as tests/common/test_partition_numpy.py
checks against the installed flwr-datasets; a new flwr-datasets release must pass that test.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from common.partition import (
    LabelArray,
    PartitionError,
    PartitionSpec,
    WriterArray,
    check_spec,
)

MIN_PARTITION_SIZE = 2
"""Fewest examples a Dirichlet partition may get (as ``partition_labels`` asks)."""
MAX_RESAMPLES = 10
"""Dirichlet draws retried after the first, as flwr-datasets does, before giving up."""

Indices = npt.NDArray[np.int64]


def split_labels(
    labels: LabelArray, spec: PartitionSpec, *, writers: WriterArray | None = None
) -> list[Indices]:
    """Return, for each partition id, the sorted indices into a pool of ``labels`` it owns.

    Equal to ``common.partition.partition_labels(labels, spec, writers=writers)``.

    Raises:
        PartitionError: the split cannot be made (names the numbers).

    """
    check_spec(len(labels), spec, writers)
    if spec.scheme == "by-writer" and writers is not None:
        return _by_writer(writers)[: spec.num_partitions]
    # The flwr-datasets path shuffles its index table first; positions below are rows of it.
    order = np.random.default_rng(spec.seed).permutation(len(labels))
    if spec.scheme == "iid":
        parts = _contiguous_shards(len(labels), spec.num_partitions)
    else:
        parts = _dirichlet(labels[order], spec)
    return [np.sort(order[p]).astype(np.int64, copy=False) for p in parts]


def _contiguous_shards(n: int, count: int) -> list[Indices]:
    # datasets' Dataset.shard(count, index, contiguous=True).
    div, mod = divmod(n, count)
    starts = [div * i + min(i, mod) for i in range(count)]
    return [np.arange(s, s + div + (1 if i < mod else 0)) for i, s in enumerate(starts)]


def _by_writer(writers: WriterArray) -> list[Indices]:
    # NaturalIdPartitioner numbers the sorted distinct ids (partition i is the i-th writer;
    # writers past the requested count own no partition); sorting a partition's rows undoes
    # the table's shuffle, so the shuffle need not be drawn.
    return [np.flatnonzero(writers == w).astype(np.int64) for w in np.unique(writers)]


def _dirichlet(targets: LabelArray, spec: PartitionSpec) -> list[Indices]:
    # DirichletPartitioner._determine_partition_id_to_indices_if_needed, without the final
    # in-partition shuffle (the caller sorts).
    rng = np.random.default_rng(spec.seed)
    count = spec.num_partitions
    alpha = np.full(count, float(spec.alpha))
    average = len(targets) / count
    classes = sorted(np.unique(targets).tolist())
    for _ in range(MAX_RESAMPLES + 1):
        parts: list[list[int]] = [[] for _ in range(count)]
        for k in classes:
            members = np.nonzero(targets == k)[0]
            proportions = rng.dirichlet(alpha)
            shares = [
                0.0 if len(parts[i]) > average else float(p) for i, p in enumerate(proportions)
            ]
            total = sum(shares)  # left to right, as flwr-datasets sums a dict's values
            cuts = np.cumsum([share / total for share in shares]) * len(members)
            for part, piece in zip(parts, np.split(members, cuts.astype(int)[:-1]), strict=True):
                part.extend(piece.tolist())
        if min(len(p) for p in parts) >= MIN_PARTITION_SIZE:
            return [np.asarray(p, dtype=np.int64) for p in parts]
    raise PartitionError(
        f"dirichlet partitioning gave a client fewer than {MIN_PARTITION_SIZE} examples in "
        f"{MAX_RESAMPLES + 1} draws; raise `dirichlet-alpha` or lower `sim.clients`"
    )
