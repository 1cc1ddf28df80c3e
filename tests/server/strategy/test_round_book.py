"""RoundBook: a reply is the node's its request named; unanswered nodes are no-replies once."""

from __future__ import annotations

from flwr.app import Error, Message, MessageType, RecordDict
from flwr.common.constant import ErrorCode

from server.strategy.round_book import RoundBook
from tests.server.strategy.fakes import ListGrid, reply_from

SUPERLINK = 1


def test_a_reply_the_superlink_writes_is_the_requested_nodes() -> None:
    book = RoundBook()
    requests = [
        Message(content=RecordDict(), message_type=MessageType.TRAIN, dst_node_id=n)
        for n in (40, 41)
    ]
    ListGrid([40, 41]).send_and_receive(requests)
    book.sent(requests)
    stamped = requests[1].metadata.message_id

    written = reply_from(SUPERLINK, error=Error(ErrorCode.NODE_UNAVAILABLE), to=stamped)
    unstamped = reply_from(40)

    assert book.sender_of(written) == 41
    assert book.sender_of(unstamped) == 40


def test_only_sampled_nodes_without_answer_or_verdict_are_no_replies() -> None:
    book = RoundBook()
    book.start(3, [40, 41, 42, 43])
    book.outcome.reject(41, "drop", "told to")

    book.outcome.reject_unanswered([40])

    assert [(r.node, r.reason) for r in book.outcome.rejected] == [
        (41, "drop"),
        (42, "no-reply"),
        (43, "no-reply"),
    ]
