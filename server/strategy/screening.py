"""``ScreenedUpdates``: scores, flags, optionally excludes, then norm-clips opened updates.

It takes plaintext replies (``global + delta`` arrays, as ``SealedUpdates`` hands them on) and
works on the deltas against the global model it saw in ``configure_train``, in this order:

1. Anomaly scores (``server.anomaly``) of the unclipped deltas, against ``reference(global)``
   when a reference is given (FLTrust), else against the consensus of the others; a round of
   fewer than ``MIN_UPDATES`` is not scored. A node is ``flagged`` in a round it took part in
   when that round's scores flag it, or when the direction evidence accumulated over all its
   rounds (``DirectionEvidence``) does.
2. With ``exclude_flagged``, flagged updates are left out of the aggregate.
3. ``norm_bound`` > 0 clips each remaining delta to that L2 norm.

Scoring before clipping keeps a boosted update visible; clipping before the wrapped strategy
keeps any one update's weight in a mean bounded. A round with nothing left aggregates nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from common import protocol
from common.weights import flatten
from server.aggregation import bound_local_weights
from server.anomaly import MIN_UPDATES, DirectionEvidence, flag_outliers, score_updates
from server.strategy.round_book import RoundBook
from server.strategy.wrapper import StrategyWrapper

log = logging.getLogger(__name__)

ReferenceFn = Callable[[ArrayRecord], npt.NDArray[np.float64]]
"""Global arrays -> a trusted flat update direction ``(d,)`` (``server.root_set``)."""


@dataclass(frozen=True)
class Screening:
    """What to do with scored updates (module docstring): exclude flagged ones, clip, refer."""

    norm_bound: float = 0.0
    exclude_flagged: bool = False
    reference: ReferenceFn | None = None


class ScreenedUpdates(StrategyWrapper):
    """Screens opened updates per ``screening``; ``evidence`` carries across rounds."""

    def __init__(
        self,
        strategy: Strategy,
        *,
        screening: Screening,
        book: RoundBook,
        evidence: DirectionEvidence | None = None,
    ) -> None:
        super().__init__(strategy)
        self.screening = screening
        self.book = book
        self.evidence = evidence if evidence is not None else DirectionEvidence()
        self._global: ArrayRecord | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global model deltas are taken against; the wrapped strategy configures."""
        self._global = arrays
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen ``replies`` and aggregate what is kept with the wrapped strategy."""
        kept = self.screen(server_round, list(replies))
        if not kept:
            return None, None
        return self.strategy.aggregate_train(server_round, kept)

    def screen(self, server_round: int, replies: list[Message]) -> list[Message]:
        """Score, flag, optionally exclude, then clip; return the replies to aggregate."""
        if self._global is None or not replies:
            return replies
        outcome = self.book.outcome
        global_weights = {k: v.numpy() for k, v in self._global.items()}
        nodes = [int(m.metadata.src_node_id) for m in replies]
        flagged: set[int] = set()
        if len(replies) >= MIN_UPDATES:
            base = flatten(global_weights)
            deltas = {
                n: flatten(_weights_of(m, global_weights)) - base
                for n, m in zip(nodes, replies, strict=True)
            }
            reference = (
                None if self.screening.reference is None else self.screening.reference(self._global)
            )
            outcome.scores = score_updates(deltas, reference=reference)
            self.evidence.add(outcome.scores)
            if log.isEnabledFor(logging.DEBUG):
                weight = next(iter(outcome.scores.values())).direction_weight
                log.debug(
                    "round %d: direction weight %.2f, z %s",
                    server_round,
                    weight,
                    {n: round(sc.consensus_z, 2) for n, sc in outcome.scores.items()},
                )
            flagged = set(flag_outliers(outcome.scores))
        # Past evidence flags a client even in a round too small to score.
        flagged |= set(self.evidence.flagged(nodes))
        outcome.flagged = sorted(flagged)
        if flagged:
            log.warning("round %d: flagged nodes %s", server_round, outcome.flagged)
        if self.screening.exclude_flagged:
            replies = [m for n, m in zip(nodes, replies, strict=True) if n not in flagged]
            outcome.contributed = [n for n in outcome.contributed if n not in flagged]
        if self.screening.norm_bound > 0:
            for m in replies:
                bounded = bound_local_weights(
                    _weights_of(m, global_weights), global_weights, self.screening.norm_bound
                )
                m.content[protocol.ARRAYS] = ArrayRecord({k: Array(v) for k, v in bounded.items()})
        return replies


def _weights_of(message: Message, names: Iterable[str]) -> dict[str, npt.NDArray[np.float32]]:
    record = message.content.array_records[protocol.ARRAYS]
    return {k: record[k].numpy() for k in names}
