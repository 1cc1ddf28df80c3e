"""Which nodes train this round: a seeded sample of the nodes whose budget allows another round.

``BudgetAwareSampling`` is the outermost of the server's strategy wrappers (``server.strategy``):
it samples with ``BudgetAwareSampler``, opens the round in the shared ``RoundBook``, and lets the
wrapped strategy build the requests on a view of the Grid that holds only the sampled nodes, so
an inner Flower strategy configured to train every node it sees (``fraction_train`` = 1,
``min_train_nodes`` = 1) addresses exactly them. It adds to each request the noise multiplier
the DP plan assigned that node, and after aggregation rejects sampled nodes that never answered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore.run import Run

from common import protocol
from server.strategy.round_book import RoundBook
from server.strategy.wrapper import StrategyWrapper, add_record

log = logging.getLogger(__name__)


class NotEnoughClients(RuntimeError):  # noqa: N818 (a stop condition, not a bug)
    """Fewer eligible clients remain than a round needs."""


@dataclass(frozen=True, kw_only=True)
class BudgetAwareSampler:
    """Samples ``max(min_clients, floor(fraction * connected))`` eligible nodes, seeded per round.

    ``eligible(node_id)`` says whether a node may train another round: it has a DP plan and its
    account can afford a round (``RoundLoop._eligible``); an unplanned node is never sampled.
    """

    fraction: float
    min_clients: int
    seed: int
    eligible: Callable[[int], bool]
    wait_seconds: float = 300.0

    def connected(self, grid: Grid) -> list[int]:
        """Return connected node ids (sorted), waiting until ``min_clients`` are connected."""
        deadline = time.monotonic() + self.wait_seconds
        while len(nodes := sorted(grid.get_node_ids())) < self.min_clients:
            if time.monotonic() > deadline:
                raise NotEnoughClients(
                    f"only {len(nodes)} clients connected after {self.wait_seconds:.0f} s; "
                    f"`min-train-clients` is {self.min_clients}"
                )
            log.info("waiting for clients: %d of %d connected", len(nodes), self.min_clients)
            time.sleep(1.0)
        return nodes

    def sample(self, server_round: int, nodes: Sequence[int]) -> list[int]:
        """Return the nodes to train in ``server_round`` out of the connected ``nodes``."""
        pool = [n for n in nodes if self.eligible(n)]
        if len(pool) < self.min_clients:
            raise NotEnoughClients(
                f"{len(pool)} of {len(nodes)} clients have a plan and may still train without "
                f"passing their budget; a round needs `min-train-clients` = {self.min_clients}"
            )
        size = max(self.min_clients, int(self.fraction * len(nodes)))
        rng = np.random.default_rng([self.seed, server_round])
        # Choose positions, not ids: node ids are uint64 and would lose bits as numpy floats.
        picks = rng.choice(len(pool), size=min(size, len(pool)), replace=False)
        return sorted(pool[int(i)] for i in picks)


class SampledGrid(Grid):
    """A view of ``grid`` whose connected nodes are only ``nodes``; everything else passes on."""

    def __init__(self, grid: Grid, nodes: Sequence[int]) -> None:
        self._grid = grid
        self._nodes = list(nodes)

    def set_run(self, run: Run) -> None:
        """Set the run on the underlying Grid."""
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        """The underlying Grid's run."""
        return self._grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Create a message on the underlying Grid."""
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        """Return the sampled nodes."""
        return list(self._nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Push on the underlying Grid."""
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Pull from the underlying Grid."""
        return self._grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Send and receive on the underlying Grid."""
        return self._grid.send_and_receive(messages, timeout=timeout)


class BudgetAwareSampling(StrategyWrapper):
    """Sends this round's requests only to the nodes ``sampler`` picks; records who answered."""

    def __init__(self, strategy: Strategy, *, sampler: BudgetAwareSampler, book: RoundBook) -> None:
        super().__init__(strategy)
        self.sampler = sampler
        self.book = book
        self._noise: dict[int, float] = {}

    def assign_noise(self, noise_multipliers: Mapping[int, float]) -> None:
        """Send each node in ``noise_multipliers`` its planned σ from now on (others: none)."""
        self._noise = dict(noise_multipliers)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample, let the wrapped strategy address the sample, add each node's planned σ."""
        nodes = self.sampler.sample(server_round, self.sampler.connected(grid))
        self.book.start(server_round, nodes)
        requests = list(
            self.strategy.configure_train(server_round, arrays, config, SampledGrid(grid, nodes))
        )
        addressed = sorted(int(m.metadata.dst_node_id) for m in requests)
        if addressed != nodes:
            raise RuntimeError(
                f"the wrapped strategy addressed nodes {addressed}, not the sample {nodes}: "
                f"configure it to train every node it is offered (fraction_train=1.0)"
            )
        requests.sort(key=lambda m: int(m.metadata.dst_node_id))
        for message in requests:
            sigma = self._noise.get(int(message.metadata.dst_node_id))
            if sigma is not None:
                add_record(
                    message, protocol.DP, ConfigRecord({protocol.ASSIGNED_NOISE: float(sigma)})
                )
        self.book.sent(requests)
        return requests

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate with the wrapped strategy, then reject sampled nodes that never answered."""
        replies = list(replies)
        answered = [self.book.sender_of(r) for r in replies]
        result = self.strategy.aggregate_train(server_round, replies)
        self.book.outcome.reject_unanswered(answered)
        return result
