"""``FedveilStrategy``: wraps any Flower strategy with budget-aware sampling and reply checks.

Ordering contract: replies are checked (status, format, shapes, finite values) *before* the
inner strategy sees them, and the inner strategy only ever receives clean plaintext replies of
the form ``{"arrays": ArrayRecord, "metrics": MetricRecord({"weight": 1.0})}``. So
``FedveilStrategy(FedAvg(...))`` or ``FedveilStrategy(FedMedian(...))`` read as what they do.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from common import protocol
from common.accounting import HistoryEntry
from common.envelope import UpdateRejected
from common.weights import flatten
from server.aggregation import bound_local_weights
from server.anomaly import (
    MIN_UPDATES,
    AnomalyScore,
    DirectionEvidence,
    flag_outliers,
    score_updates,
)
from server.opening import UpdateOpener
from server.rundir import Rejection
from server.sampling import BudgetAwareSampler
from simulations.adversary.fault_plan import plan_faults

log = logging.getLogger(__name__)

# Error replies the SuperLink itself writes when a node never answers: it stopped heartbeating
# (NODE_UNAVAILABLE) or its reply expired. They come from the SuperLink's node id, not the node's.
_UNANSWERED = (ErrorCode.NODE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE)


@dataclass(frozen=True)
class TrainedReport:
    """DP facts of one client's trained round, as it reported them."""

    node: int
    client_id: str
    entry: HistoryEntry
    epsilon: float


@dataclass(frozen=True)
class FaultRates:
    """Per-round fractions of sampled clients told to send a faulty update (demonstrations)."""

    tamper: float = 0.0
    replay: float = 0.0
    misroute: float = 0.0
    drop: float = 0.0


ReferenceFn = Callable[[ArrayRecord], npt.NDArray[np.float64]]
"""Global arrays -> a trusted flat update direction ``(d,)`` (``server.root_set``)."""


@dataclass(frozen=True)
class Screening:
    """What the server does to opened updates before aggregation, in this order.

    1. Anomaly scores (``server.anomaly``) of the unclipped deltas ``local - global``, against
       ``reference(global)`` when a reference is given (FLTrust), else against the consensus of
       the others. A node is ``flagged`` in a round it took part in when that round's scores
       flag it, or when its direction evidence accumulated over all its rounds
       (``DirectionEvidence``) does.
    2. With ``exclude_flagged``, flagged updates are left out of the aggregate.
    3. ``norm_bound`` > 0 clips each remaining delta to that L2 norm.
    """

    norm_bound: float = 0.0
    exclude_flagged: bool = False
    reference: ReferenceFn | None = None


@dataclass
class RoundOutcome:
    """What happened to every reply of one round."""

    sampled: list[int] = field(default_factory=list)
    trained: list[TrainedReport] = field(default_factory=list)
    contributed: list[int] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    injected: dict[int, str] = field(default_factory=dict)
    already_trained: list[int] = field(default_factory=list)
    flagged: list[int] = field(default_factory=list)
    scores: dict[int, AnomalyScore] = field(default_factory=dict)
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
        opener: UpdateOpener,
        faults: FaultRates | None = None,
        screening: Screening | None = None,
    ) -> None:
        self.inner = inner
        self.sampler = sampler
        self.expected_shapes = expected_shapes
        self.opener = opener
        self.faults = faults or FaultRates()
        self.screening = screening or Screening()
        self.node_clients: dict[int, str] = {}
        self.trained_before: set[int] = set()
        self.outcome = RoundOutcome()
        self.assigned_sigma: dict[int, float] = {}
        self.evidence = DirectionEvidence()
        self._global: ArrayRecord | None = None
        self._round = 0
        self._sent: list[Message] = []

    def summary(self) -> None:
        """Log the wrapped strategy's summary."""
        log.info("FedveilStrategy wrapping %s", type(self.inner).__name__)
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the global model and the run config to this round's sample."""
        nodes = self.sampler.sample(server_round, self.sampler.connected(grid))
        plan = plan_faults(
            nodes,
            tamper=self.faults.tamper,
            replay=self.faults.replay,
            misroute=self.faults.misroute,
            drop=self.faults.drop,
            trained_before=self.trained_before,
            seed=self.sampler.seed,
            server_round=server_round,
        )
        self.outcome = RoundOutcome(sampled=nodes, injected=dict(plan.kinds))
        self._global, self._round = arrays, server_round
        config[protocol.SERVER_ROUND] = server_round
        messages = []
        for node in nodes:
            seal = ConfigRecord({protocol.PUBLIC_KEY: self.opener.public_key})
            if node in plan.kinds:
                seal[protocol.FAULT] = plan.kinds[node]
                seal[protocol.FAULT_TARGET] = plan.targets.get(node, 0)
            content = RecordDict(
                {protocol.ARRAYS: arrays, protocol.CONFIG: config, protocol.SEAL: seal}
            )
            if node in self.assigned_sigma:
                content[protocol.DP] = ConfigRecord(
                    {protocol.ASSIGNED_NOISE: float(self.assigned_sigma[node])}
                )
            messages.append(
                Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node)
            )
        self._sent = messages  # the Grid stamps their message ids when it sends them
        return messages

    def sender_of(self, reply: Message) -> int:
        """Return the node a reply answers for: the request's destination, else its sender.

        A reply the SuperLink writes for a node that vanished carries the SuperLink's own node
        id as its sender; the request it answers names the node.
        """
        for request in self._sent:
            if request.metadata.message_id == reply.metadata.reply_to_message_id:
                return int(request.metadata.dst_node_id)
        return int(reply.metadata.src_node_id)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check each reply, record its fate, and aggregate the clean ones with ``inner``."""
        clean: list[Message] = []
        replies_seen = list(replies)
        for reply in replies_seen:
            node = self.sender_of(reply)
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
        answered = {self.sender_of(r) for r in replies_seen}
        for node in self.outcome.sampled:
            if node not in answered:
                self.outcome.rejected.append(Rejection(node, "no-reply", "no reply before timeout"))
        clean = self._screen(server_round, clean)
        if not clean:
            return None, None
        return self.inner.aggregate_train(server_round, clean)

    def _screen(self, server_round: int, clean: list[Message]) -> list[Message]:
        """Score, flag, optionally exclude, then clip (``Screening``'s order)."""
        if self._global is None or not clean:
            return clean
        global_weights = {k: self._global[k].numpy() for k in self.expected_shapes}
        nodes = [int(m.metadata.src_node_id) for m in clean]
        flagged: set[int] = set()
        if len(clean) >= MIN_UPDATES:
            base = flatten(global_weights)
            deltas = {
                n: flatten(self._weights_of(m)) - base for n, m in zip(nodes, clean, strict=True)
            }
            reference = (
                None if self.screening.reference is None else self.screening.reference(self._global)
            )
            self.outcome.scores = score_updates(deltas, reference=reference)
            self.evidence.add(self.outcome.scores)
            if log.isEnabledFor(logging.DEBUG):
                weight = next(iter(self.outcome.scores.values())).direction_weight
                log.debug(
                    "round %d: direction weight %.2f, z %s",
                    server_round,
                    weight,
                    {n: round(sc.consensus_z, 2) for n, sc in self.outcome.scores.items()},
                )
            flagged = set(flag_outliers(self.outcome.scores))
        # Past evidence flags a client even in a round too small to score.
        flagged |= set(self.evidence.flagged(nodes))
        self.outcome.flagged = sorted(flagged)
        if flagged:
            log.warning("round %d: flagged nodes %s", server_round, self.outcome.flagged)
        if self.screening.exclude_flagged:
            clean = [m for n, m in zip(nodes, clean, strict=True) if n not in flagged]
            self.outcome.contributed = [n for n in self.outcome.contributed if n not in flagged]
        if self.screening.norm_bound > 0:
            for m in clean:
                bounded = bound_local_weights(
                    self._weights_of(m), global_weights, self.screening.norm_bound
                )
                m.content[protocol.ARRAYS] = ArrayRecord({k: Array(v) for k, v in bounded.items()})
        return clean

    def _weights_of(self, message: Message) -> dict[str, npt.NDArray[np.float32]]:
        record = message.content.array_records[protocol.ARRAYS]
        return {k: record[k].numpy() for k in self.expected_shapes}

    def _check_reply(self, node: int, reply: Message) -> RecordDict | None:
        """Return the clean content of a trained reply, ``None`` for a refusal."""
        if reply.has_error():
            # A node told to vanish (fault injection) surfaces as an error reply in simulation.
            if self.outcome.injected.get(node) == "drop":
                raise ReplyRejected("drop", f"client error: {reply.error.reason}")
            if reply.error.code in _UNANSWERED:
                raise ReplyRejected("no-reply", str(reply.error.reason))
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
        if status.get("status") not in (protocol.STATUS_TRAINED, protocol.STATUS_ALREADY_TRAINED):
            raise ReplyRejected("malformed", f"unknown reply status {status.get('status')!r}")
        claimed = (
            _metric(metrics, protocol.NOISE_MULTIPLIER),
            _metric(metrics, protocol.SAMPLE_RATE),
            int(_metric(metrics, protocol.STEPS)),
        )
        claimed_eps = _metric(metrics, protocol.EPSILON)
        if not (claimed[0] > 0 and 0 < claimed[1] <= 1 and claimed[2] >= 1 and claimed_eps >= 0):
            raise ReplyRejected("malformed", f"DP facts out of range: {claimed}")
        if status.get("status") == protocol.STATUS_ALREADY_TRAINED:
            # Trained before the server restarted: charge the round (once), aggregate nothing.
            self.outcome.trained.append(TrainedReport(node, client_id, claimed, claimed_eps))
            self.outcome.already_trained.append(node)
            return None
        update = content.config_records.get(protocol.UPDATE)
        sealed = None if update is None else update.get(protocol.SEALED)
        try:
            if not isinstance(sealed, bytes):
                raise ReplyRejected("malformed", "trained reply carries no sealed update")
            self.outcome.bytes_sealed += len(sealed)
            self.outcome.bytes_dense += self.opener.dense_nbytes
            if self._global is None:
                raise ReplyRejected("malformed", "reply to no request of this round")
            try:
                facts, weights = self.opener.open(
                    sealed, node=node, server_round=self._round, global_arrays=self._global
                )
            except UpdateRejected as exc:
                raise ReplyRejected(exc.reason, exc.detail) from None
        except ReplyRejected:
            # The client says it trained, so it spent privacy even though its update is
            # lost: charge the facts it claims in the clear (never under-count).
            self.outcome.trained.append(TrainedReport(node, client_id, claimed, claimed_eps))
            raise
        sealed_entry = (facts.noise_multiplier, facts.sample_rate, facts.steps)
        self.outcome.trained.append(TrainedReport(node, client_id, sealed_entry, facts.epsilon))
        if sealed_entry != claimed or facts.epsilon != claimed_eps:
            raise ReplyRejected("tamper", "DP facts in the clear differ from the sealed ones")
        self.trained_before.add(node)
        return RecordDict(
            {
                protocol.ARRAYS: ArrayRecord({k: Array(v) for k, v in weights.items()}),
                protocol.METRICS: MetricRecord({protocol.WEIGHT: 1.0}),
            }
        )

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
