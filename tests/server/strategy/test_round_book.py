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


def test_a_rejection_detail_is_one_line_and_a_traceback_only_its_exception_type() -> None:
    book = RoundBook()
    traceback = (
        "client error: Traceback (most recent call last):\n"
        '  File "/home/alice/fedveil/client/trainer.py", line 150, in step\n'
        "(pid=4242) FloatingPointError: loss is nan at /tmp/ray/worker.log"
    )

    book.outcome.reject(7, "drop", traceback)
    book.outcome.reject(8, "no-data", "refused:\n  " + "x" * 500)

    first, second = book.outcome.rejected
    assert first.detail == "FloatingPointError"
    assert "\n" not in second.detail and len(second.detail) == 200


def test_accounts_are_keyed_by_node_or_by_label_and_a_label_is_never_merged() -> None:
    by_node, by_label = RoundBook(keyed_by_node=True), RoundBook(keyed_by_node=False)
    for book in (by_node, by_label):
        book.node_clients.update({51: "3", 52: "3", 53: "4"})

    assert [by_node.account_of(n) for n in (51, 52, 53, 54)] == ["51", "52", "53", None]
    assert [by_label.account_of(n) for n in (51, 52, 53)] == ["3", "3@node-52", "4"]
    assert by_label.account_of(51) == "3"  # the first to declare a label keeps it
