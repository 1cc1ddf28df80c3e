"""``fedveil simulate``: run the app on Flower's simulation engine with a live display."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from rich.console import Console

from common.config import FedveilConfig
from common.data import load_data
from common.partition import PartitionSpec, cached_partitions
from server.app import build_server_app
from server.federation import FederationResult
from server.rundir import RunDirectory, RunDirError, new_run_id
from simulations.progress import RoundProgress, privacy_table, summary_table

log = logging.getLogger(__name__)


def check_inputs(config: FedveilConfig) -> None:
    """Load the data and make the split once, so bad input fails before anything starts."""
    load_data(config.dataset, config.data_dir, config.seed, config.test_fraction)
    spec = PartitionSpec(
        config.partitioning, config.sim_clients, config.seed, config.dirichlet_alpha
    )
    cached_partitions(config.dataset, config.data_dir, config.seed, config.test_fraction, spec)


def backend_config(
    config: FedveilConfig, *, verbose: bool
) -> dict[str, dict[str, int | float | bool | str]]:
    """Ray resources: each simulated client gets ``sim.cpus-per-client`` CPUs."""
    quiet: dict[str, int | float | bool | str] = (
        {} if verbose else {"logging_level": "ERROR", "log_to_driver": False}
    )
    return {
        "client_resources": {"num_cpus": config.sim_cpus_per_client, "num_gpus": 0.0},
        "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False, **quiet},
        "actor": {"tensorflow": 0},
    }


def simulate(
    config: FedveilConfig, out: Path | None, console: Console, *, verbose: bool = False
) -> tuple[Path, FederationResult]:
    """Run one simulation; return its run directory and how it ended."""
    from flwr.simulation import run_simulation

    from client.app import app as client_app

    run_path = out if out is not None else Path(config.out_dir) / new_run_id()
    if run_path.exists() and any(run_path.iterdir()):
        raise RunDirError(f"{run_path} already holds files; choose a new --out folder")
    check_inputs(config)
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    results: list[FederationResult] = []
    with RoundProgress(console, config.num_server_rounds) as progress:
        server_app = build_server_app(config, run_path, on_round=progress.update, results=results)
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=config.sim_clients,
            backend_config=backend_config(config, verbose=verbose),  # type: ignore[arg-type]
            verbose_logging=verbose,
        )
    if not results:
        raise RuntimeError("the simulation ended without finishing its server loop")
    console.print(summary_table(progress.records, run_path))
    privacy = json.loads((run_path / RunDirectory.PRIVACY).read_text())
    console.print(privacy_table(privacy))
    return run_path, results[0]
