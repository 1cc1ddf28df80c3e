"""``FaultInjection``: the simulation's server-side half of fault injection, a strategy wrapper.

It wraps the server's whole stack (``server.strategy``; installed by ``fedveil simulate`` when a
``faults.*`` rate is above 0, never by a deployment). Each round it plans faults among the nodes
the stack addressed with ``plan_faults`` (seeded by the run's seed and the round: the same
config picks the same nodes), adds the ``FAULT_RECORD`` instruction to those nodes' requests
and names them in the round's ``RoundBook`` (``faults`` in ``metrics.jsonl``). A dropped node's
error reply is rejected here with reason ``drop``; tampered, replayed and misrouted updates go
on to ``SealedUpdates``, which rejects them with the envelope's reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from common.config import FedveilConfig
from server.strategy.round_book import RoundBook
from server.strategy.wrapper import StrategyWrapper, add_record
from simulations.adversary.fault_plan import plan_faults
from simulations.adversary.faults import FAULT_RECORD, Fault


@dataclass(frozen=True)
class FaultRates:
    """Per-round fractions of sampled clients told to send a faulty update, or to drop out."""

    tamper: float = 0.0
    replay: float = 0.0
    misroute: float = 0.0
    drop: float = 0.0

    @classmethod
    def from_config(cls, config: FedveilConfig) -> FaultRates:
        """Return the ``faults.*`` rates of ``config``."""
        return cls(
            tamper=config.faults_tamper,
            replay=config.faults_replay,
            misroute=config.faults_misroute,
            drop=config.faults_drop,
        )

    def any(self) -> bool:
        """Whether any fault is asked for."""
        return max(self.tamper, self.replay, self.misroute, self.drop) > 0


class FaultInjection(StrategyWrapper):
    """Instructs seeded, per-round choices of nodes to misbehave; rejects their drop-outs."""

    def __init__(
        self, strategy: Strategy, book: RoundBook, *, rates: FaultRates, seed: int
    ) -> None:
        super().__init__(strategy)
        self.book = book
        self.rates = rates
        self.seed = seed

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Plan this round's faults among the addressed nodes and instruct those nodes."""
        requests = list(self.strategy.configure_train(server_round, arrays, config, grid))
        plan = plan_faults(
            sorted(int(m.metadata.dst_node_id) for m in requests),
            tamper=self.rates.tamper,
            replay=self.rates.replay,
            misroute=self.rates.misroute,
            drop=self.rates.drop,
            trained_before=self.book.trained_before,
            seed=self.seed,
            server_round=server_round,
        )
        for message in requests:
            node = int(message.metadata.dst_node_id)
            if node in plan.kinds:
                fault = Fault(plan.kinds[node], plan.targets.get(node, 0))
                add_record(message, FAULT_RECORD, fault.to_record())
        self.book.outcome.injected = dict(plan.kinds)
        return requests

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Reject the error replies of nodes told to drop (``drop``); pass the rest on."""
        injected = self.book.outcome.injected
        kept = []
        for reply in replies:
            node = self.book.sender_of(reply)
            if reply.has_error() and injected.get(node) == "drop":
                self.book.outcome.reject(node, "drop", f"client error: {reply.error.reason}")
            else:
                kept.append(reply)
        return self.strategy.aggregate_train(server_round, kept)
