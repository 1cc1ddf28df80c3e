"""``StrategyWrapper``: a Flower strategy that hands every call to the strategy it wraps.

Each of fedveil's wrappers subclasses it and overrides only the calls its one job changes, as
Flower's DP wrappers do, so any wrapper stack still passes ``configure_train``,
``aggregate_train``, ``configure_evaluate``, ``aggregate_evaluate`` and ``summary`` down to the
aggregating strategy at its core. Wrappers decorate the request messages they are handed in
place (``add_record``) and never replace them: the Grid stamps message ids on those very
objects, and ``RoundBook.sender_of`` matches replies to them.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

RecordType = ArrayRecord | ConfigRecord | MetricRecord


class StrategyWrapper(Strategy):
    """Passes every ``Strategy`` call through to ``strategy``."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy

    def summary(self) -> None:
        """Log the wrapped strategy's summary."""
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Return the wrapped strategy's train requests."""
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Return the wrapped strategy's aggregate of ``replies``."""
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Return the wrapped strategy's evaluate requests."""
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Return the wrapped strategy's aggregate of evaluate ``replies``."""
        return self.strategy.aggregate_evaluate(server_round, replies)


def add_record(message: Message, name: str, record: RecordType) -> None:
    """Give ``message`` the record ``name``, leaving any content it shares untouched.

    A Flower strategy sends one ``RecordDict`` to every node; a per-node record goes into a
    copy of it, so no other message gains it.
    """
    content = RecordDict(dict(message.content.items()))
    content[name] = record
    message.content = content
