"""The bench's ``fedveil`` variant: the full stack on Flower's simulation engine, timed.

The ServerApp is ``server.app.build_server_app``'s, with the checks and the simulated adversary
``fedveil simulate`` applies for the config; the bench's probes go in through public hooks
only: ``wrap_strategy`` puts ``TimingStrategy`` outermost (its first ``configure_train`` ends
the planning time that starts when the stack is built), the ``on_round`` observer marks each
round's end, and the ClientApp is ``simulations.bench_client``'s. Rounds are read back from
the run directory (``server.rundir.read_rounds``); each row carries the uplink (sealed) and
downlink (``downlink_bytes``: signed model changes to the sampled clients) bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.serverapp.strategy import Strategy
from flwr.simulation import run_simulation

from server.app import build_server_app
from server.ledger import PrivacyLedger
from server.round_loop import RoundLoopResult, RunHooks
from server.rundir import RoundRecord, read_rounds
from server.strategy.round_book import RoundBook
from server.strategy.stack import StrategyWrap
from simulations import simulate
from simulations.bench_child import VariantJob, round_row
from simulations.bench_client import bench_client_app
from simulations.bench_timing import RoundClock, TimingStrategy


def timing_wrap(clock: RoundClock, inner: StrategyWrap | None) -> StrategyWrap:
    """Return the ``wrap_strategy`` that puts ``TimingStrategy`` around ``inner``'s wrapper."""

    def wrap(strategy: Strategy, book: RoundBook) -> Strategy:
        clock.stack_built()
        return TimingStrategy(strategy if inner is None else inner(strategy, book), clock)

    return wrap


def run(job: VariantJob) -> list[dict[str, Any]]:
    """Run fedveil with the bench's probes; return its rounds."""
    config, run_path, clock, backend = job.config, job.run_path, job.clock, job.backend
    simulate.check_inputs(config)
    simulate.check_aggregation(config)
    simulate.check_plan(config)
    if not config.client_state_dir:
        config = config.replace(client_state_dir=str(run_path / "client-state"))

    def on_round(record: RoundRecord, ledger: PrivacyLedger) -> None:
        clock.round_done(record.round)

    chosen: Mapping[str, Any] = backend or simulate.backend_config(config, verbose=False)
    results: list[RoundLoopResult] = []
    server_app = build_server_app(
        config,
        run_path,
        hooks=RunHooks(
            on_round=on_round, wrap_strategy=timing_wrap(clock, simulate.fault_injection(config))
        ),
        results=results,
    )
    run_simulation(
        server_app=server_app,
        client_app=bench_client_app(config),
        num_supernodes=config.sim_clients,
        backend_config=dict(chosen),
        verbose_logging=False,
    )
    if not results:
        raise RuntimeError("the fedveil variant ended without finishing its server loop")
    return [
        round_row(
            r.round,
            r.accuracy,
            r.seconds,
            r.bytes_sealed,
            len(r.clients),
            dense_bytes=r.bytes_dense,
            downlink_bytes=r.bytes_down,
        )
        for r in read_rounds(run_path)
    ]
