"""The ``fedveil`` command line.

Errors a user can fix (bad config, missing or corrupt data, an occupied run directory) end with
one line on stderr naming what was wrong and how to fix it, and exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console

from common.config import KEYS, ConfigError, FedveilConfig, load_toml, parse_assignment

EXIT_USAGE = 2
PRESETS = ("quick", "default")


class UserError(Exception):
    """An error the user can fix; printed as one line, exit status 2."""


def _preset_path(name: str) -> Path:
    return Path(str(resources.files("simulations.presets").joinpath(f"{name}.toml")))


def resolve_config(config_arg: str | None, assignments: Sequence[str]) -> FedveilConfig:
    """Build the config: defaults, then a preset or TOML file, then ``--set`` overrides."""
    flat: dict[str, Any] = {}
    if config_arg is not None:
        path = _preset_path(config_arg) if config_arg in PRESETS else Path(config_arg)
        flat.update(load_toml(path))
    else:
        flat.update(load_toml(_preset_path("default")))
    for text in assignments:
        key, value = parse_assignment(text)
        flat[key] = value
    return FedveilConfig.from_flat(flat)


def _keys_help() -> str:
    lines = ["config keys (use with --set KEY=VALUE or in a TOML file):"]
    for key, spec in KEYS.items():
        lines.append(f"  {key:24s} {spec.domain} (default {spec.default!r})")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of every ``fedveil`` command."""
    parser = argparse.ArgumentParser(
        prog="fedveil", description="Federated learning whose privacy is end to end and measurable."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser(
        "simulate",
        help="run a simulation on Flower's simulation engine",
        epilog=_keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sim.add_argument("--config", help=f"a preset ({', '.join(PRESETS)}) or a TOML file")
    sim.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key (repeatable)",
    )
    sim.add_argument("--out", type=Path, help="run directory (default: runs/<run-id>)")
    sim.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")
    rep = sub.add_parser("report", help="(re)write report.html, report.md and plots/ of a run")
    rep.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    resume = sub.add_parser("resume", help="continue an interrupted run from its checkpoint")
    resume.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    resume.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")
    return parser


def _finish(run_path: Path, stopped_reason: str | None, console: Console) -> None:
    """Write the run's report, say why it stopped early if it did, print the run directory."""
    from server.report import write_report

    report = write_report(run_path)
    if stopped_reason:
        console.print(f"[yellow]stopped early:[/yellow] {stopped_reason}")
    console.print(f"report: {report.html}")
    print(run_path)


def cmd_simulate(args: argparse.Namespace, console: Console) -> int:
    """Run ``fedveil simulate``."""
    from simulations.simulate import simulate

    config = resolve_config(args.config, args.assignments)
    run_path, result = simulate(config, args.out, console, verbose=args.verbose)
    _finish(run_path, result.stopped_reason, console)
    return 0


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    """Run ``fedveil report RUN_DIR``."""
    from server.report import write_report

    print(write_report(args.run_dir).html)
    return 0


def cmd_resume(args: argparse.Namespace, console: Console) -> int:
    """Run ``fedveil resume RUN_DIR``."""
    from server.checkpoint import STATE_FILE
    from simulations.simulate import load_run_config, simulate

    config = load_run_config(args.run_dir)
    if not (args.run_dir / "checkpoint" / STATE_FILE).is_file():
        raise UserError(f"{args.run_dir} has no checkpoint: it never finished a round")
    run_path, result = simulate(config, args.run_dir, console, verbose=args.verbose, resume=True)
    _finish(run_path, result.stopped_reason, console)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedveil`` console script."""
    from client.privacy_state import PrivacyStateError
    from common.data import DataError
    from common.partition import PartitionError
    from server.checkpoint import CheckpointError
    from server.report import ReportError
    from server.rundir import RunDirError

    args = build_parser().parse_args(argv)
    console = Console(stderr=True)
    try:
        if args.command == "simulate":
            return cmd_simulate(args, console)
        if args.command == "resume":
            return cmd_resume(args, console)
        if args.command == "report":
            return cmd_report(args, console)
    except (
        ConfigError,
        DataError,
        PartitionError,
        RunDirError,
        CheckpointError,
        PrivacyStateError,
        ReportError,
        UserError,
    ) as exc:
        print(f"fedveil: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("fedveil: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not bad input: still one line, the trace on request
        if os.environ.get("FEDVEIL_DEBUG"):
            raise
        print(
            f"fedveil: internal error: {type(exc).__name__}: {exc} "
            f"(set FEDVEIL_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
