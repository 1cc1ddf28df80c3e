"""One benchmark run: ``fedveil simulate``'s own path with config keys, then its run directory.

Benchmarks compose public pieces and patch nothing: ``run_simulation`` builds the config from
kebab-case keys (as ``--set`` does), calls ``simulations.simulate.simulate`` and returns the
finished rounds of ``metrics.jsonl``; a run that finishes fewer rounds than asked for is an
error (``BenchmarkError``), never a silently short row. Everything else a benchmark needs comes
from the run directory's files.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console

from common.config import ConfigValue, FedveilConfig

MODEL_FILE = "model.safetensors"
CHECKPOINT_DIR = "checkpoint"


class BenchmarkError(RuntimeError):
    """A benchmark run did not produce the numbers it needs."""


def read_rounds(run: Path) -> list[dict[str, Any]]:
    """Return the rows of a run's ``metrics.jsonl``, checked by the server's reader.

    Raises:
        BenchmarkError: the file does not keep its contract.

    """
    from server.rundir import RunFileError
    from server.rundir import read_rounds as read_records

    try:
        return [record.to_json() for record in read_records(run)]
    except RunFileError as exc:
        raise BenchmarkError(str(exc)) from None


def run_simulation(
    flat: Mapping[str, ConfigValue],
    out: Path,
    console: Console | None = None,
    *,
    verbose: bool = False,
) -> list[dict[str, Any]]:
    """Run one simulation into ``out`` with the config keys ``flat``; return its rounds.

    ``console`` shows the run's progress (default: stderr with ``verbose``, else nowhere).

    Raises:
        BenchmarkError: the run finished fewer rounds than ``num-server-rounds``.

    """
    from simulations.simulate import simulate

    config = FedveilConfig.from_flat(dict(flat))
    if console is None:
        console = Console(stderr=True) if verbose else Console(file=io.StringIO())
    run_path, _ = simulate(config, out, console, verbose=verbose)
    rows = read_rounds(run_path)
    if len(rows) < config.num_server_rounds:
        raise BenchmarkError(
            f"{out.name}: finished {len(rows)} of {config.num_server_rounds} rounds"
            " (privacy.json says why)"
        )
    return rows


def node_partitions(run: Path) -> dict[int, int]:
    """Map each node id of a finished simulated run to its partition id.

    ``metrics.jsonl`` names nodes (random in a simulation) while attackers are chosen by
    partition; the run directory's contract has no field pairing them yet, so this reads the
    final checkpoint with the server's own readers, sized by the final model's tensor shapes.
    """
    from server.checkpoint import CheckpointError, load_checkpoint
    from server.rundir import RunFileError, read_model_shapes

    try:
        shapes = read_model_shapes(run / MODEL_FILE)
        checkpoint = load_checkpoint(run / CHECKPOINT_DIR, shapes)
    except (RunFileError, CheckpointError) as exc:
        raise BenchmarkError(f"{run}: cannot pair nodes with partitions ({exc})") from None
    return {node: int(client) for node, client in checkpoint.node_clients.items()}
