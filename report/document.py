"""The report in reading order: statement, channels, limits, privacy numbers, training, about."""

from __future__ import annotations

from collections.abc import Mapping

from report.analysis import Analysis
from report.audit import audit_section
from report.content import Block, Para, Plot, Section, Table, literal
from report.guarantee import channels, limits, statement
from report.privacy_tables import client_table, epsilon_table, plan_table
from report.training import training_table

ABOUT_KEYS = (
    "dataset",
    "partitioning",
    "sim.clients",
    "fraction-train",
    "aggregation",
    "local-epochs",
    "batch-size",
    "lr",
    "seed",
)


def sections(a: Analysis, figs: Mapping[str, Plot]) -> tuple[Section, ...]:
    """Return the report in reading order: statement, channels, limits, numbers, plots."""
    led = a.ledger
    spent: list[Block] = [client_table(a)]
    if led.plan:
        spent.append(plan_table(a))
    over_time: list[Block] = [figs["epsilon"]] if "epsilon" in figs else []
    over_time.append(epsilon_table(a))
    training: list[Block] = [
        figs[k] for k in ("accuracy", "bytes", "clients", "watermark") if k in figs
    ]
    if not a.rounds:
        training.append(Para("No round finished, so there is nothing to plot."))
    else:
        training.append(training_table(a))
    rejected = tuple(
        (str(r.round), literal(rej.node), literal(rej.reason), literal(rej.detail))
        for r in a.rounds
        for rej in r.rejected
    )
    if rejected:
        training.append(
            Table(
                "Rejected updates and why (nodes are Flower node ids; the privacy tables use "
                "partition ids).",
                ("round", "node", "reason", "detail"),
                rejected,
            )
        )
    about = Para(
        f"Run directory `{literal(a.run_dir.resolve().name)}`: {len(led.clients)} clients with "
        f"privacy accounts, {len(a.rounds)} rounds finished, a global model of {a.parameters:,} "
        f"parameters (model.safetensors). Settings from config.json: "
        + "; ".join(f"{k} {literal(a.config[k])}" for k in ABOUT_KEYS if k in a.config)
        + "."
    )
    recompute = Para(
        "Every ε in this report can be recomputed from privacy.json: each client's `history` "
        "lists `[noise_multiplier, sample_rate, steps]` for every round it trained (with "
        "Opacus's meaning) and `rounds` the server round each entry was charged in; "
        "`common.accounting.epsilon_from_history(history, delta=δ, accountant=...)` gives ε."
    )
    audit = audit_section(a)
    return (
        Section("Privacy statement", "statement", statement(a)),
        Section("What each client sends", "channels", channels(a)),
        Section("What the guarantee does not cover", "limits", limits(a)),
        Section("Privacy spent per client", "clients", tuple(spent)),
        *(() if audit is None else (audit,)),
        Section("Privacy spent over rounds", "over-time", tuple(over_time)),
        Section("Training", "training", tuple(training)),
        Section("About this run", "about", (about, recompute)),
    )
