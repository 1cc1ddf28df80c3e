"""Test doubles for the strategy wrappers: a Grid of fixed nodes, a recording inner strategy."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NoReturn

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore.run import Run

from common import protocol

Responder = Callable[[Message], Message | None]


def _unused(*args: object, **kwargs: object) -> NoReturn:
    raise NotImplementedError


class ListGrid(Grid):
    """Connected ``nodes``; ``send_and_receive`` records what is sent, replies via ``respond``.

    ``respond(request)`` returns the reply to a request (``None``: the node never answers).
    """

    def __init__(self, nodes: list[int], respond: Responder | None = None) -> None:
        self.nodes = nodes
        self.respond = respond
        self.sent: list[Message] = []

    @property
    def run(self) -> Run:
        """Unused."""
        raise NotImplementedError

    # The Grid methods the wrappers never call here: any call is a test failure.
    set_run = create_message = push_messages = pull_messages = _unused

    def get_node_ids(self) -> Iterable[int]:
        """Return the connected nodes."""
        return list(self.nodes)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Stamp message ids as a Grid does, record the messages, return the replies."""
        replies = []
        for i, message in enumerate(messages, start=len(self.sent)):
            message.metadata.__dict__["_message_id"] = f"m{i}"  # as InMemoryGrid stamps it
            self.sent.append(message)
            reply = None if self.respond is None else self.respond(message)
            if reply is not None:
                replies.append(reply)
        return replies


class RecordingStrategy(Strategy):
    """Addresses every node the Grid offers, as Flower's FedAvg does; records every call."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.offered: list[int] = []
        self.configured_arrays: ArrayRecord | None = None
        self.aggregated: list[Message] = []

    def summary(self) -> None:
        """Record the call."""
        self.calls.append("summary")

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One message per offered node, all sharing one content, as FedAvg builds them."""
        self.calls.append("configure_train")
        self.configured_arrays = arrays
        self.offered = list(grid.get_node_ids())
        content = RecordDict({protocol.ARRAYS: arrays, protocol.CONFIG: config})
        return [
            Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node)
            for node in reversed(self.offered)
        ]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Record the replies; return an empty aggregate."""
        self.calls.append("aggregate_train")
        self.aggregated = list(replies)
        return ArrayRecord(), MetricRecord()

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Record the call."""
        self.calls.append("configure_evaluate")
        return []

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Record the call."""
        self.calls.append("aggregate_evaluate")
        return MetricRecord({"seen": 1.0})


def reply_from(
    node: int, content: RecordDict | None = None, *, error: Error | None = None, to: str = ""
) -> Message:
    """A reply from ``node`` (to the request with message id ``to``), with content or error."""
    metadata = Metadata(
        run_id=1,
        message_id="",
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id=to,
        group_id="1",
        created_at=0.0,
        ttl=60.0,
        message_type=MessageType.TRAIN,
    )
    if error is not None:
        return Message(error, metadata=metadata)  # type: ignore[call-overload,no-any-return]
    body = content if content is not None else RecordDict()
    return Message(body, metadata=metadata)  # type: ignore[call-overload,no-any-return]
