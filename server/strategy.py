"""``FedveilStrategy``: wraps any Flower strategy with budget-aware sampling and reply checks.

Ordering contract: replies are checked (status, format, shapes, finite values) *before* the
inner strategy sees them, and the inner strategy only ever receives clean plaintext replies of
the form ``{"arrays": ArrayRecord, "metrics": MetricRecord({"weight": 1.0})}``. So
``FedveilStrategy(FedAvg(...))`` or ``FedveilStrategy(FedMedian(...))`` read as what they do.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from common import protocol
from common.accounting import HistoryEntry
from server.rundir import Rejection
from server.sampling import BudgetAwareSampler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainedReport:
    """DP facts of one client's trained round, as it reported them."""

    node: int
    client_id: str
    entry: HistoryEntry
    epsilon: float


@dataclass
class RoundOutcome:
    """What happened to every reply of one round."""

    sampled: list[int] = field(default_factory=list)
    trained: list[TrainedReport] = field(default_factory=list)
    contributed: list[int] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    bytes_sealed: int = 0
    bytes_dense: int = 0


class ReplyRejected(Exception):  # noqa: N818 (a verdict, carried with its reason category)
    """A reply that must not reach aggregation; ``reason`` is its category."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _metric(metrics: MetricRecord, key: str) -> float:
    value = metrics.get(key)
    if type(value) not in (int, float) or not math.isfinite(float(value)):  # type: ignore[arg-type]
        raise ReplyRejected("malformed", f"metric `{key}` missing or not a finite number")
    return float(value)  # type: ignore[arg-type]


class FedveilStrategy(Strategy):
    """Samples eligible nodes, checks replies, then delegates aggregation to ``inner``."""

    def __init__(
        self,
        inner: Strategy,
        *,
        sampler: BudgetAwareSampler,
        expected_shapes: dict[str, tuple[int, ...]],
    ) -> None:
        self.inner = inner
        self.sampler = sampler
        self.expected_shapes = expected_shapes
        self.node_clients: dict[int, str] = {}
        self.outcome = RoundOutcome()

    def summary(self) -> None:
        """Log the wrapped strategy's summary."""
        log.info("FedveilStrategy wrapping %s", type(self.inner).__name__)
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the global model and the run config to this round's sample."""
        nodes = self.sampler.sample(server_round, self.sampler.connected(grid))
        self.outcome = RoundOutcome(sampled=nodes)
        config[protocol.SERVER_ROUND] = server_round
        return [
            Message(
                content=RecordDict({protocol.ARRAYS: arrays, protocol.CONFIG: config}),
                message_type=MessageType.TRAIN,
                dst_node_id=node,
            )
            for node in nodes
        ]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check each reply, record its fate, and aggregate the clean ones with ``inner``."""
        clean: list[Message] = []
        replies_seen = list(replies)
        for reply in replies_seen:
            node = int(reply.metadata.src_node_id)
            try:
                content = self._check_reply(node, reply)
            except ReplyRejected as rej:
                log.warning(
                    "round %d: rejected node %d: %s (%s)",
                    server_round,
                    node,
                    rej.reason,
                    rej.detail,
                )
                self.outcome.rejected.append(Rejection(node, rej.reason, rej.detail))
                continue
            if content is not None:
                self.outcome.contributed.append(node)
                reply.content = content
                clean.append(reply)
        answered = {int(r.metadata.src_node_id) for r in replies_seen}
        for node in self.outcome.sampled:
            if node not in answered:
                self.outcome.rejected.append(Rejection(node, "no-reply", "no reply before timeout"))
        if not clean:
            return None, None
        return self.inner.aggregate_train(server_round, clean)

    def _check_reply(self, node: int, reply: Message) -> RecordDict | None:
        """Return the clean content of a trained reply, ``None`` for a refusal."""
        if reply.has_error():
            raise ReplyRejected("error", f"client error: {reply.error.reason}")
        content = reply.content
        metrics = content.metric_records.get(protocol.METRICS)
        status = content.config_records.get(protocol.STATUS)
        if metrics is None or status is None:
            raise ReplyRejected("malformed", "reply lacks `metrics` or `status` records")
        client_id = str(int(_metric(metrics, protocol.CLIENT_ID)))
        known = self.node_clients.setdefault(node, client_id)
        if known != client_id:
            raise ReplyRejected("malformed", f"node claims client {client_id}, was {known}")
        if status.get("status") == protocol.STATUS_REFUSED:
            self.outcome.refused.append((node, str(status.get("reason", ""))))
            return None
        if status.get("status") != protocol.STATUS_TRAINED:
            raise ReplyRejected("malformed", "reply status is neither trained nor refused")
        entry = (
            _metric(metrics, protocol.NOISE_MULTIPLIER),
            _metric(metrics, protocol.SAMPLE_RATE),
            int(_metric(metrics, protocol.STEPS)),
        )
        if not (entry[0] > 0 and 0 < entry[1] <= 1 and entry[2] >= 1):
            raise ReplyRejected("malformed", f"DP facts out of range: {entry}")
        # The client has spent privacy on this round whatever happens to its update next.
        self.outcome.trained.append(
            TrainedReport(node, client_id, entry, _metric(metrics, protocol.EPSILON))
        )
        arrays = content.array_records.get(protocol.ARRAYS)
        if arrays is None:
            raise ReplyRejected("malformed", "trained reply carries no update")
        checked = self._check_arrays(arrays)
        self.outcome.bytes_dense += sum(a.nbytes for a in checked.values())
        return RecordDict(
            {
                protocol.ARRAYS: ArrayRecord({k: Array(v) for k, v in checked.items()}),
                protocol.METRICS: MetricRecord({protocol.WEIGHT: 1.0}),
            }
        )

    def _check_arrays(self, arrays: ArrayRecord) -> dict[str, np.ndarray]:
        if set(arrays.keys()) != set(self.expected_shapes):
            raise ReplyRejected("malformed", "update tensor names do not match the model")
        out: dict[str, np.ndarray] = {}
        for name, shape in self.expected_shapes.items():
            try:
                value = arrays[name].numpy()
            except (TypeError, ValueError) as exc:
                raise ReplyRejected("malformed", f"tensor {name} unreadable ({exc})") from None
            if tuple(value.shape) != shape or value.dtype != np.float32:
                raise ReplyRejected("malformed", f"tensor {name} is {value.dtype}{value.shape}")
            if not np.isfinite(value).all():
                raise ReplyRejected("malformed", f"tensor {name} has non-finite values")
            out[name] = value
        return out

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Federated evaluation on private client data is off: evaluation is central."""
        return []

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Federated evaluation is off (see ``configure_evaluate``)."""
        return None
