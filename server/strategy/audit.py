"""``AuditedUpdates``: sends each planned client its audit canaries and scores its opened update.

Placed inside ``SealedUpdates`` (``server.strategy.stack``), so it sees only opened, checked
replies (``global + delta`` plaintext), before any screening, clipping or central noise changes
them. Requests to a planned node with a ledger account (``RoundBook.account_of``: it declared a
label) gain the ``audit`` record (``common.protocol.AUDIT``). White-box: each reply from such an
account adds ``reply - global`` to its audit (``server.audit.WhiteBoxAuditor``) and refreshes
its entry in ``audits``, the ledger's map from account to ``server.audit_file.AuditEntry``.
Black-box (``server.audit_black_box.BlackBoxAuditor``): canaries are sized by the node's
planned ``q``, and the round loop scores them once, on the final model. Replies pass on
unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from common import protocol
from common.audit_canaries import CanarySpec
from common.audit_inputs import InputCanarySpec
from server.audit import Auditor, WhiteBoxAuditor
from server.audit_black_box import BlackBoxAuditor
from server.audit_file import AuditEntry
from server.strategy.round_book import RoundBook
from server.strategy.wrapper import StrategyWrapper, add_record


class AuditedUpdates(StrategyWrapper):
    """White-box audit of every client the run plans, on the updates ``SealedUpdates`` opened."""

    def __init__(
        self,
        strategy: Strategy,
        *,
        auditor: Auditor,
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
            node = int(message.metadata.dst_node_id)
            client = self.book.account_of(node)
            if client is None:
                continue
            if isinstance(self.auditor, BlackBoxAuditor):
                planned = self.book.planned.get(node)
                if planned is None:
                    continue  # no q to size its canaries by; an unplanned node's reply is refused
                spec: CanarySpec | InputCanarySpec = self.auditor.canaries_for(
                    client, sample_rate=planned[1]
                )
            else:
                spec = self.auditor.canaries_for(client)
            add_record(message, protocol.AUDIT, spec.record())
        return requests

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Score each audited client's opened update, then aggregate as the wrapped strategy."""
        replies = list(replies)
        if self._global is not None and isinstance(self.auditor, WhiteBoxAuditor):
            base = {name: self._global[name].numpy() for name in self.auditor.sizes}
            for reply in replies:
                client = self.book.account_of(self.book.sender_of(reply))
                if client is None or not self.auditor.is_audited(client):
                    continue
                arrays = reply.content.array_records[protocol.ARRAYS]
                update = {name: arrays[name].numpy() - base[name] for name in base}
                self.auditor.observe(client, update, server_round)
                self.audits[client] = self.auditor.entry(client)
        return self.strategy.aggregate_train(server_round, replies)
