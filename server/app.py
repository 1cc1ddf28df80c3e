"""fedveil's Flower ServerApp, the only one: read the run config once, then run the round loop.

``flwr run .`` (and ``fedveil federation up``) use the module-level ``app``: it reads the run
config from Flower's context, warns once about ``attack.*``/``faults.*`` keys (only a simulation
installs the adversary that acts on them) and, when the loop returns (all rounds or an early stop),
writes the run's report with ``report.write_report``. A report failure is one logged line; the
run's files stay. This module is the app's composition root and the one place in ``server/`` that
imports ``report`` (lazily, at the end of a run).

``fedveil simulate`` builds its own app with ``build_server_app`` (no report hook: the CLI writes
the report once), to observe rounds as they finish, to resume, or to wrap the server's strategy
once more (``RunHooks``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.config import KEYS, ConfigError, FedveilConfig
from server.round_loop import RoundLoop, RoundLoopResult, RunHooks
from server.rundir import RunDirectory, new_run_id

log = logging.getLogger(__name__)

RunEnd = Callable[[Path], None]
"""Called with the run directory once the round loop has returned."""

SIMULATION_ONLY_PREFIXES = ("attack.", "faults.")


def build_server_app(
    config: FedveilConfig | None,
    run_path: Path | None = None,
    *,
    hooks: RunHooks | None = None,
    results: list[RoundLoopResult] | None = None,
    resume: bool = False,
    on_end: RunEnd | None = None,
) -> ServerApp:
    """Return a ServerApp for ``config`` (or the context's run config when ``None``).

    ``hooks`` observe the run and may wrap the server's strategy stack once more
    (``server.round_loop.RunHooks``); ``on_end`` runs after the loop returns, not when it raises.
    """
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        if config is None:
            resolved = FedveilConfig.from_flat(context.run_config)
            # A run config from Flower's context means no simulated adversary is installed.
            warn_simulation_only(resolved)
        else:
            resolved = config
        resuming = resume or resolved.resume
        if resolved.resume and run_path is None and not resolved.run_dir:
            raise ConfigError("config key `resume` needs `run-dir`: the run to continue")
        if run_path is not None:
            path = run_path
        elif resolved.run_dir:
            path = Path(resolved.run_dir)
        else:
            path = Path(resolved.out_dir) / new_run_id()
        run_dir = RunDirectory(path) if resuming else RunDirectory.create(path)
        loop = RoundLoop(
            grid,
            resolved,
            run_dir,
            run_id=context.run_id,
            run_tag=path.name,
            hooks=hooks,
        )
        if resuming:
            loop.restore()
        result = loop.run()
        if results is not None:
            results.append(result)
        if on_end is not None:
            on_end(path)

    return server_app


def simulation_only_keys(config: FedveilConfig) -> list[str]:
    """Return the ``attack.*``/``faults.*`` keys set away from their defaults, sorted."""
    flat = config.to_flat()
    return sorted(
        key
        for key, value in flat.items()
        if key.startswith(SIMULATION_ONLY_PREFIXES) and value != KEYS[key].default
    )


def warn_simulation_only(config: FedveilConfig) -> None:
    """Log one warning naming the simulation-only keys the run config sets, if any."""
    keys = simulation_only_keys(config)
    if keys:
        log.warning(
            "%s set, but attacks and faults act only in `fedveil simulate`: ignored in this run",
            ", ".join(keys),
        )


def write_run_report(run_path: Path) -> None:
    """Write the run's report as ``fedveil simulate`` does; on failure log one line, raise nothing.

    The run's files are already complete when this runs, so losing the report must not fail the
    run: ``fedveil report RUN_DIR`` can write it later.
    """
    try:
        # Lazy: report pulls in matplotlib, needed only now, and only by the ServerApp.
        from report import write_report

        files = write_report(run_path)
    except Exception as exc:  # any failure costs the report only, never the run
        log.warning(
            "no report for %s (%s: %s); the run's files are kept, retry with `fedveil report %s`",
            run_path,
            type(exc).__name__,
            exc,
            run_path,
        )
        return
    log.info("report: %s", files.html)


app = build_server_app(None, on_end=write_run_report)
