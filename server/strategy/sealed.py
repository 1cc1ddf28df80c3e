"""``SealedUpdates``: sends the aggregator's public key, opens and checks every sealed reply.

Requests gain a ``seal`` record with the aggregator's public key. Each reply is checked in
this order: an error reply is rejected (``no-reply`` when the SuperLink wrote it for a node
that never answered, else ``error``); the ``metrics`` and ``status`` records must be there
and the node must claim the client it claimed before (``malformed``); a refusal for lack of
usable data is rejected as ``no-data``, any other refusal is recorded, neither aggregates; the
DP facts in the clear must be in range; an ``already-trained`` reply is charged and
aggregates nothing; the sealed update must open for this run, round and node
(``server.opening``; the envelope's reason, e.g. ``tamper``, ``replay``, ``misroute``) and
its sealed DP facts must equal the clear ones (``tamper``). A client that says it trained is
charged even when its update is rejected (never under-count).

The wrapped strategy receives only opened updates, as plaintext replies
``{"arrays": ArrayRecord(global + delta), "metrics": MetricRecord({"weight": 1.0})}``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from common import protocol
from common.envelope import UpdateRejected
from server.opening import UpdateOpener
from server.strategy.round_book import RoundBook, TrainedReport
from server.strategy.wrapper import StrategyWrapper, add_record

# Error replies the SuperLink itself writes when a node never answers: it stopped heartbeating
# (NODE_UNAVAILABLE) or its reply expired. They come from the SuperLink's node id, not the node's.
_UNANSWERED = (ErrorCode.NODE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE)


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


class SealedUpdates(StrategyWrapper):
    """Opens sealed replies with ``opener``; the wrapped strategy sees plaintext arrays only."""

    def __init__(self, strategy: Strategy, *, opener: UpdateOpener, book: RoundBook) -> None:
        super().__init__(strategy)
        self.opener = opener
        self.book = book
        self._global: ArrayRecord | None = None
        self._round = 0

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global model updates are opened against; add the public key."""
        self._global, self._round = arrays, server_round
        requests = list(self.strategy.configure_train(server_round, arrays, config, grid))
        for message in requests:
            add_record(
                message, protocol.SEAL, ConfigRecord({protocol.PUBLIC_KEY: self.opener.public_key})
            )
        return requests

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Open and check each reply, record its fate, aggregate the opened ones."""
        outcome = self.book.outcome
        opened: list[Message] = []
        for reply in replies:
            node = self.book.sender_of(reply)
            try:
                content = self._check_reply(node, reply)
            except ReplyRejected as rej:
                outcome.reject(node, rej.reason, rej.detail)
                continue
            if content is not None:
                outcome.contributed.append(node)
                reply.content = content
                opened.append(reply)
        return self.strategy.aggregate_train(server_round, opened)

    def _check_reply(self, node: int, reply: Message) -> RecordDict | None:
        """Return the opened content of a trained reply, ``None`` for a refusal."""
        outcome = self.book.outcome
        if reply.has_error():
            if reply.error.code in _UNANSWERED:
                raise ReplyRejected("no-reply", str(reply.error.reason))
            raise ReplyRejected("error", f"client error: {reply.error.reason}")
        content = reply.content
        metrics = content.metric_records.get(protocol.METRICS)
        status = content.config_records.get(protocol.STATUS)
        if metrics is None or status is None:
            raise ReplyRejected("malformed", "reply lacks `metrics` or `status` records")
        client_id = str(int(_metric(metrics, protocol.CLIENT_ID)))
        known = self.book.node_clients.setdefault(node, client_id)
        if known != client_id:
            raise ReplyRejected("malformed", f"node claims client {client_id}, was {known}")
        if status.get("status") == protocol.STATUS_REFUSED:
            if status.get(protocol.CAUSE) == protocol.CAUSE_NO_DATA:
                # Nothing spent and no budget reached: the node stays eligible for later rounds.
                raise ReplyRejected(protocol.CAUSE_NO_DATA, str(status.get("reason", "")))
            outcome.refused.append((node, str(status.get("reason", ""))))
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
            outcome.trained.append(TrainedReport(node, client_id, claimed, claimed_eps))
            outcome.already_trained.append(node)
            return None
        update = content.config_records.get(protocol.UPDATE)
        sealed = None if update is None else update.get(protocol.SEALED)
        try:
            if not isinstance(sealed, bytes):
                raise ReplyRejected("malformed", "trained reply carries no sealed update")
            outcome.bytes_sealed += len(sealed)
            outcome.bytes_dense += self.opener.dense_nbytes
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
            outcome.trained.append(TrainedReport(node, client_id, claimed, claimed_eps))
            raise
        sealed_entry = (facts.noise_multiplier, facts.sample_rate, facts.steps)
        outcome.trained.append(TrainedReport(node, client_id, sealed_entry, facts.epsilon))
        if sealed_entry != claimed or facts.epsilon != claimed_eps:
            raise ReplyRejected("tamper", "DP facts in the clear differ from the sealed ones")
        self.book.trained_before.add(node)
        return RecordDict(
            {
                protocol.ARRAYS: ArrayRecord({k: Array(v) for k, v in weights.items()}),
                protocol.METRICS: MetricRecord({protocol.WEIGHT: 1.0}),
            }
        )
