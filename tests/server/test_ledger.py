"""PrivacyLedger: charge once, the costliest candidate, mismatch, accounts, exhausted, resume."""

from __future__ import annotations

import math

import pytest

from common import protocol
from common.accounting import ACCOUNTABLE, epsilon_from_history
from server.ledger import (
    DP_FACTS,
    SHARED_LABEL,
    UNACCOUNTABLE,
    PrivacyLedger,
)
from server.planning import ClientPlan

# Opacus warns when the optimal RDP order lies at an end of its list: tightness, not us.
pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the (largest|smallest) alpha")

DELTA = 1e-5
PLAN = (1.1, 0.05, 40)
# Anything an honest client would never declare, each a different way.
HOSTILE = [
    (1e-300, 0.05, 40.0),
    (-1.0, 0.05, 40.0),
    (1.1, 0.05, 1e300),
    (math.nan, 0.05, 40.0),
    (1.1, math.nan, 40.0),
    (-math.inf, 0.05, 40.0),
    (1.1, 0.05, math.inf),
]


def eps(*entries: tuple[float, float, int]) -> float:
    return epsilon_from_history(list(entries), delta=DELTA, accountant="rdp")


def ledger(budget: float | None = 8.0) -> PrivacyLedger:
    led = PrivacyLedger(accountant="rdp", delta=DELTA, budget=budget)
    led.plan["5"] = ClientPlan(
        "5", *PLAN, planned_rounds=4, planned_epsilon=2.0, one_round_epsilon=1.0
    )
    return led


def test_a_round_is_charged_once() -> None:
    led = ledger()

    led.charge("5", 1, PLAN, eps(PLAN))
    again = led.charge("5", 1, PLAN, eps(PLAN), declared=[(0.5, 0.5, 400.0)])

    assert again.history == [PLAN] and again.rounds == [1]
    assert again.epsilon == pytest.approx(eps(PLAN))
    assert not again.mismatch


def test_the_costliest_of_plan_and_declarations_is_charged() -> None:
    led = ledger()

    cheaper = led.charge("5", 1, PLAN, declared=[(2.0, 0.05, 40.0)])
    dearer = led.charge("5", 2, PLAN, declared=[(0.8, 0.05, 40.0), (1.1, 0.1, 40.0)])

    assert cheaper.history[0] == PLAN  # declaring more noise buys nothing
    assert dearer.history[1] == max([(0.8, 0.05, 40), (1.1, 0.1, 40)], key=lambda e: eps(PLAN, e))
    assert dearer.epsilon == pytest.approx(eps(*dearer.history))
    assert UNACCOUNTABLE not in dearer.flags and not dearer.exhausted


def test_a_reported_epsilon_that_differs_is_a_mismatch_never_charged() -> None:
    led = ledger()

    acct = led.charge("5", 1, PLAN, 0.001)

    assert acct.mismatch and acct.reported_epsilon == 0.001
    assert acct.epsilon == pytest.approx(eps(PLAN))


@pytest.mark.parametrize("declared", HOSTILE)
def test_unaccountable_declarations_close_the_account_and_never_raise(
    declared: tuple[float, float, float],
) -> None:
    led = ledger()

    acct = led.charge("5", 1, PLAN, math.nan, declared=[declared], flags=[DP_FACTS])

    assert acct.rounds == [1] and math.isfinite(acct.epsilon)
    assert acct.epsilon >= eps(PLAN)  # at least the plan
    lo, hi = ACCOUNTABLE.sigma
    assert all(lo <= s <= hi and n <= ACCOUNTABLE.steps[1] for s, _, n in acct.history)
    assert {UNACCOUNTABLE, DP_FACTS} <= acct.flags and acct.exhausted
    assert acct.mismatch  # a NaN report never matches
    assert not led.can_train("5")


def test_declarations_out_of_range_on_the_safe_side_are_bounded_not_flagged() -> None:
    led = ledger()

    acct = led.charge("5", 1, PLAN, declared=[(1e9, -3.0, 0.0), (math.inf, 2.0, 0.5)])

    # σ cut to its ceiling, q raised to its floor or cut to 1, steps raised to 1: never cheaper.
    assert UNACCOUNTABLE not in acct.flags and not acct.exhausted
    assert acct.history == [PLAN]  # both bounded entries cost less than the plan


def test_two_nodes_declaring_one_label_are_two_accounts_both_flagged() -> None:
    led = ledger()
    led.note_node("31", node=31, label="4")
    led.note_node("32", node=32, label="4")
    led.note_node("33", node=33, label="5")

    led.charge("31", 1, PLAN)
    led.charge("32", 1, PLAN)
    doc = led.to_json()["clients"]

    assert doc["31"]["history"] == doc["32"]["history"] == [list(PLAN)]  # nothing merged
    assert doc["31"]["flags"] == doc["32"]["flags"] == [SHARED_LABEL]
    assert doc["33"]["flags"] == []
    assert (doc["31"]["label"], doc["31"]["node"]) == ("4", 31)


def test_exhausted_when_the_next_round_would_pass_the_budget() -> None:
    led = ledger(budget=eps(PLAN, PLAN) * 1.01)

    first = led.charge("5", 1, PLAN)
    assert not first.exhausted and led.can_train("5")
    second = led.charge("5", 2, PLAN)

    assert second.exhausted and not led.can_train("5")  # found out by the server, not the client


def test_exhausted_by_the_nodes_own_limits_and_by_a_refusal() -> None:
    led = ledger(budget=100.0)
    led.note_node("5", node=5, label="5", limits={protocol.NODE_MAX_ROUNDS: 1.0})
    led.note_node("6", node=6, label="6", limits={protocol.NODE_MAX_EPSILON: eps(PLAN) * 1.01})
    led.plan["6"] = led.plan["5"]

    led.charge("5", 1, PLAN)
    led.charge("6", 1, PLAN)
    led.note_refusal("7")

    assert [led.can_train(c) for c in ("5", "6", "7")] == [False, False, False]
    assert all(led.account(c).exhausted for c in ("5", "6", "7"))


def test_resume_round_trip_keeps_every_account_and_never_resets_a_budget() -> None:
    led = ledger(budget=eps(PLAN, PLAN) * 1.01)
    led.note_node("5", node=5, label="3", limits={protocol.NODE_MIN_NOISE: 1.0})
    led.charge("5", 1, PLAN, 0.5, declared=[(1e-300, 0.05, 40.0)], flags=[DP_FACTS])
    led.charge("6", 1, PLAN)
    led.charge("6", 2, PLAN)

    again = PrivacyLedger.from_json(led.to_json())

    assert again.to_json() == led.to_json()
    for cid in ("5", "6"):
        before, after = led.account(cid), again.account(cid)
        assert (after.history, after.rounds, after.epsilon) == (
            before.history,
            before.rounds,
            before.epsilon,
        )
        assert after.exhausted and not again.can_train(cid)
    assert again.account("5").flags == {DP_FACTS, UNACCOUNTABLE}
    assert again.account("5").node_limits == {protocol.NODE_MIN_NOISE: 1.0}
    assert again.account("5").label == "3"
