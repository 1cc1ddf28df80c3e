"""AuditedUpdates: canaries go to planned nodes only; opened updates are scored, then passed on."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from common import protocol
from common.audit import epsilon_lower_bound, guess_counts
from server.audit import WhiteBoxAuditor
from server.audit_black_box import BlackBoxAuditor, slot_count
from server.audit_file import AuditEntry
from server.strategy.audit import AuditedUpdates
from server.strategy.round_book import RoundBook
from tests.server.strategy.fakes import ListGrid, RecordingStrategy, reply_from

SIZE = 400
# A global model far from zero: scoring the model instead of the update would drown the signal.
MODEL = np.random.default_rng(1).normal(scale=3.0, size=SIZE).astype(np.float32)
GLOBAL = ArrayRecord({"w": Array(MODEL)})


def _setup() -> tuple[AuditedUpdates, RecordingStrategy, RoundBook, dict[str, AuditEntry]]:
    inner, book = RecordingStrategy(), RoundBook()
    audits: dict[str, AuditEntry] = {}
    book.node_clients.update({101: "0", 102: "1"})  # node 103 declared nothing yet
    auditor = WhiteBoxAuditor({"w": SIZE}, canaries=200, max_grad_norm=1.0, delta=1e-5)
    return AuditedUpdates(inner, auditor=auditor, book=book, audits=audits), inner, book, audits


def _white_box(strategy: AuditedUpdates) -> WhiteBoxAuditor:
    assert isinstance(strategy.auditor, WhiteBoxAuditor)
    return strategy.auditor


def _reply(node: int, delta: np.ndarray) -> Message:
    arrays = ArrayRecord({"w": Array((MODEL + delta).astype(np.float32))})
    content = RecordDict({protocol.ARRAYS: arrays, protocol.METRICS: MetricRecord({"weight": 1.0})})
    return reply_from(node, content)


def test_only_nodes_with_an_account_get_canaries_each_with_its_own_bits() -> None:
    strategy, _, book, _ = _setup()
    requests = strategy.configure_train(1, GLOBAL, ConfigRecord(), ListGrid([101, 102, 103]))
    records = {
        int(m.metadata.dst_node_id): m.content.config_records.get(protocol.AUDIT) for m in requests
    }
    assert records[103] is None
    for node in (101, 102):
        record = records[node]
        assert record is not None
        spec = _white_box(strategy).canaries_for(str(book.account_of(node)))
        assert record[protocol.AUDIT_BITS_SEED] == spec.bits_seed
        assert record[protocol.AUDIT_DIRECTIONS_SEED] == spec.directions_seed
        assert record[protocol.AUDIT_CANARIES] == 200
    assert records[101][protocol.AUDIT_BITS_SEED] != records[102][protocol.AUDIT_BITS_SEED]  # type: ignore[index]


def test_an_update_carrying_its_included_canaries_is_audited_and_passed_on() -> None:
    strategy, inner, book, audits = _setup()
    strategy.configure_train(1, GLOBAL, ConfigRecord(), ListGrid([101, 102, 103]))
    account = str(book.account_of(101))
    spec = _white_box(strategy).canaries_for(account)
    # An SGD step on the included canaries alone, with a little noise: update = -sum of them.
    signal = spec.layout(SIZE, 1.0).dense(spec.included().astype(np.float32))
    noise = np.random.default_rng(0).normal(scale=0.05, size=SIZE)
    replies = [_reply(101, -signal + noise), _reply(102, noise), _reply(103, noise)]

    strategy.aggregate_train(1, replies)

    assert inner.aggregated == replies
    assert set(audits) == {account, str(book.account_of(102))}
    assert audits[account].correct == audits[account].guesses > 0
    # All right: the bound of the largest guess count, tested at beta / (number of counts).
    best = max(guess_counts(200))
    assert audits[account].guesses == best
    assert audits[account].epsilon_lower_bound == pytest.approx(
        epsilon_lower_bound(200, best, best, delta=1e-5, beta=0.05 / len(guess_counts(200)))
    )
    assert audits[str(book.account_of(102))].epsilon_lower_bound == 0.0


def test_black_box_canaries_are_sized_by_each_nodes_plan_and_updates_are_not_scored() -> None:
    inner, book = RecordingStrategy(), RoundBook()
    audits: dict[str, AuditEntry] = {}
    book.node_clients.update({101: "0", 102: "1"})
    book.planned = {101: (1.0, 0.2, 10)}  # 102 has a label but no plan yet
    auditor = BlackBoxAuditor((SIZE,), 3, low=-1.0, high=1.0, canaries=0, batch_size=32, delta=1e-5)
    strategy = AuditedUpdates(inner, auditor=auditor, book=book, audits=audits)

    requests = strategy.configure_train(1, GLOBAL, ConfigRecord(), ListGrid([101, 102]))
    records = {
        int(m.metadata.dst_node_id): m.content.config_records.get(protocol.AUDIT) for m in requests
    }
    assert records[102] is None
    record = records[101]
    assert record is not None and record[protocol.AUDIT_MODE] == "black-box"
    spec = auditor.canaries_for(str(book.account_of(101)), sample_rate=0.2)
    assert dict(record) == dict(spec.record())
    assert spec.canaries == slot_count(0, sample_rate=0.2, batch_size=32)

    replies = [_reply(101, np.ones(SIZE))]
    strategy.aggregate_train(1, replies)
    assert inner.aggregated == replies
    assert audits == {}  # scored once, on the final model, by the round loop
