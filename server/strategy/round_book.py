"""``RoundBook``: the one record the strategy wrappers share of what happened to each node.

Per round (``RoundOutcome``): who was sampled, who trained (with the DP facts to charge), who
contributed, refused, was rejected (and why) or flagged, the bytes received and the bytes sent
(``bytes_down``: the downlink to the sampled nodes). Across rounds:
which label each node declared, the plan entry each node trains under, which account each node
is charged to (``account_of``) and which nodes have had an update opened. The round loop reads
the outcome after ``aggregate_train`` to charge the ledger and write ``metrics.jsonl``; the
checkpoint keeps the cross-round facts. A rejection's detail is one line of at most
``DETAIL_LIMIT`` characters; a Flower error reason is cut to its exception's type
(``error_summary``): no traceback, path or process id reaches the run directory.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import Message

from common.accounting import HistoryEntry
from server.anomaly import AnomalyScore
from server.ledger import RawFacts
from server.rundir import Rejection

log = logging.getLogger(__name__)

DETAIL_LIMIT = 200
_EXCEPTION = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*(?:Error|Exception|Exit|Interrupt))\b")


def one_line(text: str) -> str:
    """Return ``text`` on one line, at most ``DETAIL_LIMIT`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= DETAIL_LIMIT else flat[: DETAIL_LIMIT - 3] + "..."


def error_summary(reason: str) -> str:
    """Return the exception type a Flower error reason names (its last one), else ``unknown``.

    The reason may hold a whole traceback with paths and process ids; only the type is kept.
    """
    found = _EXCEPTION.findall(reason)
    return found[-1] if found else "unknown"


@dataclass(frozen=True)
class TrainedReport:
    """A node that trained, or may have, this round: the plan entry and what it declared.

    The ledger charges the costliest of ``planned`` and each of ``declared``
    (``PrivacyLedger.charge``); ``flags`` are the account flags this round earned.
    """

    node: int
    label: str
    planned: HistoryEntry
    declared: tuple[RawFacts, ...] = ()
    epsilon: float | None = None
    flags: tuple[str, ...] = ()


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
    limits: dict[int, dict[str, float]] = field(default_factory=dict)
    scores: dict[int, AnomalyScore] = field(default_factory=dict)
    bytes_sealed: int = 0
    bytes_dense: int = 0
    bytes_down: int = 0

    def reject(self, node: int, reason: str, detail: str) -> None:
        """Record that ``node``'s reply will not reach aggregation, and why."""
        detail = one_line(error_summary(detail) if "Traceback" in detail else detail)
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

    ``node_clients`` maps a node id to the label (partition or data label) it first declared;
    ``planned`` maps a node id to the ``(σ, q, steps)`` its plan assigns a round;
    ``trained_before`` holds the nodes whose update has been opened in some round.
    ``keyed_by_node``: accounts are keyed by node id (deployments, where Flower binds the id to
    the node's key), else by label (simulation, where node ids change at every engine start).
    """

    def __init__(self, *, keyed_by_node: bool = True) -> None:
        self.outcome = RoundOutcome()
        self.keyed_by_node = keyed_by_node
        self.node_clients: dict[int, str] = {}
        self.planned: dict[int, HistoryEntry] = {}
        self.trained_before: set[int] = set()
        self._label_owner: dict[str, int] = {}
        self._requests: list[Message] = []

    def account_of(self, node: int) -> str | None:
        """Return the ledger account ``node`` is charged to (``None``: no label declared yet).

        By label, the first node to declare a label owns its account; another node declaring
        it gets an account of its own, ``<label>@node-<id>``, so nothing is ever merged.
        """
        label = self.node_clients.get(node)
        if label is None:
            return None
        if self.keyed_by_node:
            return str(node)
        owner = self._label_owner.setdefault(label, node)
        return label if owner == node else f"{label}@node-{node}"

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
