"""The ``fedveil`` command line.

Errors a user can fix (bad config, missing or corrupt data, an occupied run directory) end with
one line on stderr naming what was wrong and how to fix it, and exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from rich.console import Console
from rich.markup import escape

from common.config import KEYS, ConfigError, FedveilConfig, load_toml, parse_assignment
from common.files import show_path
from simulations.watermark_cmd import add_watermark_parser, cmd_watermark_verify

if TYPE_CHECKING:
    from deployment.federation import RunOutcome

EXIT_USAGE = 2
PRESETS = ("quick", "default", "scale")


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


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2) instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        """Print ``message`` and where to read the usage on one line; exit 2."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of every ``fedveil`` command."""
    parser = _Parser(
        prog="fedveil", description="Federated learning whose privacy is end to end and measurable."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sim = _add_run_parser(sub, "simulate", "run a simulation on Flower's simulation engine")
    sim.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")
    rep = sub.add_parser("report", help="(re)write report.html, report.md and plots/ of a run")
    rep.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    check = sub.add_parser(
        "check", help="check that a run directory keeps its contract (exit 0 holds, 1 broken)"
    )
    check.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    resume = sub.add_parser("resume", help="continue an interrupted run from its checkpoint")
    resume.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    resume.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")
    _add_federation_parser(sub)
    _add_keys_parser(sub)
    add_watermark_parser(sub)
    sub.add_parser(
        "bench",
        help="plain Flower vs the full fedveil stack, side by side (see `fedveil bench --help`)",
        add_help=False,
    )
    return parser


def _add_run_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    """Add a command that starts a run: ``--config``, ``--set KEY=VALUE``, ``--out``."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_text,
        epilog=_keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help=f"a preset ({', '.join(PRESETS)}) or a TOML file")
    parser.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key (repeatable)",
    )
    parser.add_argument("--out", type=Path, help="run directory (default: runs/<run-id>)")
    return parser


def _add_federation_parser(sub: Any) -> None:
    fed = sub.add_parser("federation", help="run on a real Flower deployment on this host")
    fed_sub = fed.add_subparsers(dest="federation_command", required=True)
    up = _add_run_parser(
        fed_sub, "up", "start a SuperLink and N SuperNodes on 127.0.0.1, run, tear down"
    )
    up.add_argument("--nodes", type=int, help="SuperNodes to start (required unless --resume)")
    up.add_argument("--rounds", type=int, help="rounds to run (sets num-server-rounds)")
    up.add_argument("--tls", action="store_true", help="TLS with a CA and certificate it makes")
    up.add_argument("--auth", action="store_true", help="SuperNode authentication (needs --tls)")
    up.add_argument(
        "--node-data",
        type=Path,
        action="append",
        default=[],
        metavar="PATH",
        help="a SuperNode's own data (its node config `data-path`, read only by that node): "
        "repeat once per node, in node order, or give one folder holding node-0.*, node-1.*, "
        "...; without it each node trains on a partition of the task's pool",
    )
    up.add_argument(
        "--node-env",
        type=Path,
        metavar="VENV",
        help="run the SuperNodes from this Python environment (e.g. a venv with only the "
        "client install, as on an edge device; see docs/deployment.md); default: this one",
    )
    up.add_argument(
        "--keep-dir",
        type=Path,
        help="where certificates, keys and process state live (default: RUN_DIR/deployment)",
    )
    up.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="restart the federation of RUN_DIR and continue its run from the checkpoint",
    )
    up.add_argument("--verbose", action="store_true", help="show Flower's logs")


def _add_keys_parser(sub: Any) -> None:
    keys = sub.add_parser("keys", help="make the key material of a deployment")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    gen = keys_sub.add_parser(
        "generate",
        help="write the aggregator's key pair (default), TLS files (--tls) or a node key (--node)",
    )
    gen.add_argument("directory", type=Path, metavar="DIR")
    kind = gen.add_mutually_exclusive_group()
    kind.add_argument("--tls", action="store_true", help="a CA and a SuperLink certificate")
    kind.add_argument("--node", action="store_true", help="a SuperNode authentication key")
    gen.add_argument(
        "--host",
        action="append",
        default=[],
        help="a name or IP address the SuperLink certificate covers (repeatable; with --tls)",
    )
    gen.add_argument("--days", type=int, default=365, help="certificate validity (with --tls)")


def _finish(
    run_path: Path, stopped_reason: str | None, console: Console, *, reported: bool = False
) -> None:
    """Write the run's report, say why it stopped early if it did, print the run directory.

    ``reported``: the ServerApp of a deployment writes the report itself when its run ends;
    it is written here only if that failed (the ServerApp logged why).
    """
    from report import write_report
    from report.write import HTML_NAME

    if reported and (run_path / HTML_NAME).is_file():
        html = run_path / HTML_NAME
    else:
        html = write_report(run_path).html
    if stopped_reason:
        console.print(f"[yellow]stopped early:[/yellow] {escape(stopped_reason)}")
    console.print(f"report: {escape(str(html))}")
    print(run_path)


def _check_out(out: Path | None) -> None:
    """Refuse an ``--out`` that names something other than a folder."""
    if out is not None and out.exists() and not out.is_dir():
        raise UserError(f"--out {show_path(out)} is not a folder; give a new folder for the run")


def cmd_simulate(args: argparse.Namespace, console: Console) -> int:
    """Run ``fedveil simulate``."""
    from simulations.simulate import simulate

    _check_out(args.out)
    config = resolve_config(args.config, args.assignments)
    run_path, result = simulate(config, args.out, console, verbose=args.verbose)
    _finish(run_path, result.stopped_reason, console)
    return 0


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    """Run ``fedveil report RUN_DIR``."""
    from report import write_report

    print(write_report(args.run_dir).html)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Run ``fedveil check RUN_DIR``: 0 and a summary if the contract holds, 1 if broken."""
    from server.run_contract import ContractBroken, check_run_contract

    if not args.run_dir.is_dir():
        raise UserError(f"{args.run_dir} is not a directory; give a fedveil run directory")
    try:
        print(check_run_contract(args.run_dir))
    except ContractBroken as exc:
        print(f"contract broken: {exc}")
        return 1
    return 0


def cmd_resume(args: argparse.Namespace, console: Console) -> int:
    """Run ``fedveil resume RUN_DIR``; a bad checkpoint is refused before anything starts."""
    from server.checkpoint import STATE_FILE, read_state
    from server.rundir import read_run_config
    from simulations.simulate import simulate

    checkpoint = args.run_dir / "checkpoint"
    if (args.run_dir / "deployment.json").is_file():  # made by `fedveil federation up`
        return resume_deployment(args.run_dir, console, verbose=args.verbose)
    config = read_run_config(args.run_dir)
    if not (checkpoint / STATE_FILE).exists():
        raise UserError(f"{args.run_dir} has no checkpoint: it never finished a round")
    read_state(checkpoint)
    run_path, result = simulate(config, args.run_dir, console, verbose=args.verbose, resume=True)
    _finish(run_path, result.stopped_reason, console)
    return 0


def cmd_federation_up(args: argparse.Namespace, console: Console) -> int:
    """Run ``fedveil federation up``."""
    if args.resume is not None:
        given = {
            "--nodes": args.nodes is not None,
            "--rounds": args.rounds is not None,
            "--tls": args.tls,
            "--auth": args.auth,
            "--config": args.config is not None,
            "--set": bool(args.assignments),
            "--out": args.out is not None,
            "--keep-dir": args.keep_dir is not None,
            "--node-data": bool(args.node_data),
            "--node-env": args.node_env is not None,
        }
        extra = [flag for flag, present in given.items() if present]
        if extra:
            raise UserError(
                f"--resume continues with the run's own settings; drop {', '.join(extra)}"
            )
        return resume_deployment(args.resume, console, verbose=args.verbose)
    if args.nodes is None:
        raise UserError("--nodes N is required (or --resume RUN_DIR)")
    if args.auth and not args.tls:
        raise UserError("--auth needs --tls: Flower authenticates SuperNodes only over TLS")
    _check_out(args.out)
    assignments = list(args.assignments)
    if args.rounds is not None:
        assignments.append(f"num-server-rounds={args.rounds}")
    config = resolve_config(args.config, assignments)

    def up() -> tuple[Path, RunOutcome]:
        from deployment.federation import federation_up

        return federation_up(
            config,
            nodes=args.nodes,
            tls=args.tls,
            auth=args.auth,
            out=args.out,
            keep_dir=args.keep_dir,
            console=console,
            node_data=args.node_data,
            node_env=args.node_env,
            verbose=args.verbose,
        )

    return _deployment(up, console)


def resume_deployment(run_dir: Path, console: Console, *, verbose: bool = False) -> int:
    """Restart the federation of a run made by ``fedveil federation up`` and finish the run."""
    from server.checkpoint import STATE_FILE, read_state

    run_path = run_dir.resolve()
    if (run_path / "checkpoint" / STATE_FILE).exists():  # a missing one: federation_resume says
        read_state(run_path / "checkpoint")

    def resume() -> tuple[Path, RunOutcome]:
        from deployment.federation import federation_resume

        return run_path, federation_resume(run_path, console=console, verbose=verbose)

    return _deployment(resume, console)


def _deployment(start: Callable[[], tuple[Path, RunOutcome]], console: Console) -> int:
    """Run a deployment; user-fixable errors become one line and exit 2, failures exit 1."""
    from common.crypto.certificates import CertificateError
    from deployment import federation as deploy

    try:
        run_path, outcome = start()
    except (deploy.DeployError, CertificateError) as exc:
        raise UserError(str(exc)) from None
    except deploy.FederationError as exc:
        print(f"fedveil: federation failed: {exc}", file=sys.stderr)
        return 1
    deploy.print_summary(console, run_path, outcome)
    _finish(run_path, outcome.stopped_reason, console, reported=True)
    return 0


def cmd_keys_generate(args: argparse.Namespace, console: Console) -> int:
    """Run ``fedveil keys generate DIR``."""
    from common.crypto.certificates import CertificateError
    from simulations import keys_cmd

    if args.host and not args.tls:
        raise UserError("--host names the SuperLink in a TLS certificate: use it with --tls")
    try:
        if args.tls:
            ca = keys_cmd.generate_tls(args.directory, args.host, args.days)
            console.print(
                f"wrote ca.pem, ca.key, server.pem, server.key in {escape(str(args.directory))}"
            )
            print(ca)
        elif args.node:
            line = keys_cmd.generate_node(args.directory)
            console.print(f"wrote node.key (0600) and node.pub in {escape(str(args.directory))}")
            print(line)
        else:
            fingerprint, signing = keys_cmd.generate_aggregator(args.directory)
            console.print(
                f"wrote aggregator.key (0600) and aggregator.pub in {escape(str(args.directory))}"
                f"; SuperNodes pin the fingerprint below as aggregator-fingerprint, and the "
                f"downlink signing key derived from it as aggregator-signing-fingerprint={signing}",
                soft_wrap=True,  # never fold a fingerprint someone copies
            )
            print(fingerprint)
    except (CertificateError, ValueError) as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"{args.directory}: cannot write keys ({exc.strerror or exc})") from None
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedveil`` console script."""
    from client.privacy_state import PrivacyStateError
    from common.data import DataError
    from common.partition import PartitionError
    from common.task import TaskError
    from report import ReportError
    from server.checkpoint import CheckpointError
    from server.rundir import RunDirError, RunFileError

    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] == ["bench"]:
        # The benchmark owns its options (see `fedveil bench --help`).
        from simulations.bench import main as bench_main

        return bench_main(raw[1:])
    args = build_parser().parse_args(raw)
    console = Console(stderr=True)
    try:
        if args.command == "simulate":
            return cmd_simulate(args, console)
        if args.command == "resume":
            return cmd_resume(args, console)
        if args.command == "report":
            return cmd_report(args, console)
        if args.command == "check":
            return cmd_check(args)
        if args.command == "watermark":
            return cmd_watermark_verify(args)

        if args.command == "federation":
            return cmd_federation_up(args, console)
        if args.command == "keys":
            return cmd_keys_generate(args, console)
    except (
        ConfigError,
        DataError,
        PartitionError,
        TaskError,
        RunDirError,
        RunFileError,
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
