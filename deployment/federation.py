"""``fedveil federation up``: run fedveil on a real Flower deployment on this host.

``federation_up`` checks the request (the task loads; each SuperNode's own data and Python
environment, ``deployment.nodes``), makes or checks the key material, stages the app
(``deployment.bundle``: ``server.app:app``, ``client.app:app`` and the task's package), starts a
SuperLink and N SuperNodes (``deployment.local``), runs the app with ``flwr run <staged app> fedveil
--run-config <file> --stream`` and tears everything down, also on Ctrl-C, SIGTERM, SIGHUP and
failure. The run config carries ``run-dir`` (the run directory) and ``resume``; the ServerApp
refuses a run directory that already holds a run unless ``resume`` is true. Success is read from
``flwr ls --format json`` and the run directory, never from ``flwr run``'s exit status, which is
0 even for a failed run.

``federation_resume`` restarts the federation recorded in ``RUN_DIR/deployment.json`` on the same
state file, certificates, keys and node state directories, stops the interrupted Flower run and
runs the ServerApp with ``resume = true``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from common.config import ConfigValue, FedveilConfig
from deployment import commands
from deployment.bundle import stage_app
from deployment.errors import DeployError, FederationError
from deployment.layout import Layout
from deployment.local import LocalDeployment
from deployment.logs import json_file, last_line, metric_rows, read_from, size
from deployment.material import aggregator_key_path, prepare_material, signing_fingerprint
from deployment.nodes import node_data_paths
from deployment.record import DeploymentRecord
from server.planning import check_budget_allows_a_round

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "DeployError",
    "FederationError",
    "RunOutcome",
    "check_deployable",
    "federation_resume",
    "federation_up",
    "print_summary",
    "run_flat",
]


@dataclass(frozen=True)
class RunOutcome:
    """How a deployed run ended."""

    run_id: int
    status: str
    rounds: int
    stopped_reason: str | None
    footprint: dict[str, Any]


def check_deployable(config: FedveilConfig, nodes: int) -> None:
    """Refuse a federation that cannot run before anything starts (one line)."""
    # The ServerApp checks again; here a bad plan ends before any process starts.
    check_budget_allows_a_round(config, [])
    if nodes < 1:
        raise DeployError(f"--nodes must be >= 1, got {nodes}")
    if config.min_train_clients > nodes:
        raise DeployError(
            f"config key `min-train-clients` is {config.min_train_clients} but only {nodes} "
            f"SuperNodes would run; use --nodes {config.min_train_clients} or "
            f"--set min-train-clients={nodes}"
        )


def run_flat(config: FedveilConfig, run_dir: Path, *, resume: bool) -> dict[str, ConfigValue]:
    """Return the run config ``flwr run`` passes: every key, ``run-dir`` and ``resume`` set."""
    return config.replace(run_dir=str(run_dir), resume=resume).to_flat()


def _absolute(config: FedveilConfig, run_dir: Path, key: str) -> FedveilConfig:
    """Make the paths the app processes read absolute (they run in another directory)."""
    changes: dict[str, Any] = {"out_dir": str(run_dir.parent)}
    if config.data_dir:
        changes["data_dir"] = str(Path(config.data_dir).expanduser().resolve())
    if key:
        changes["seal_private_key"] = str(Path(key).expanduser().resolve())
    return config.replace(**changes)


def federation_up(
    config: FedveilConfig,
    *,
    nodes: int,
    tls: bool,
    auth: bool,
    out: Path | None,
    keep_dir: Path | None,
    console: Console,
    node_data: Sequence[Path] = (),
    node_env: Path | None = None,
    verbose: bool = False,
) -> tuple[Path, RunOutcome]:
    """Start a federation, run ``config`` on it, tear it down; return the run directory.

    ``node_data``: each SuperNode's own data (``deployment.nodes``), else partitions;
    ``node_env``: the Python environment the SuperNodes run from, else this one.
    """
    from common.task import task_of
    from server.rundir import new_run_id

    check_deployable(config, nodes)
    task_of(config)  # an unusable task is one line now, not a failed ServerApp later
    data_paths = node_data_paths(node_data, nodes)
    env = str(node_env.expanduser().resolve()) if node_env is not None else ""
    run_dir = (out if out is not None else Path(config.out_dir) / new_run_id()).resolve()
    if run_dir.exists() and any(run_dir.iterdir()):
        raise DeployError(f"{run_dir} already holds files; choose a new --out folder")
    layout = Layout((keep_dir if keep_dir is not None else run_dir / "deployment").resolve())
    record = DeploymentRecord(
        str(layout.root),
        nodes,
        tls,
        auth,
        aggregator_fingerprint="",
        node_data=data_paths,
        node_env=env,
        task_root=str(Path.cwd()),
    )
    local = LocalDeployment(layout, run_dir, record, console=console)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    key = config.seal_private_key
    try:
        local.lock()
        record.aggregator_fingerprint = prepare_material(layout, nodes, tls=tls, auth=auth, key=key)
        record.signing_fingerprint = signing_fingerprint(aggregator_key_path(layout, key))
    except ValueError:  # bad certificates or keys, a busy work directory: nothing ran
        local.teardown()
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    with _interrupt_on_sigterm():
        try:
            key_path = str(aggregator_key_path(layout, key))
            config = _absolute(config.replace(sim_clients=nodes), run_dir, key_path)
            record.save(run_dir)
            outcome = _run(local, config, resume=False, verbose=verbose)
        finally:
            footprint = local.teardown()
    return run_dir, dataclasses.replace(outcome, footprint=footprint)


def federation_resume(run_dir: Path, *, console: Console, verbose: bool = False) -> RunOutcome:
    """Restart the federation of ``run_dir`` and continue its run from the last checkpoint."""
    from server.checkpoint import STATE_FILE
    from server.rundir import read_run_config

    run_dir = run_dir.resolve()
    record = DeploymentRecord.load(run_dir)
    config = read_run_config(run_dir)
    if not (run_dir / "checkpoint" / STATE_FILE).is_file():
        raise DeployError(f"{run_dir} has no checkpoint: it never finished a round")
    layout = Layout(Path(record.work_dir))
    local = LocalDeployment(layout, run_dir, record, console=console)
    local.lock()
    with _interrupt_on_sigterm():
        try:
            fingerprint = prepare_material(
                layout, record.nodes, tls=record.tls, auth=record.auth, key=config.seal_private_key
            )
            if fingerprint != record.aggregator_fingerprint:
                raise DeployError(
                    f"the aggregator key {config.seal_private_key} is not the one this run's "
                    f"nodes pin ({record.aggregator_fingerprint}); restore the original key"
                )
            outcome = _run(local, config, resume=True, verbose=verbose)
        finally:
            footprint = local.teardown()
    return dataclasses.replace(outcome, footprint=footprint)


def _run(
    local: LocalDeployment, config: FedveilConfig, *, resume: bool, verbose: bool
) -> RunOutcome:
    """Start the processes and run the app; the caller tears down."""
    record = local.record
    stage_app(local.layout.app, config.to_flat(), Path(record.task_root or Path.cwd()))
    local.write_cli_config()
    local.start_superlink()
    if resume:
        for previous in record.flower_runs:
            if not str(previous.get("status", "")).startswith("finished"):
                local.stop_run(int(previous["run_id"]))
                previous["status"] = "stopped: resumed in a later run"
    if record.auth:
        local.register_nodes()
    local.start_supernodes()
    record.save(local.run_dir)
    local.start_monitor()
    flat = run_flat(config, local.run_dir, resume=resume)
    return _follow_run(local, flat, config.num_server_rounds, verbose=verbose)


def _follow_run(
    local: LocalDeployment, flat: Mapping[str, ConfigValue], total_rounds: int, *, verbose: bool
) -> RunOutcome:
    """Run the staged app with ``flwr run --stream``; follow its rounds; check it ended well."""
    from report.console import RoundProgress
    from server.ledger import PrivacyLedger
    from server.rundir import RoundRecord

    layout, run_dir, record = local.layout, local.run_dir, local.record
    layout.run_config.write_text("\n".join(commands.toml_lines(flat)) + "\n")
    log_path = layout.logs / "flwr-run.log"
    offset = size(log_path)
    command = commands.flwr_run_command(local.bin_dir, layout)
    runner = local.table.start("flwr-run", command, local.env(layout.cli_home), log_path)
    run_id: int | None = None
    seen = len(metric_rows(run_dir))
    shown = offset
    with RoundProgress(local.console, total_rounds) as progress:
        while True:
            finished = not runner.alive()  # one last look at the files after it exits
            local.supervise()
            if verbose:
                text = read_from(log_path, shown)
                shown += len(text.encode())
                if text.strip():
                    local.console.print(text.rstrip(), markup=False, highlight=False)
            if run_id is None:
                run_id = commands.parse_run_id(read_from(log_path, offset))
                if run_id is not None:
                    record.flower_runs.append({"run_id": str(run_id)})
                    record.save(run_dir)
            rows = metric_rows(run_dir)
            ledger_doc = json_file(run_dir / "privacy.json")
            if len(rows) > seen and ledger_doc is not None:
                with contextlib.suppress(KeyError, TypeError, ValueError):  # mid-write
                    ledger = PrivacyLedger.from_json(ledger_doc)
                    for row in rows[seen:]:
                        progress.update(RoundRecord.from_json(row), ledger)
                    seen = len(rows)
            if finished:
                break
            time.sleep(0.5)
    if run_id is None:
        raise FederationError(f"`flwr run` did not start a run: {last_line(log_path)}")
    status, details = local.status(run_id)
    record.flower_runs[-1]["status"] = status
    record.save(run_dir)
    if status != "finished:completed":
        raise FederationError(
            f"Flower run {run_id} ended `{status}` {details}".strip()
            + f"; see {log_path} and {layout.logs}"
        )
    privacy = json_file(run_dir / "privacy.json")
    if privacy is None or not (run_dir / "model.safetensors").exists():
        raise FederationError(
            f"Flower run {run_id} completed but {run_dir} lacks privacy.json or "
            f"model.safetensors; see {log_path}"
        )
    stopped = privacy.get("stopped_reason")
    return RunOutcome(run_id, status, len(metric_rows(run_dir)), stopped, {})


@contextlib.contextmanager
def _interrupt_on_sigterm() -> Iterator[None]:
    """Turn SIGINT, SIGTERM and SIGHUP into ``KeyboardInterrupt``: teardown runs (main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, interrupt) for signum in handled}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def print_summary(console: Console, run_dir: Path, outcome: RunOutcome) -> None:
    """Print the rounds, the privacy spent and the edge footprint of a deployed run."""
    from report.console import privacy_table, summary_table
    from server.rundir import RoundRecord

    rounds = [RoundRecord.from_json(r) for r in metric_rows(run_dir)]
    console.print(summary_table(rounds, run_dir))
    privacy = json_file(run_dir / "privacy.json")
    if privacy is not None:
        console.print(privacy_table(privacy))
    app = outcome.footprint.get("clientapp", {})
    if app.get("messages"):
        console.print(
            f"ClientApp, per message: peak RSS {app['peak_rss_mib_median']} MiB median, "
            f"{app['peak_rss_mib_max']} MiB max, {app['seconds_median']} s median "
            f"({app['messages']} messages)"
        )
    daemons = outcome.footprint.get("daemons_peak_rss_mib", {})
    if daemons:
        console.print(
            f"SuperNode daemons: peak RSS up to {max(daemons.values())} MiB per process "
            f"(flower-supernode and its flower-superexec)"
        )
    console.print(f"Flower run {outcome.run_id}: {outcome.status}")
