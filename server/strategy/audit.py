"""``AuditedUpdates``: sends each planned client its audit canaries and scores its opened update.

Placed inside ``SealedUpdates`` (``server.strategy.stack``), so it sees only opened, checked
replies (``global + delta`` plaintext), before any screening, clipping or central noise changes
them. Requests to a node with a ledger account (``RoundBook.account_of``: it declared a label)
gain the ``audit`` record (``common.protocol.AUDIT``); each reply from such an account adds
``reply - global`` to its audit (``server.audit.WhiteBoxAuditor``) and refreshes its entry in
``audits``, the ledger's map from account to ``server.audit_file.AuditEntry``. Replies pass on
unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from common import protocol
from server.audit import WhiteBoxAuditor
from server.audit_file import AuditEntry
from server.strategy.round_book import RoundBook
from server.strategy.wrapper import StrategyWrapper, add_record


class AuditedUpdates(StrategyWrapper):
    """White-box audit of every client the run plans, on the updates ``SealedUpdates`` opened."""

    def __init__(
        self,
        strategy: Strategy,
        *,
        auditor: WhiteBoxAuditor,
        book: RoundBook,
        audits: dict[str, AuditEntry],
    ) -> None:
        super().__init__(strategy)
        self.auditor = auditor
        self.book = book
        self.audits = audits
        self._global: ArrayRecord | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global model; give each planned client's request its canaries."""
        self._global = arrays
        requests = list(self.strategy.configure_train(server_round, arrays, config, grid))
        for message in requests:
            client = self.book.account_of(int(message.metadata.dst_node_id))
            if client is None:
                continue
            spec = self.auditor.canaries_for(client)
            record = ConfigRecord(
                {
                    protocol.AUDIT_DIRECTIONS_SEED: spec.directions_seed,
                    protocol.AUDIT_BITS_SEED: spec.bits_seed,
                    protocol.AUDIT_CANARIES: spec.canaries,
                }
            )
            add_record(message, protocol.AUDIT, record)
        return requests

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Score each audited client's opened update, then aggregate as the wrapped strategy."""
        replies = list(replies)
        if self._global is not None:
            base = {name: self._global[name].numpy() for name in self.auditor.sizes}
            for reply in replies:
                client = self.book.account_of(self.book.sender_of(reply))
                if client is None or not self.auditor.is_audited(client):
                    continue
                arrays = reply.content.array_records[protocol.ARRAYS]
                update = {name: arrays[name].numpy() - base[name] for name in base}
                self.auditor.observe(client, update)
                self.audits[client] = self.auditor.entry(client)
        return self.strategy.aggregate_train(server_round, replies)
