"""The report's privacy numbers: ε per client under both accountants, plan, ε per round."""

from __future__ import annotations

from report.analysis import Analysis
from report.content import Table, client_order, fmt_eps, fmt_num, fmt_rate, span


def client_table(a: Analysis) -> Table:
    """Per client: mechanism parameters, ε under both accountants, budget, status."""
    acc, other = a.ledger.accountant.upper(), a.other.upper()
    rows, warn = [], set()
    for i, c in enumerate(a.ledger.clients):
        status = a.status[c.cid]
        if status not in ("ok", "budget reached"):
            warn.add(i)
        rows.append(
            (
                c.cid,
                span((s for s, _, _ in c.history), fmt_num),
                span((q for _, q, _ in c.history), fmt_rate),
                str(len(c.rounds)),
                str(sum(n for _, _, n in c.history)),
                fmt_eps(c.epsilon),
                fmt_eps(a.other_epsilon[c.cid]),
                "-" if c.reported_epsilon is None else fmt_eps(c.reported_epsilon),
                "none" if c.budget is None else fmt_num(c.budget),
                status,
            )
        )
    return Table(
        f"Privacy spent per client (δ = {a.ledger.delta:g}). ε ({acc}) is the ledger's, with "
        f"the accountant named in privacy.json; ε ({other}) is recomputed from the same "
        f"history; the client's own ε is what it reported.",
        (
            "client",
            "σ",
            "q",
            "rounds trained",
            "steps",
            f"ε ({acc})",
            f"ε ({other})",
            "client's own ε",
            "budget",
            "status",
        ),
        tuple(rows),
        frozenset(warn),
    )


def plan_table(a: Analysis) -> Table:
    """Planned against spent, for every client with a plan."""
    spent = {c.cid: c for c in a.ledger.clients}
    rows = []
    for cid, p in sorted(a.ledger.plan.items(), key=lambda kv: client_order(kv[0])):
        c = spent.get(cid)
        eps = 0.0 if c is None else c.epsilon
        share = f"{eps / p.planned_epsilon:.0%}" if p.planned_epsilon > 0 else "-"
        rows.append(
            (
                cid,
                fmt_num(p.noise_multiplier),
                fmt_rate(p.sample_rate),
                str(p.steps_per_round),
                str(p.planned_rounds),
                fmt_eps(p.planned_epsilon),
                "0" if c is None else str(len(c.rounds)),
                fmt_eps(eps),
                share,
            )
        )
    return Table(
        "Planned before the first round against spent: σ was calibrated so that a client "
        "training the planned number of rounds ends at the planned ε.",
        (
            "client",
            "planned σ",
            "q",
            "steps per round",
            "planned rounds",
            "planned ε",
            "rounds trained",
            "ε spent",
            "spent / planned",
        ),
        tuple(rows),
    )


def epsilon_table(a: Analysis) -> Table:
    """Cumulative ε after each round: smallest and largest over clients, and who was charged."""
    rows = []
    for line in a.rounds:
        latest = [
            max((e for r, e in points if r <= line.round), default=0.0)
            for points in a.series.values()
        ]
        charged = sum(1 for c in a.ledger.clients if line.round in c.rounds)
        rows.append(
            (
                str(line.round),
                str(charged),
                fmt_eps(min(latest, default=0.0)),
                fmt_eps(max(latest, default=0.0)),
            )
        )
    return Table(
        f"Cumulative ε after each round ({a.ledger.accountant.upper()}, δ = "
        f"{a.ledger.delta:g}), reconstructed from every client's history and the round each "
        f"entry was charged in.",
        ("round", "clients charged", "smallest ε", "largest ε"),
        tuple(rows),
    )
