"""``fedveil simulate``: run the app on Flower's simulation engine with a live display.

The ServerApp is ``server.app``'s; the ClientApp is ``simulated_client_app(config)``. Asked for
faults (any ``faults.*`` rate above 0), the server's strategy is wrapped in ``FaultInjection``,
which instructs the clients' fault mod; nothing else differs from a deployment's apps.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from flwr.serverapp.strategy import Strategy
from rich.console import Console

from common.accounting import sample_rate, steps_per_round
from common.config import ConfigError, FedveilConfig
from common.device import resolve_device
from common.partition import PartitionSpec, task_partitions, task_pool
from common.task import check_examples, task_of
from report.console import RoundProgress, privacy_table, summary_table
from server.aggregation import build_aggregator
from server.app import build_server_app
from server.planning import check_budget_allows_a_round, expected_rounds, plan_client
from server.root_set import server_examples
from server.round_loop import RoundLoopResult, RunHooks
from server.rundir import RunDirectory, RunDirError, new_run_id, read_rounds
from server.strategy.round_book import RoundBook
from server.strategy.stack import StrategyWrap, sample_size, sent_fraction
from simulations.adversary.strategy import FaultInjection, FaultRates
from simulations.engine_noise import quiet_engine

log = logging.getLogger(__name__)


def _partitions(config: FedveilConfig) -> tuple[npt.NDArray[np.int64], ...]:
    spec = PartitionSpec(
        config.partitioning, config.sim_clients, config.seed, config.dirichlet_alpha
    )
    return task_partitions(task_of(config), spec)


def check_inputs(config: FedveilConfig) -> None:
    """Load the task, its data and the splits once, so bad input fails before anything starts.

    Raises:
        TaskError: the task cannot be loaded (its module, its model) or its data do not fit it.
        ConfigError: ``device`` or ``sim.gpus-per-client`` asks for a GPU this machine lacks.

    """
    check_devices(config)
    task = task_of(config)
    server_examples(
        task,
        config.robust_root_examples,
        config.seed,
        lr=config.lr,
        max_grad_norm=config.dp_max_grad_norm,
    )
    check_examples(
        task_pool(task),
        num_classes=task.num_classes,
        input_shape=task.input_shape,
        source="the task's pool",
    )
    _partitions(config)


def check_devices(config: FedveilConfig) -> None:
    """Refuse a ``device`` or a GPU share this machine cannot give, before Ray starts.

    Ray would wait forever for GPUs that do not exist, so ``sim.gpus-per-client`` > 0 needs one.
    """
    resolve_device(config.device)
    if config.sim_gpus_per_client > 0 and not torch.cuda.is_available():
        raise ConfigError(
            f"config key `sim.gpus-per-client` is {config.sim_gpus_per_client} but this machine "
            "has no CUDA device; set it to 0"
        )


def backend_config(
    config: FedveilConfig, *, verbose: bool
) -> dict[str, dict[str, int | float | bool | str]]:
    """Ray resources: each client gets ``sim.cpus-per-client`` CPUs, ``sim.gpus-per-client`` GPUs.

    A GPU share below 1 lets several clients share a GPU (0.25 = four per GPU).
    """
    quiet: dict[str, int | float | bool | str] = (
        {} if verbose else {"logging_level": "ERROR", "log_to_driver": False}
    )
    return {
        "client_resources": {
            "num_cpus": config.sim_cpus_per_client,
            "num_gpus": config.sim_gpus_per_client,
        },
        "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False, **quiet},
        "actor": {"tensorflow": 0},
    }


def check_aggregation(config: FedveilConfig) -> None:
    """Refuse an aggregator that cannot run with the clients each round samples."""
    build_aggregator(
        config.aggregation,
        expected_clients=sample_size(config, config.sim_clients),
        assumed_malicious=config.robust_assumed_malicious,
        trim_beta=config.robust_trim_beta,
        codec_topk=sent_fraction(config),
    )


def check_plan(config: FedveilConfig) -> None:
    """Refuse a budget below one round's cost before anything starts (the server checks again)."""
    parts = _partitions(config)
    rounds = expected_rounds(config, config.sim_clients)
    sizes = sorted({len(p) for p in parts if len(p) > 0})
    plans = [
        plan_client(
            config,
            str(n),
            sample_rate=sample_rate(n, config.batch_size),
            steps_per_round=steps_per_round(n, config.batch_size, config.local_epochs),
            planned_rounds=rounds,
        )
        for n in (sizes[0], sizes[-1])
    ]
    check_budget_allows_a_round(config, plans)


def fault_injection(config: FedveilConfig) -> StrategyWrap | None:
    """Return the wrap that installs ``FaultInjection``, or ``None`` when no fault is asked for."""
    rates = FaultRates.from_config(config)
    if not rates.any():
        return None

    def wrap(strategy: Strategy, book: RoundBook) -> Strategy:
        return FaultInjection(strategy, book, rates=rates, seed=config.seed)

    return wrap


def simulate(
    config: FedveilConfig,
    out: Path | None,
    console: Console,
    *,
    verbose: bool = False,
    resume: bool = False,
) -> tuple[Path, RoundLoopResult]:
    """Run (or, with ``resume``, continue) one simulation; return its run directory and end."""
    from flwr.simulation import run_simulation

    from simulations.adversary.client import simulated_client_app

    run_path = out if out is not None else Path(config.out_dir) / new_run_id()
    if not resume and run_path.exists() and any(run_path.iterdir()):
        raise RunDirError(f"{run_path} already holds files; choose a new --out folder")
    check_inputs(config)
    check_aggregation(config)
    check_plan(config)
    if not config.client_state_dir:
        # Simulated clients keep their state beside the run, so a resumed run continues it.
        config = config.replace(client_state_dir=str(run_path / "client-state"))
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    results: list[RoundLoopResult] = []
    with RoundProgress(console, config.num_server_rounds) as progress:
        server_app = build_server_app(
            config,
            run_path,
            hooks=RunHooks(progress.update, progress.show_plan, fault_injection(config)),
            results=results,
            resume=resume,
        )
        with quiet_engine(verbose=verbose):
            run_simulation(
                server_app=server_app,
                client_app=simulated_client_app(config),
                num_supernodes=config.sim_clients,
                backend_config=backend_config(config, verbose=verbose),  # type: ignore[arg-type]
                verbose_logging=verbose,
            )
    if not results:
        raise RuntimeError("the simulation ended without finishing its server loop")
    console.print(summary_table(read_rounds(run_path), run_path))
    privacy = json.loads((run_path / RunDirectory.PRIVACY).read_text())
    console.print(privacy_table(privacy))
    return run_path, results[0]
