"""Coordinate-wise median and trimmed mean over the clients that sent each coordinate.

A top-k update decoded to dense is exactly zero where it was not sent (the codec's grid has no
zero level), so ``delta != 0`` is the mask. Per coordinate ``j`` with ``m_j`` senders among
``n`` replies, the rule runs over the senders' values plus ``max(0, 2f + 1 - m_j)`` zeros, so
that at least ``2f + 1`` values enter and ``f`` attackers, even if all of them sent ``j``, are
a minority: the result lies between zero and the honest values of ``j``. It is then scaled by
``m_j / n``, the scale FedAvg of the decoded updates gives a mean of the senders (error
feedback relies on it). With every coordinate sent and ``n > 2f`` the rules equal Flower's
``FedMedian`` and a trimmed mean cutting ``max(floor(beta n), f)`` values from each side.
Caveat: a sent value below half an ulp of its global weight vanishes in ``global + delta`` and
counts as not sent.

``SentCoordinatewise`` is the Flower strategy: it keeps the global arrays its
``configure_train`` receives and applies ``rule`` to each tensor's ``(n, size)`` deltas.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from typing import Final

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

COLUMNS_PER_CHUNK: Final = 1 << 15
"""Coordinates aggregated at once: the working memory is ``n + 2f + 1`` float64 rows of this."""

Deltas = npt.NDArray[np.float32]
"""``(n, d)`` decoded deltas, zero where a client did not send."""


def _padded_sorted(
    deltas: Deltas, assumed_malicious: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Return the entering values, sorted down axis 0; their count; the senders' count.

    The values array is ``(n + 2f + 1, d)``; rows a coordinate does not use are NaN, sorted last.
    """
    n, d = deltas.shape
    pad = 2 * assumed_malicious + 1
    sent = deltas != 0
    senders = sent.sum(axis=0, dtype=np.int64)
    zeros = np.maximum(pad - senders, 0)
    values = np.full((n + pad, d), np.nan)
    values[:n] = np.where(sent, deltas, np.nan)
    values[n:] = np.where(np.arange(pad)[:, None] < zeros[None, :], 0.0, np.nan)
    values.sort(axis=0)
    return values, senders + zeros, senders


def _check(deltas: Deltas, assumed_malicious: int) -> None:
    if deltas.ndim != 2 or deltas.shape[0] < 1:
        raise ValueError(f"`deltas` must be (n >= 1, d), got shape {deltas.shape}")
    if type(assumed_malicious) is not int or assumed_malicious < 0:
        raise ValueError(f"`assumed_malicious` must be an int >= 0, got {assumed_malicious!r}")


def sent_median(deltas: Deltas, *, assumed_malicious: int) -> npt.NDArray[np.float64]:
    """Return the per-coordinate median of the senders' values (module docstring), ``(d,)``.

    Raises:
        ValueError: ``deltas`` is not ``(n >= 1, d)`` or ``assumed_malicious`` not an int >= 0.

    """
    _check(deltas, assumed_malicious)
    n = deltas.shape[0]
    out = np.empty(deltas.shape[1], dtype=np.float64)
    for start in range(0, deltas.shape[1], COLUMNS_PER_CHUNK):
        values, count, senders = _padded_sorted(
            deltas[:, start : start + COLUMNS_PER_CHUNK], assumed_malicious
        )
        low = np.take_along_axis(values, ((count - 1) // 2)[None, :], axis=0)[0]
        high = np.take_along_axis(values, (count // 2)[None, :], axis=0)[0]
        out[start : start + COLUMNS_PER_CHUNK] = (low + high) / 2 * (senders / n)
    return out


def sent_trimmed_mean(
    deltas: Deltas, *, assumed_malicious: int, beta: float
) -> npt.NDArray[np.float64]:
    """Return the per-coordinate trimmed mean of the senders' values, ``(d,)``.

    Of the ``c_j`` values entering coordinate ``j`` (module docstring), ``max(floor(beta c_j),
    f)`` are cut from each side, so every kept value lies between zero and honest ones.

    Raises:
        ValueError: As :func:`sent_median`, or ``beta`` outside ``[0, 0.5)``.

    """
    _check(deltas, assumed_malicious)
    if not (isinstance(beta, int | float) and 0.0 <= beta < 0.5):
        raise ValueError(f"`beta` must be in [0, 0.5), got {beta!r}")
    n = deltas.shape[0]
    out = np.empty(deltas.shape[1], dtype=np.float64)
    for start in range(0, deltas.shape[1], COLUMNS_PER_CHUNK):
        values, count, senders = _padded_sorted(
            deltas[:, start : start + COLUMNS_PER_CHUNK], assumed_malicious
        )
        cut = np.maximum(np.floor(beta * count).astype(np.int64), assumed_malicious)
        rows = np.arange(values.shape[0])[:, None]
        kept = (rows >= cut) & (rows < count - cut)
        # A masked sum, not differences of a cumulative sum: an attacker's huge value cut
        # from the low end must not cancel the kept values' precision.
        total = np.where(kept, values, 0.0).sum(axis=0)
        out[start : start + COLUMNS_PER_CHUNK] = total / (count - 2 * cut) * (senders / n)
    return out


class SentCoordinatewise(FedAvg, abc.ABC):
    """A Flower strategy aggregating each tensor's deltas with :meth:`rule`.

    Replies are ``global + delta`` arrays; the global arrays are the ones the last
    ``configure_train`` received (every wrapper passes them down), so the strategy must be
    configured each round before it aggregates.
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._global: ArrayRecord | None = None

    @abc.abstractmethod
    def rule(self, deltas: Deltas) -> npt.NDArray[np.float64]:
        """Return the aggregate ``(d,)`` of ``(n, d)`` deltas, zero where not sent."""

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Keep ``arrays``, the global model deltas are taken against; configure as FedAvg."""
        self._global = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Return ``global + rule(deltas)`` per tensor, and FedAvg's metrics.

        Raises:
            RuntimeError: No ``configure_train`` came before (no global model to subtract).

        """
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        if self._global is None:
            raise RuntimeError("aggregate_train before configure_train: no global model")
        key = next(iter(valid[0].content.array_records))
        arrays = ArrayRecord()
        for name, array in self._global.items():
            base = array.numpy()
            local = np.stack([m.content.array_records[key][name].numpy() for m in valid])
            deltas = (local - base).reshape(len(valid), -1).astype(np.float32, copy=False)
            change = self.rule(deltas).reshape(base.shape)
            arrays[name] = Array((base + change).astype(base.dtype))
        metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)
        return arrays, metrics
