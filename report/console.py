"""Terminal display of a run: a live progress bar per round, then a summary table.

Ids and names that come from a run's files or its clients are escaped, so they print as
written and never as rich markup (colours, links).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from server.ledger import PrivacyLedger
from server.ledger_file import PrivacyFile
from server.planning import ClientPlan
from server.rundir import RoundRecord


class RoundProgress:
    """A rich progress bar that shows round, accuracy and the largest ε spent so far."""

    def __init__(self, console: Console, total_rounds: int) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]round[/bold]"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task(
            "rounds", total=total_rounds, status="starting clients..."
        )
        self.records: list[RoundRecord] = []

    def __enter__(self) -> RoundProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def show_plan(self, plans: dict[str, ClientPlan]) -> None:
        """Print the DP plan before training starts (called by the server loop)."""
        self.progress.console.print(plan_table(plans))

    def update(self, record: RoundRecord, ledger: PrivacyLedger) -> None:
        """Advance one round (called by the server loop as each round ends)."""
        self.records.append(record)
        status = (
            f"accuracy {record.accuracy:.3f}  max ε {record.epsilon_max:.2f}  "
            f"clients {len(record.clients)}"
        )
        if record.rejected:
            status += f"  rejected {len(record.rejected)}"
        self.progress.update(self.task, completed=record.round, status=status)


def summary_table(records: list[RoundRecord], run: Path) -> Table:
    """Return a table of the finished run: per-round results and per-client ε."""
    table = Table(title=f"fedveil run {escape(run.name)}", show_lines=False)
    table.add_column("round", justify="right")
    table.add_column("accuracy", justify="right")
    table.add_column("loss", justify="right")
    table.add_column("clients", justify="right")
    table.add_column("rejected", justify="right")
    table.add_column("max ε", justify="right")
    table.add_column("seconds", justify="right")
    for r in records:
        table.add_row(
            str(r.round),
            f"{r.accuracy:.4f}",
            f"{r.loss:.4f}",
            str(len(r.clients)),
            str(len(r.rejected)),
            f"{r.epsilon_max:.3f}",
            f"{r.seconds:.2f}",
        )
    return table


def privacy_table(doc: Mapping[str, Any]) -> Table:
    """Return a table of ε spent per client against its budget, from ``privacy.json``."""
    privacy = PrivacyFile.from_json(dict(doc))
    table = Table(title=f"privacy spent ({privacy.accountant}, δ = {privacy.delta:g})")
    table.add_column("client", justify="right")
    table.add_column("ε", justify="right")
    table.add_column("budget", justify="right")
    table.add_column("rounds", justify="right")
    table.add_column("status")
    for c in privacy.clients:
        status = "budget reached" if c.exhausted else "ok"
        if c.mismatch:
            status += ", reported ε differs"
        budget = "-" if c.budget is None else f"{c.budget:g}"
        table.add_row(escape(c.cid), f"{c.epsilon:.3f}", budget, str(len(c.rounds)), status)
    return table


def plan_table(plans: dict[str, ClientPlan]) -> Table:
    """Return the DP plan: σ, q, steps and the ε each client is expected to reach."""
    table = Table(title="DP plan (calibrated before training)")
    for name in ("client", "σ", "q", "steps/round", "rounds", "planned ε", "ε per round"):
        table.add_column(name, justify="right")
    for cid, p in sorted(plans.items(), key=lambda kv: (len(kv[0]), kv[0])):
        table.add_row(
            escape(cid),
            f"{p.noise_multiplier:.3f}",
            f"{p.sample_rate:.4f}",
            str(p.steps_per_round),
            str(p.planned_rounds),
            f"{p.planned_epsilon:.3f}",
            f"{p.one_round_epsilon:.3f}",
        )
    return table
