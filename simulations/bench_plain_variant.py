"""The bench's ``plain`` variant: Flower's FedAvg baseline (``simulations.plain_flower``), timed.

Its own SGD step (``PLAIN_LR``, ``PLAIN_MOMENTUM``), otherwise fedveil's task. ``TimingStrategy``
wraps the FedAvg that ``strategy.start`` drives, the baseline's round observer marks each
round's end, and the ClientApp is ``plain_flower.train`` behind ``traced_train``. Imports the
baseline's stack only, so that the bench can time the variant's imports apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from simulations import plain_flower
from simulations.bench_child import VariantJob, round_row
from simulations.bench_timing import TimingStrategy, traced_train

PLAIN_LR, PLAIN_MOMENTUM = 0.05, 0.9
"""The baseline's own SGD step: DP-SGD's large step (``lr`` 1.0 on a noised mean of clipped
gradients) makes plain SGD diverge on MNIST. Same batches and steps, so the same work per step."""


def _plain_train(msg: Message, context: Context) -> tuple[Message, Mapping[str, float]]:
    return plain_flower.train(msg, context), {}


def run(job: VariantJob) -> list[dict[str, Any]]:
    """Run the baseline with the bench's probes; return its rounds."""
    config, run_path, clock, backend = job.config, job.run_path, job.clock, job.backend
    client_app = ClientApp()
    client_app.train()(traced_train(_plain_train))
    result = plain_flower.run_plain(
        replace(config, lr=PLAIN_LR, momentum=PLAIN_MOMENTUM),
        run_path,
        backend=backend,
        client_app=client_app,
        on_round=lambda record: clock.round_done(record.round),
        wrap_strategy=lambda strategy: TimingStrategy(strategy, clock),
    )
    return [
        round_row(
            r.round,
            r.accuracy,
            r.seconds,
            r.bytes_dense,
            len(r.clients),
            # Every sampled client downloads the dense model it uploads: the same bytes.
            downlink_bytes=r.bytes_dense,
        )
        for r in result.rounds
    ]
