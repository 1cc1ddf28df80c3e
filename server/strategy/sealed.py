"""``SealedUpdates``: sends the aggregator's public key, opens and checks every sealed reply.

Requests gain a ``seal`` record with the aggregator's public key. Each reply is checked in
this order: an error reply is rejected (``no-reply`` when the SuperLink wrote it for a node
that never answered, else ``error``, its detail cut to the exception type); the ``metrics`` and
``status`` records must be there and the node must declare the label it declared before
(``malformed``); a refusal for lack of usable data or for an unusable limit in its node config
is rejected (``no-data``, ``node-config``), any other refusal is recorded, neither aggregates;
the DP facts in the clear must be in range; an ``already-trained`` reply aggregates nothing; the
sealed update must open for this run, round and node (``server.opening``; the envelope's
reason, e.g. ``tamper``, ``replay``, ``misroute``), its sealed DP facts must equal the clear
ones (``tamper``) and the node's plan: the σ the server assigned, the q and steps the node
reported when planned (``dp-facts``).

Charging never under-counts: every reply of a sampled node other than a refusal, an unanswered
request or an error raised before the ClientApp ran is charged (``RoundBook.outcome.trained``)
at the costliest of its plan and every set of facts it declared, rejected or not. No reply can
stop the round: an unexpected failure while checking one is a ``malformed`` rejection.

The wrapped strategy receives only opened updates, as plaintext replies
``{"arrays": ArrayRecord(global + delta), "metrics": MetricRecord({"weight": 1.0})}``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

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
from common.accounting import HistoryEntry
from common.envelope import UpdateRejected
from server.ledger import DP_FACTS, ERROR_AFTER_TRAINING, RawFacts
from server.opening import UpdateOpener
from server.planning import node_limits
from server.strategy.round_book import RoundBook, TrainedReport, error_summary, one_line
from server.strategy.wrapper import StrategyWrapper, add_record

log = logging.getLogger(__name__)

# Error replies the SuperLink itself writes when a node never answers: it stopped heartbeating
# (NODE_UNAVAILABLE) or its reply expired. They come from the SuperLink's node id, not the node's.
_UNANSWERED = (ErrorCode.NODE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE)
# Errors raised before the ClientApp ran: it cannot have trained. Any other error may come after
# training (e.g. a loss that blew up), so it is charged.
_NOT_RUN = (
    ErrorCode.LOAD_CLIENT_APP_EXCEPTION,
    ErrorCode.INVALID_FAB,
    ErrorCode.MESSAGE_UNAVAILABLE,
)
# Labels are integers a float64 holds exactly.
_MAX_LABEL = 2**53
# Relative tolerance between declared and planned σ and q (both travel as float64).
PLAN_TOLERANCE = 1e-9


class ReplyRejected(Exception):  # noqa: N818 (a verdict, carried with its reason category)
    """A reply that must not reach aggregation; ``reason`` is its category."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class _Declared:
    """What one reply declared, gathered while it is checked, for the charge."""

    facts: list[RawFacts] = field(default_factory=list)
    epsilon: float | None = None
    flags: list[str] = field(default_factory=list)
    spent: bool = True  # False: the reply is a refusal, which spends nothing


def _number(metrics: MetricRecord, key: str) -> float:
    """Return a metric as a float (NaN and infinities included); refuse what is not a number."""
    value = metrics.get(key)
    if type(value) not in (int, float):
        raise ReplyRejected("malformed", f"metric `{key}` missing or not a number")
    return float(value)  # type: ignore[arg-type]


def _label(metrics: MetricRecord) -> str:
    value = _number(metrics, protocol.CLIENT_ID)
    if not (math.isfinite(value) and value.is_integer() and 0 <= value < _MAX_LABEL):
        raise ReplyRejected("malformed", "metric `client-id` is not an integer in [0, 2^53)")
    return str(int(value))


def _in_range(facts: RawFacts, epsilon: float) -> bool:
    sigma, rate, steps = facts
    return (
        all(math.isfinite(x) for x in (sigma, rate, steps, epsilon))
        and sigma > 0
        and 0 < rate <= 1
        and steps >= 1
        and steps.is_integer()
        and epsilon >= 0
    )


def matches_plan(facts: RawFacts, planned: HistoryEntry) -> bool:
    """Return whether declared ``(σ, q, steps)`` equal the plan's (σ and q within tolerance)."""
    return (
        math.isclose(facts[0], planned[0], rel_tol=PLAN_TOLERANCE)
        and math.isclose(facts[1], planned[1], rel_tol=PLAN_TOLERANCE)
        and facts[2] == planned[2]
    )


def _fmt(facts: RawFacts | HistoryEntry) -> str:
    return f"σ={facts[0]:.6g} q={facts[1]:.6g} steps={facts[2]:.6g}"


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
        """Open and check each reply, record its fate and charge, aggregate the opened ones."""
        outcome = self.book.outcome
        opened: list[Message] = []
        for reply in replies:
            node = self.book.sender_of(reply)
            declared = _Declared()
            try:
                content = self._check_reply(node, reply, declared)
            except ReplyRejected as rej:
                outcome.reject(node, rej.reason, rej.detail)
                content = None
            except Exception as exc:  # a peer's bytes must never stop the round
                log.warning("round %d: checking node %d's reply failed", server_round, node)
                outcome.reject(
                    node, "malformed", f"reply could not be checked ({type(exc).__name__})"
                )
                content = None
            if declared.spent:
                self._charge(node, declared)
            if content is not None:
                outcome.contributed.append(node)
                reply.content = content
                opened.append(reply)
        return self.strategy.aggregate_train(server_round, opened)

    def _charge(self, node: int, declared: _Declared) -> None:
        """Record ``node``'s round for the ledger: its plan and all it declared.

        A node without a plan or a label was never asked to train (the sampler only samples
        planned nodes), so there is nothing the server could charge it from.
        """
        planned = self.book.planned.get(node)
        label = self.book.node_clients.get(node)
        if planned is None or label is None:
            log.warning("node %d replied without a plan: nothing to charge it from", node)
            return
        self.book.outcome.trained.append(
            TrainedReport(
                node,
                label,
                planned,
                tuple(declared.facts),
                declared.epsilon,
                tuple(declared.flags),
            )
        )

    def _check_reply(self, node: int, reply: Message, declared: _Declared) -> RecordDict | None:
        """Return the opened content of a trained reply, ``None`` for a refusal.

        Fills ``declared`` with what the reply declared, for the charge; sets ``spent`` to False
        for a reply that cannot have spent privacy (a refusal, an unanswered request).
        """
        outcome = self.book.outcome
        if reply.has_error():
            code = reply.error.code
            if code in _UNANSWERED:
                declared.spent = False
                raise ReplyRejected("no-reply", "no reply before timeout")
            if code in _NOT_RUN:
                declared.spent = False
            else:
                declared.flags.append(ERROR_AFTER_TRAINING)
            summary = error_summary(str(reply.error.reason))
            raise ReplyRejected("error", f"client app failed (Flower error {code}: {summary})")
        content = reply.content
        metrics = content.metric_records.get(protocol.METRICS)
        status = content.config_records.get(protocol.STATUS)
        if metrics is None or status is None:
            raise ReplyRejected("malformed", "reply lacks `metrics` or `status` records")
        label = _label(metrics)
        known = self.book.node_clients.setdefault(node, label)
        if known != label:
            raise ReplyRejected("malformed", f"node claims client {label}, was {known}")
        limits = node_limits(metrics)
        if limits:
            outcome.limits[node] = limits
        if status.get("status") == protocol.STATUS_REFUSED:
            declared.spent = False
            cause = status.get(protocol.CAUSE)
            reason = one_line(str(status.get("reason", "")))
            if cause in (protocol.CAUSE_NO_DATA, protocol.CAUSE_NODE_CONFIG):
                # Nothing spent and no budget reached: the node stays eligible for later rounds.
                raise ReplyRejected(str(cause), reason)
            outcome.refused.append((node, reason))
            return None
        if status.get("status") not in (protocol.STATUS_TRAINED, protocol.STATUS_ALREADY_TRAINED):
            raise ReplyRejected(
                "malformed", f"unknown reply status {one_line(str(status.get('status')))!r}"
            )
        claimed = (
            _number(metrics, protocol.NOISE_MULTIPLIER),
            _number(metrics, protocol.SAMPLE_RATE),
            _number(metrics, protocol.STEPS),
        )
        claimed_eps = _number(metrics, protocol.EPSILON)
        declared.facts.append(claimed)
        declared.epsilon = claimed_eps
        if not _in_range(claimed, claimed_eps):
            raise ReplyRejected(
                "malformed", f"DP facts out of range: {_fmt(claimed)} ε={claimed_eps:.6g}"
            )
        if status.get("status") == protocol.STATUS_ALREADY_TRAINED:
            # Trained before the server restarted: charge the round (once), aggregate nothing.
            self._check_plan(node, claimed, declared)
            outcome.already_trained.append(node)
            return None
        update = content.config_records.get(protocol.UPDATE)
        sealed = None if update is None else update.get(protocol.SEALED)
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
        sealed_facts = (facts.noise_multiplier, facts.sample_rate, float(facts.steps))
        declared.facts.append(sealed_facts)
        declared.epsilon = facts.epsilon
        if sealed_facts != claimed or facts.epsilon != claimed_eps:
            raise ReplyRejected("tamper", "DP facts in the clear differ from the sealed ones")
        self._check_plan(node, sealed_facts, declared)
        self.book.trained_before.add(node)
        return RecordDict(
            {
                protocol.ARRAYS: ArrayRecord({k: Array(v) for k, v in weights.items()}),
                protocol.METRICS: MetricRecord({protocol.WEIGHT: 1.0}),
            }
        )

    def _check_plan(self, node: int, facts: RawFacts, declared: _Declared) -> None:
        """Refuse DP facts that are not the node's plan (``dp-facts``); flag the account."""
        planned = self.book.planned.get(node)
        if planned is None:
            declared.flags.append(DP_FACTS)
            raise ReplyRejected(DP_FACTS, "no plan for this node: it was never asked to train")
        if not matches_plan(facts, planned):
            declared.flags.append(DP_FACTS)
            raise ReplyRejected(
                DP_FACTS, f"declared {_fmt(facts)} differ from the plan {_fmt(planned)}"
            )
