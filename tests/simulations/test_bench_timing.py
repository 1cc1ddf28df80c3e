"""The bench's timing probes: the strategy wrapper passes everything on, times and strips."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict

from common import protocol
from simulations.bench_timing import (
    SERVER_PHASES,
    TRACE_RECORD,
    RoundClock,
    TimingStrategy,
    traced_train,
)
from tests.conftest import client_context
from tests.server.strategy.fakes import ListGrid, RecordingStrategy, reply_from


def _ticks() -> Iterator[float]:
    t = 0.0
    while True:
        t += 1.0
        yield t


def _traced(node: int, server_round: int) -> Message:
    content = RecordDict(
        {
            protocol.METRICS: MetricRecord({"x": 1.0}),
            TRACE_RECORD: ConfigRecord({"round": server_round, "total": 0.5, "seal": 0.1}),
        }
    )
    return reply_from(node, content)


def test_every_strategy_call_reaches_the_wrapped_strategy(task_identity: None) -> None:
    inner = RecordingStrategy()
    strategy = TimingStrategy(inner, RoundClock())
    grid = ListGrid([3, 4])

    strategy.summary()
    requests = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), grid))
    aggregate = strategy.aggregate_train(1, [_traced(3, 1)])
    evaluate_requests = strategy.configure_evaluate(1, ArrayRecord(), ConfigRecord(), grid)
    evaluated = strategy.aggregate_evaluate(1, [_traced(4, 1)])

    assert inner.calls == [
        "summary",
        "configure_train",
        "aggregate_train",
        "configure_evaluate",
        "aggregate_evaluate",
    ]
    assert [int(m.metadata.dst_node_id) for m in requests] == [4, 3]
    assert aggregate == (ArrayRecord(), MetricRecord())
    assert list(evaluate_requests) == []
    assert evaluated == MetricRecord({"seen": 1.0})
    assert [t["node"] for t in strategy.clock.traces] == [3, 4]


def test_requests_are_the_wrapped_strategys_own_objects(task_identity: None) -> None:
    class Fixed(RecordingStrategy):
        def configure_train(self, *args: object, **kwargs: object) -> list[Message]:
            self.made = list(super().configure_train(*args, **kwargs))  # type: ignore[arg-type]
            return self.made

    inner = Fixed()

    requests = TimingStrategy(inner, RoundClock()).configure_train(
        1, ArrayRecord(), ConfigRecord(), ListGrid([5])
    )

    assert all(a is b for a, b in zip(requests, inner.made, strict=True))


def test_traces_are_taken_out_before_the_wrapped_strategy_sees_the_replies(
    task_identity: None,
) -> None:
    inner = RecordingStrategy()
    clock = RoundClock()
    failed = reply_from(9, error=Error(code=0, reason="gone"))

    TimingStrategy(inner, clock).aggregate_train(2, [_traced(3, 2), _traced(4, 2), failed])

    assert len(inner.aggregated) == 3
    assert not any(
        TRACE_RECORD in r.content.config_records for r in inner.aggregated if not r.has_error()
    )
    assert sorted(t["node"] for t in clock.traces) == [3, 4]
    assert all(t["seal"] == 0.1 and t["round"] == 2 for t in clock.traces)


def test_round_phases_come_from_the_marks_of_the_wrapper_and_the_observer(
    task_identity: None,
) -> None:
    ticks = _ticks()
    clock = RoundClock(clock=lambda: next(ticks))
    strategy = TimingStrategy(RecordingStrategy(), clock)

    clock.stack_built()  # t=1
    strategy.configure_train(1, ArrayRecord(), ConfigRecord(), ListGrid([1]))  # t=2 (plan), 3, 4
    strategy.aggregate_train(1, [])  # t=5, 6
    clock.round_done(1)  # t=7
    strategy.configure_train(2, ArrayRecord(), ConfigRecord(), ListGrid([1]))  # 8, 9
    strategy.aggregate_train(2, [])  # 10, 11

    assert clock.plan_seconds == 1.0
    seconds = clock.server_seconds()
    assert list(seconds) == [1]  # round 2 never ended
    assert seconds[1] == {
        "configure": 1.0,
        "send_and_receive": 1.0,
        "aggregate": 1.0,
        "after": 1.0,
        "round_total": 4.0,
    }
    assert tuple(seconds[1]) == SERVER_PHASES


def test_without_a_built_stack_there_is_no_planning_time(task_identity: None) -> None:
    clock = RoundClock()

    TimingStrategy(RecordingStrategy(), clock).configure_train(
        1, ArrayRecord(), ConfigRecord(), ListGrid([1])
    )

    assert clock.plan_seconds == 0.0


def _request(server_round: int) -> Message:
    content = RecordDict({protocol.CONFIG: ConfigRecord({protocol.SERVER_ROUND: server_round})})
    return Message(content=content, dst_node_id=7, message_type="train")


def test_traced_train_adds_the_call_and_its_steps_to_the_reply(task_identity: None) -> None:
    def handler(msg: Message, context: Context) -> tuple[Message, dict[str, float]]:
        reply = Message(RecordDict({"metrics": MetricRecord({"a": 1.0})}), reply_to=msg)
        return reply, {"train": 0.25}

    reply = traced_train(handler)(_request(3), client_context(0, 2))

    trace = reply.content.config_records[TRACE_RECORD]
    assert trace["round"] == 3 and trace["train"] == 0.25
    assert isinstance(trace["total"], float) and trace["total"] >= 0
    assert isinstance(trace["cpu"], float) and trace["cpu"] >= 0
    assert "metrics" in reply.content.metric_records


def test_traced_train_leaves_an_error_reply_alone(task_identity: None) -> None:
    def handler(msg: Message, context: Context) -> tuple[Message, dict[str, float]]:
        return Message(Error(code=0, reason="x"), reply_to=msg), {}

    reply = traced_train(handler)(_request(1), client_context(0, 2))

    assert reply.has_error()


@pytest.mark.parametrize("value", ["2", 2.0, True])
def test_a_request_without_an_int_round_is_traced_as_round_0(
    task_identity: None, value: object
) -> None:
    msg = _request(1)
    msg.content.config_records[protocol.CONFIG][protocol.SERVER_ROUND] = value  # type: ignore[assignment]

    def handler(msg: Message, context: Context) -> tuple[Message, dict[str, float]]:
        return Message(RecordDict(), reply_to=msg), {}

    reply = traced_train(handler)(msg, client_context(0, 2))

    assert reply.content.config_records[TRACE_RECORD]["round"] == 0
