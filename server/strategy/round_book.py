"""``RoundBook``: the one record the strategy wrappers share of what happened to each node.

Per round (``RoundOutcome``): who was sampled, who trained (with the DP facts to charge), who
contributed, refused, was rejected (and why) or flagged, and the bytes received. Across rounds:
which client each node speaks for and which nodes have had an update opened. The round loop
reads the outcome after ``aggregate_train`` to charge the ledger and write ``metrics.jsonl``;
the checkpoint keeps the cross-round facts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import Message

from common.accounting import HistoryEntry
from server.anomaly import AnomalyScore
from server.rundir import Rejection

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
    """What happened to every reply of one round.

    ``injected`` names the faults a simulation told nodes to commit (empty in a deployment).
    """

    server_round: int = 0
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

    def reject(self, node: int, reason: str, detail: str) -> None:
        """Record that ``node``'s reply will not reach aggregation, and why."""
        log.warning("round %d: rejected node %d: %s (%s)", self.server_round, node, reason, detail)
        self.rejected.append(Rejection(node, reason, detail))

    def reject_unanswered(self, answered: Iterable[int]) -> None:
        """Reject as ``no-reply`` every sampled node neither answering nor already rejected."""
        settled = set(answered) | {r.node for r in self.rejected}
        for node in self.sampled:
            if node not in settled:
                self.rejected.append(Rejection(node, "no-reply", "no reply before timeout"))


class RoundBook:
    """The current round's ``outcome``, the requests it sent, and the node facts kept across rounds.

    ``node_clients`` maps a node id to the client id it first claimed; ``trained_before``
    holds the nodes whose update has been opened in some round.
    """

    def __init__(self) -> None:
        self.outcome = RoundOutcome()
        self.node_clients: dict[int, str] = {}
        self.trained_before: set[int] = set()
        self._requests: list[Message] = []

    def start(self, server_round: int, sampled: list[int]) -> None:
        """Open a fresh outcome for ``server_round`` with its ``sampled`` nodes."""
        self.outcome = RoundOutcome(server_round=server_round, sampled=list(sampled))
        self._requests = []

    def sent(self, requests: list[Message]) -> None:
        """Remember the round's requests; the Grid stamps their message ids when it sends them."""
        self._requests = requests

    def sender_of(self, reply: Message) -> int:
        """Return the node a reply answers for: the request's destination, else its sender.

        A reply the SuperLink writes for a node that vanished carries the SuperLink's own node
        id as its sender; the request it answers names the node.
        """
        answered = reply.metadata.reply_to_message_id
        for request in self._requests:
            if answered and request.metadata.message_id == answered:
                return int(request.metadata.dst_node_id)
        return int(reply.metadata.src_node_id)
