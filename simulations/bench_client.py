"""The bench's fedveil ClientApp: ``client.training_round``'s public steps, each one timed.

``timed_training_round`` runs the steps in ``run_training_round``'s order (read the request,
load the node's data, check the budget, train, record the round, seal the reply) and returns
the reply's content with each step's seconds (``STEPS``); a round the budget declines ends
after ``budget``. ``bench_client_app(config)`` registers it behind ``traced_train`` (the
seconds travel in the reply's trace record) with the simulated adversary's mods ``config``
asks for, and ``client.app``'s planning ``query`` handler unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from client import training_round as steps
from client.app import query
from client.local_data import LocalData
from common.config import FedveilConfig
from simulations.adversary.client import adversary_mods
from simulations.bench_timing import traced_train

STEPS = ("read", "load", "budget", "train", "record", "seal")


class StepTimer:
    """Adds up wall seconds per step label."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def time(self, label: str) -> Iterator[None]:
        """Time the block and add its seconds to ``label``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - t0


def timed_training_round(msg: Message, context: Context) -> tuple[RecordDict, dict[str, float]]:
    """Run one train request's steps; return the reply's content and each step's seconds."""
    timer = StepTimer()
    with timer.time("read"):
        request = steps.read_request(msg, context)
    with timer.time("load"):
        data = steps.load_data(request, context)
    if not isinstance(data, LocalData):
        return data, timer.seconds
    with timer.time("budget"):
        budget = steps.check_budget(request, data, context)
    if not isinstance(budget, steps.RoundBudget):
        return budget, timer.seconds
    with timer.time("train"):
        local = steps.train_locally(request, data, budget)
    with timer.time("record"):
        steps.record_round(request, budget)
    with timer.time("seal"):
        content = steps.seal_reply(request, budget, local, context)
    return content, timer.seconds


def _timed_train(msg: Message, context: Context) -> tuple[Message, Mapping[str, float]]:
    content, seconds = timed_training_round(msg, context)
    return Message(content=content, reply_to=msg), seconds


def bench_client_app(config: FedveilConfig) -> ClientApp:
    """Return fedveil's ClientApp with timed train steps and the mods ``config`` asks for."""
    app = ClientApp(mods=adversary_mods(config))
    app.train()(traced_train(_timed_train))
    app.query()(query)
    return app
