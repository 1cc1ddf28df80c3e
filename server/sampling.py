"""Which nodes train this round: a seeded sample of the nodes whose budget allows another round."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
from flwr.serverapp import Grid

log = logging.getLogger(__name__)


class NotEnoughClients(RuntimeError):  # noqa: N818 (a stop condition, not a bug)
    """Fewer eligible clients remain than a round needs."""


class BudgetAwareSampler:
    """Samples ``max(min_clients, floor(fraction * connected))`` eligible nodes, seeded per round.

    ``eligible(node_id)`` says whether a node may train another round (its budget allows it);
    nodes never seen before are eligible, since their first round is checked by the client.
    """

    def __init__(
        self,
        *,
        fraction: float,
        min_clients: int,
        seed: int,
        eligible: Callable[[int], bool],
        wait_seconds: float = 300.0,
    ) -> None:
        self.fraction = fraction
        self.min_clients = min_clients
        self.seed = seed
        self.eligible = eligible
        self.wait_seconds = wait_seconds

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
                f"{len(pool)} of {len(nodes)} clients may still train without passing their "
                f"budget; a round needs `min-train-clients` = {self.min_clients}"
            )
        size = max(self.min_clients, int(self.fraction * len(nodes)))
        rng = np.random.default_rng([self.seed, server_round])
        # Choose positions, not ids: node ids are uint64 and would lose bits as numpy floats.
        picks = rng.choice(len(pool), size=min(size, len(pool)), replace=False)
        return sorted(pool[int(i)] for i in picks)
