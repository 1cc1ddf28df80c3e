"""The bench's timing probes, composed from public pieces: a strategy wrapper and a reply record.

* ``TimingStrategy`` wraps a server strategy (fedveil's stack through ``build_server_app``'s
  ``wrap_strategy``; the baseline's FedAvg directly) and marks in a ``RoundClock`` when each
  round's ``configure_train`` and ``aggregate_train`` start and end; the run's round observer
  marks the round's end. Between the two calls the grid sends the requests and waits for the
  replies; fedveil's ``aggregate_train`` opens, screens and aggregates them.
* ``traced_train`` wraps a ClientApp train handler and adds the call's timings to its reply in
  the ``TRACE_RECORD`` ConfigRecord. ``TimingStrategy`` takes that record out of every reply
  before the strategy it wraps sees it: in band, so it also works on a remote Ray cluster.

Install ``TimingStrategy`` outermost, so that no other strategy sees a trace record.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from common import protocol
from server.strategy.wrapper import StrategyWrapper

TRACE_RECORD = "fedveil-bench-trace"
TRACE_IDS = ("round", "node", "pid", "ray_node")
"""Trace fields that identify a call; every other field is seconds."""

SERVER_PHASES = ("configure", "send_and_receive", "aggregate", "after", "round_total")
"""Per-round server seconds: ``configure_train``; the grid's round trip; ``aggregate_train``;
from its end to the round observer (evaluation, records, ledger, checkpoint); all of these."""

TrainHandler = Callable[[Message, Context], tuple[Message, Mapping[str, float]]]
"""A train handler that also returns the seconds of its own steps."""


class RoundClock:
    """Timestamps per round from the server's probes, and the client traces they collect."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.marks: dict[int, dict[str, float]] = {}
        self.traces: list[dict[str, Any]] = []
        self._built: float | None = None
        self.plan_seconds = 0.0

    def mark(self, server_round: int, event: str) -> None:
        """Note that ``event`` happens now in ``server_round``."""
        self.marks.setdefault(server_round, {})[event] = self.clock()

    def stack_built(self) -> None:
        """Note that the server's strategy stack was built (fedveil plans right after)."""
        self._built = self.clock()

    def round_done(self, server_round: int) -> None:
        """Note that ``server_round`` ended (called by the run's round observer)."""
        self.mark(server_round, "end")

    def configure_started(self, server_round: int) -> None:
        """Mark the start of ``configure_train``; the first one ends the planning time."""
        if self._built is not None and not self.marks:
            self.plan_seconds = self.clock() - self._built
        self.mark(server_round, "configure_start")

    def collect(self, replies: Iterable[Message]) -> list[Message]:
        """Take the trace record out of each of ``replies`` and keep its fields."""
        kept = list(replies)
        for reply in kept:
            if reply.has_error() or TRACE_RECORD not in reply.content.config_records:
                continue
            record = reply.content.config_records[TRACE_RECORD]
            del reply.content[TRACE_RECORD]
            self.traces.append({**dict(record), "node": int(reply.metadata.src_node_id)})
        return kept

    def server_seconds(self) -> dict[int, dict[str, float]]:
        """Return each fully marked round's seconds per phase (``SERVER_PHASES``)."""
        out: dict[int, dict[str, float]] = {}
        for server_round, m in sorted(self.marks.items()):
            needed = ("configure_start", "configure_end", "aggregate_start", "aggregate_end")
            if not all(k in m for k in (*needed, "end")):
                continue
            out[server_round] = {
                "configure": m["configure_end"] - m["configure_start"],
                "send_and_receive": m["aggregate_start"] - m["configure_end"],
                "aggregate": m["aggregate_end"] - m["aggregate_start"],
                "after": m["end"] - m["aggregate_end"],
                "round_total": m["end"] - m["configure_start"],
            }
        return out


class TimingStrategy(StrategyWrapper):
    """Times ``configure_train`` and ``aggregate_train`` and strips the clients' traces."""

    def __init__(self, strategy: Strategy, clock: RoundClock) -> None:
        super().__init__(strategy)
        self.clock = clock

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Return the wrapped strategy's requests (the same objects), timed."""
        self.clock.configure_started(server_round)
        # Materialized so that the time covers building them, not only a generator's creation.
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self.clock.mark(server_round, "configure_end")
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Strip the traces from ``replies``, then return the wrapped aggregate, timed."""
        self.clock.mark(server_round, "aggregate_start")
        result = self.strategy.aggregate_train(server_round, self.clock.collect(replies))
        self.clock.mark(server_round, "aggregate_end")
        return result

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Strip any traces from ``replies``, then return the wrapped aggregate."""
        return self.strategy.aggregate_evaluate(server_round, self.clock.collect(replies))


def server_round_of(msg: Message) -> int:
    """Return the request's ``server-round`` (0 when it has none)."""
    value = msg.content.config_records[protocol.CONFIG].get(protocol.SERVER_ROUND, 0)
    return value if type(value) is int else 0


_ray_node: list[str] = []


def ray_node() -> str:
    """Return the short id of the Ray node this process runs on ("" outside Ray)."""
    if not _ray_node:
        import ray

        # Asking an uninitialized Ray for its context would start a local Ray instance.
        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
        _ray_node.append(node[:12])
    return _ray_node[0]


def traced_train(handler: TrainHandler) -> Callable[[Message, Context], Message]:
    """Return a train handler that adds ``handler``'s timings to its reply (``TRACE_RECORD``).

    The trace holds the call's wall (``total``) and CPU (``cpu``) seconds, the seconds of each
    step ``handler`` reports, the round, the process id and the Ray node.
    """

    def train(msg: Message, context: Context) -> Message:
        t0, c0 = time.perf_counter(), time.process_time()
        reply, steps = handler(msg, context)
        total, cpu = time.perf_counter() - t0, time.process_time() - c0
        if not reply.has_error():
            reply.content[TRACE_RECORD] = ConfigRecord(
                {
                    "round": server_round_of(msg),
                    "pid": os.getpid(),
                    "ray_node": ray_node(),
                    "total": total,
                    "cpu": cpu,
                    **steps,
                }
            )
        return reply

    return train
