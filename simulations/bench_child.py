"""One bench variant, run in this process (the bench starts one child process per variant).

``run_child`` imports the variant's module (``simulations.bench_plain_variant`` or
``simulations.bench_fedveil_variant``; the import is timed apart, since each imports its own
stack), runs it on Flower's simulation engine (locally, or on the Ray cluster at
``ray_address``) and returns its rounds (each a ``round_row``), per-round server seconds
(``SERVER_PHASES``), the clients' traces and the planning seconds, as JSON-ready data.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.config import FedveilConfig
from simulations.bench_timing import RoundClock

VARIANTS = ("plain", "fedveil")
BackendConfig = dict[str, dict[str, int | float | bool | str]]


def ray_backend(config: FedveilConfig, address: str) -> BackendConfig:
    """Backend config for an existing Ray cluster: ``ray.init(address=...)``, no local sizes.

    ``ray.init`` refuses ``num_cpus`` when it connects to a running cluster, so ``init_args``
    carries only the address; the cluster's own ``--num-cpus`` sizes the actor pool.
    """
    return {
        "client_resources": {"num_cpus": config.sim_cpus_per_client, "num_gpus": 0.0},
        "init_args": {"address": address, "logging_level": "ERROR", "log_to_driver": False},
        "actor": {"tensorflow": 0},
    }


@dataclass(frozen=True)
class VariantJob:
    """What a variant's ``run`` gets.

    The config, where to write the run, the bench's clock, and the Ray cluster's backend config
    (``None``: the simulation starts its own).
    """

    config: FedveilConfig
    run_path: Path
    clock: RoundClock
    backend: Mapping[str, Any] | None


def round_row(
    round_: int, accuracy: float, seconds: float, uplink_bytes: int, clients: int, **extra: int
) -> dict[str, Any]:
    """Return one round as a variant's ``run`` reports it; ``extra``: the variant's own counts."""
    return {
        "round": round_,
        "accuracy": accuracy,
        "seconds": seconds,
        "uplink_bytes": uplink_bytes,
        "clients": clients,
        **extra,
    }


def run_child(variant: str, config: FedveilConfig, out: Path, ray_address: str) -> dict[str, Any]:
    """Run ``variant`` in this process; return its numbers."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    logging.getLogger("flwr").setLevel(logging.WARNING)
    started = time.perf_counter()
    module = importlib.import_module(f"simulations.bench_{variant}_variant")
    imported = time.perf_counter()
    clock = RoundClock()
    backend = ray_backend(config, ray_address) if ray_address else None
    rounds = module.run(VariantJob(config, out / "run", clock, backend))
    return {
        "variant": variant,
        "rounds": rounds,
        "import_seconds": imported - started,
        "simulation_seconds": time.perf_counter() - imported,
        "server": {str(k): v for k, v in clock.server_seconds().items()},
        "plan_seconds": clock.plan_seconds,
        "clients": clock.traces,
    }
