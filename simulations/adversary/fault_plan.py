"""Which sampled clients are told to misbehave this round (fault injection, seeded).

``tamper``, ``replay`` and ``misroute`` send a bad sealed update; ``drop`` vanishes mid-round
before training (as a node that loses power would), so the round must finish without it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FaultPlan:
    """Fault kind per node, and for misroutes the node whose context the update claims."""

    kinds: dict[int, str]
    targets: dict[int, int]


def plan_faults(
    sampled: Sequence[int],
    *,
    tamper: float,
    replay: float,
    misroute: float,
    drop: float = 0.0,
    trained_before: Collection[int],
    seed: int,
    server_round: int,
) -> FaultPlan:
    """Assign disjoint faulty subsets of ``round(fraction * len(sampled))`` nodes each.

    Replays need an update from an earlier round, so only nodes in ``trained_before`` replay;
    a misrouted update claims the context of another sampled node.
    """
    rng = np.random.default_rng([seed, server_round, 0xFA17])
    order = [sampled[int(i)] for i in rng.permutation(len(sampled))]
    kinds: dict[int, str] = {}
    targets: dict[int, int] = {}
    n = len(sampled)
    plan = (("replay", replay), ("tamper", tamper), ("misroute", misroute), ("drop", drop))
    for kind, fraction in plan:
        want = round(fraction * n)
        for node in order:
            if want == 0:
                break
            if node in kinds or (kind == "replay" and node not in trained_before):
                continue
            if kind == "misroute":
                others = [m for m in sampled if m != node]
                if not others:
                    continue
                targets[node] = others[int(rng.integers(len(others)))]
            kinds[node] = kind
            want -= 1
    return FaultPlan(kinds, targets)
