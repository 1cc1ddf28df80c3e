"""Charge one round's outcome to the privacy ledger: trained nodes, refusals, node limits.

After ``aggregate_train``, the ``RoundBook``'s outcome names every node that trained or may
have (``TrainedReport``: its plan entry and all it declared), every refusal and the limits
nodes reported. ``charge_round`` turns them into ledger entries under each node's account
(``RoundBook.account_of``). It raises nothing for a peer's numbers (``PrivacyLedger.charge``
bounds and closes instead), so no reply can stop the round here.
"""

from __future__ import annotations

import logging

from server.ledger import PrivacyLedger
from server.strategy.round_book import RoundBook

log = logging.getLogger(__name__)


def charge_round(ledger: PrivacyLedger, book: RoundBook, server_round: int) -> None:
    """Charge ``book``'s current outcome for ``server_round`` to ``ledger``."""
    outcome = book.outcome
    for node, limits in outcome.limits.items():
        key = book.account_of(node)
        if key is not None:
            ledger.note_node(key, node=node, label=book.node_clients[node], limits=limits)
    for report in outcome.trained:
        key = book.account_of(report.node)
        if key is None:
            continue
        ledger.note_node(key, node=report.node, label=report.label)
        acct = ledger.charge(
            key,
            server_round,
            report.planned,
            report.epsilon,
            declared=report.declared,
            flags=report.flags,
        )
        if acct.mismatch:
            log.warning(
                "client %s reported ε %s, ledger computes %.4f", key, report.epsilon, acct.epsilon
            )
    for node, _reason in outcome.refused:
        key = book.account_of(node)
        if key is not None:
            ledger.note_refusal(key)
    shared = ledger.shared_labels()
    if shared:
        log.warning("accounts %s declare a label another account declares", sorted(shared))
