"""The report's audit section: each audited client's empirical lower bound beside its ε.

Built from the ``audit`` objects of ``privacy.json`` (``server.audit_file``). A lower bound
above the accountant's ε cannot happen if the DP-SGD that trained the client matches its
accounting (bar the audit's own 5 % chance of error), so such a row is highlighted and named a
privacy bug. Absent when the run had no audit (``privacy.audit`` off).
"""

from __future__ import annotations

from report.analysis import Analysis
from report.content import Para, Section, Table, client_order, fmt_eps

ANCHOR = "audit"
_CONFIDENCE = "95 %"


_MODE_NOTES = {
    "white-box": Para(
        "White-box: the canaries are random gradients of norm `dp.max-grad-norm`, each "
        "included one sampled at every DP-SGD step like one more example, before the noise, "
        "and scored on the client's opened updates. They use none of a client's data and no "
        "privacy of its examples (each example's sensitivity is unchanged), but they cost "
        "utility: every included canary moves the client's model along its direction at each "
        "step that samples it, and with one canary per parameter that displacement is of the "
        "order of the DP noise itself, so the model loses some accuracy (fewer canaries, "
        "through `privacy.audit-canaries`, cost less and prove less)."
    ),
    "black-box": Para(
        "Black-box: the canaries are random inputs with random labels, scored by the final "
        "model's loss on them (lower loss: guessed in). Each takes a slot in the client's data: "
        "the slot holds the canary when it is included, else a blank row that adds nothing, "
        "so the data keeps its size and each slot's real example is not trained on. Part of "
        "each audited client's data (the canary count) is spent on the audit. The final model "
        "averages all clients' noisy updates, so black-box bounds are weak; they still must "
        "stay below ε."
    ),
}


def exceeds(lower_bound: float, epsilon: float) -> bool:
    """Return whether an audited lower bound contradicts the accountant's ε (a privacy bug)."""
    return lower_bound > epsilon


def audit_section(a: Analysis) -> Section | None:
    """Return the audit section, or ``None`` when no client was audited."""
    audited = sorted(
        ((c.cid, c.epsilon, c.audit) for c in a.ledger.clients if c.audit is not None),
        key=lambda row: client_order(row[0]),
    )
    if not audited:
        return None
    rows, warn = [], set()
    for i, (cid, epsilon, audit) in enumerate(audited):
        bug = exceeds(audit.epsilon_lower_bound, epsilon)
        if bug:
            warn.add(i)
        share = f"{audit.epsilon_lower_bound / epsilon:.0%}" if epsilon > 0 else "-"
        rows.append(
            (
                cid,
                audit.mode,
                f"{audit.m:,}",
                f"{audit.correct} of {audit.guesses}",
                fmt_eps(audit.epsilon_lower_bound),
                fmt_eps(epsilon),
                share,
                "PRIVACY BUG: the bound exceeds ε" if bug else "consistent",
            )
        )
    modes = {audit.mode for _, _, audit in audited}
    blocks: list[Para | Table] = [
        Para(
            'An empirical check of each ε (Steinke, Nasr and Jagielski, "Privacy Auditing '
            'with One (1) Training Run", NeurIPS 2023). The server gave each audited client '
            "secret canaries, each included with probability 1/2, and then guessed which "
            "canaries were in; the right guesses prove, with "
            f"{_CONFIDENCE} confidence, that the client's training is not (ε, δ)-DP for any ε "
            "below the lower bound. The accountant's ε is an upper bound, so the lower bound "
            "must stay below it; it is usually well below, since one run and a few canaries "
            "cannot reach the worst case the accountant covers."
        ),
        Table(
            "Audited lower bound beside the accountant's ε (rows in red: a privacy bug).",
            (
                "client",
                "mode",
                "canaries",
                "right guesses",
                "lower bound",
                "accountant ε",
                "bound / ε",
                "verdict",
            ),
            tuple(rows),
            frozenset(warn),
        ),
        *(_MODE_NOTES[mode] for mode in sorted(modes) if mode in _MODE_NOTES),
        Para(
            "The canary seeds travel in the clear in the train request: the relay can learn "
            "which canaries were included, which says nothing about any client's data."
        ),
    ]
    if warn:
        blocks.insert(
            0,
            Para(
                f"**Privacy bug: {len(warn)} audited client(s) leak more than their ε.** "
                "Their training does not match its accounting (noise, clipping, sampling or a "
                "history entry is wrong); do not rely on the ε in this report."
            ),
        )
    return Section("Empirical privacy audit", ANCHOR, tuple(blocks))
