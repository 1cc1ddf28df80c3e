"""fedveil's Flower ServerApp, the only one: read the run config once, then run the round loop.

``flwr run .`` uses the module-level ``app``; ``fedveil simulate`` and ``fedveil federation up``
build theirs with ``build_server_app``, to observe rounds as they finish, to resume, or (a
simulation only) to wrap the server's strategy once more (``wrap_strategy``).
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.config import ConfigError, FedveilConfig
from server.round_loop import PlanObserver, RoundLoop, RoundLoopResult, RoundObserver
from server.rundir import RunDirectory, new_run_id
from server.strategy.stack import StrategyWrap


def build_server_app(
    config: FedveilConfig | None,
    run_path: Path | None = None,
    *,
    on_round: RoundObserver | None = None,
    on_plan: PlanObserver | None = None,
    results: list[RoundLoopResult] | None = None,
    resume: bool = False,
    wrap_strategy: StrategyWrap | None = None,
) -> ServerApp:
    """Return a ServerApp for ``config`` (or the context's run config when ``None``).

    ``wrap_strategy`` wraps the server's strategy stack (``server.strategy.stack``) once more.
    """
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        resolved = config or FedveilConfig.from_flat(context.run_config)
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
            on_round=on_round,
            on_plan=on_plan,
            wrap_strategy=wrap_strategy,
        )
        if resuming:
            loop.restore()
        result = loop.run()
        if results is not None:
            results.append(result)

    return server_app


app = build_server_app(None)
