"""The report's privacy numbers: ε per client under both accountants, plan, ε per round.

Each account names the node it is keyed to and the label that node declared; the plan lists
each node's own limits (what the node reported it enforces, whatever the run config says).
"""

from __future__ import annotations

from collections.abc import Mapping

from common import protocol
from report.analysis import Analysis
from report.content import Table, client_order, fmt_eps, fmt_num, fmt_rate, span
from server.ledger_file import ClientEntry

_LIMIT_WORDS = (
    (protocol.NODE_MAX_EPSILON, "ε ≤ {}"),
    (protocol.NODE_MIN_NOISE, "σ ≥ {}"),
    (protocol.NODE_MAX_ROUNDS, "≤ {} rounds"),
)


def limits_words(limits: Mapping[str, float]) -> str:
    """Return a node's own limits in words (``none`` when it reported none)."""
    words = [text.format(fmt_num(limits[key])) for key, text in _LIMIT_WORDS if key in limits]
    return ", ".join(words) or "none"


def _identity(c: ClientEntry) -> str:
    parts = []
    if c.node is not None and str(c.node) != c.cid:
        parts.append(f"node {c.node}")
    if c.label is not None and c.label != c.cid:
        parts.append(f"label {c.label}")
    return ", ".join(parts) or "-"


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
                _identity(c),
                status,
            )
        )
    return Table(
        f"Privacy spent per client (δ = {a.ledger.delta:g}). ε ({acc}) is the ledger's, with "
        f"the accountant named in privacy.json; ε ({other}) is recomputed from the same "
        f"history; the client's own ε is what it reported. An account is keyed by the node's "
        f"identity (in a simulation, by the partition it declares); the node and the label it "
        f"declared are shown where they differ from the key.",
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
            "node, label",
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
                "none" if c is None else limits_words(c.node_limits),
            )
        )
    return Table(
        "Planned before the first round against spent: σ was calibrated so that a client "
        "training the planned number of rounds ends at the planned ε (never below a node's own "
        "σ floor). A node's own limits are what it reported; it enforces them itself, whatever "
        "the run config says, and the server stops sampling it when they are reached.",
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
            "node's own limits",
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
