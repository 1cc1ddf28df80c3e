"""privacy.json: the contract's JSON from the live ledger, exact round trips, refusals by name."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from common.accounting import epsilon_from_history
from server.json_checks import RunFileError
from server.ledger import CentralAccount, PrivacyLedger
from server.ledger_file import PrivacyFile, read_privacy, write_privacy
from server.planning import ClientPlan

DELTA = 1e-5
ENTRY = (1.1, 0.25, 4)


def live_ledger() -> PrivacyLedger:
    ledger = PrivacyLedger(accountant="rdp", delta=DELTA, budget=6.0)
    ledger.plan = {"2": ClientPlan("2", 1.1, 0.25, 4, 2, 1.5, 0.9)}
    ledger.central = CentralAccount(noise_multiplier=2.0, clip=0.5)
    for rnd in (1, 2):
        for cid in ("10", "2", "node-a"):
            ledger.charge(cid, rnd, ENTRY, 0.25)
        ledger.central.release(0.5, delta=DELTA, accountant="rdp")
    ledger.note_refusal("10")
    return ledger


def test_the_document_has_the_contract_keys_in_order() -> None:
    doc = live_ledger().to_json()

    assert list(doc) == [
        "unit",
        "accountant",
        "delta",
        "clients",
        "central",
        "plan",
        "stopped_reason",
    ]
    assert list(doc["clients"]) == ["2", "10", "node-a"]  # numeric ids in numeric order
    assert list(doc["clients"]["2"]) == [
        "epsilon",
        "budget",
        "exhausted",
        "history",
        "rounds",
        "reported_epsilon",
        "mismatch",
        "label",
        "node",
        "flags",
        "node_limits",
        "audit",
    ]
    assert list(doc["central"]) == ["epsilon", "delta", "noise_multiplier", "clip", "history"]


def test_the_document_holds_the_ledgers_numbers() -> None:
    doc = live_ledger().to_json()

    eps = epsilon_from_history([ENTRY, ENTRY], delta=DELTA, accountant="rdp")
    assert doc["clients"]["10"] == {
        "epsilon": pytest.approx(eps),
        "budget": 6.0,
        "exhausted": True,
        "history": [list(ENTRY), list(ENTRY)],
        "rounds": [1, 2],
        "reported_epsilon": 0.25,
        "mismatch": True,
        "label": None,
        "node": None,
        "flags": [],
        "node_limits": {},
        "audit": None,
    }
    assert doc["central"]["history"] == [[2.0, 0.5, 1], [2.0, 0.5, 1]]
    assert doc["plan"]["2"]["one_round_epsilon"] == 0.9


def test_save_writes_indented_json_that_reads_back(tmp_path: Path) -> None:
    ledger = live_ledger()
    ledger.stopped_reason = "1 client available, 2 needed"
    path = tmp_path / "privacy.json"

    ledger.save(path)

    assert path.read_text() == json.dumps(ledger.to_json(), indent=2) + "\n"
    assert read_privacy(path).to_json() == ledger.to_json()


def test_the_live_ledger_round_trips_through_its_document() -> None:
    ledger = live_ledger()

    again = PrivacyLedger.from_json(ledger.to_json())

    assert again.to_json() == ledger.to_json()
    assert again.budget == ledger.budget
    assert again.account("2").history == [ENTRY, ENTRY]


def test_a_resumed_ledger_is_running_again() -> None:
    ledger = live_ledger()
    ledger.stopped_reason = "stopped before round 3"

    assert PrivacyLedger.from_json(ledger.to_json()).stopped_reason is None


def test_a_budget_per_client_is_kept_by_the_file(tmp_path: Path) -> None:
    doc = live_ledger().to_json()
    doc["clients"]["2"]["budget"] = None
    path = tmp_path / "privacy.json"
    write_privacy(path, PrivacyFile.from_json(doc))

    budgets = {c.cid: c.budget for c in read_privacy(path).clients}

    assert budgets == {"2": None, "10": 6.0, "node-a": 6.0}


def test_optional_parts_may_be_absent() -> None:
    doc = live_ledger().to_json()
    for key in ("plan", "stopped_reason"):
        doc.pop(key)
    for c in doc["clients"].values():
        c.pop("reported_epsilon")
        c.pop("mismatch")

    privacy = PrivacyFile.from_json(doc)

    assert privacy.plan == {} and privacy.stopped_reason is None
    assert all(c.reported_epsilon is None and not c.mismatch for c in privacy.clients)


Change = Callable[[dict[str, Any]], None]


def _client(key: str, value: Any) -> Change:
    return lambda d: d["clients"]["2"].__setitem__(key, value)


BAD: dict[str, tuple[Change, str]] = {
    "another version": (lambda d: d.__setitem__("version", 2), "unknown keys ['version']"),
    "lacks delta": (lambda d: d.pop("delta"), "the ledger lacks delta"),
    "unit": (lambda d: d.__setitem__("unit", "group"), "unit must be one of"),
    "accountant": (lambda d: d.__setitem__("accountant", "gdp"), "accountant must be one of"),
    "delta 1": (lambda d: d.__setitem__("delta", 1.0), "delta must be in (0, 1)"),
    "delta text": (lambda d: d.__setitem__("delta", "1e-5"), "delta must be a finite number"),
    "clients a list": (lambda d: d.__setitem__("clients", []), "clients must be an object"),
    "client lacks history": (lambda d: d["clients"]["2"].pop("history"), "client 2 lacks history"),
    "epsilon a bool": (_client("epsilon", True), "client 2 epsilon must be a finite number"),
    "exhausted text": (_client("exhausted", "yes"), "client 2 exhausted must be true or false"),
    "entry of two": (_client("history", [[1.1, 0.25]]), "client 2 history[0] must be"),
    "sigma 0": (_client("history", [[0.0, 0.25, 4]]), "client 2 history[0] = "),
    "rate above 1": (_client("history", [[1.1, 1.5, 4]]), "out of range"),
    "steps a float": (_client("history", [[1.1, 0.25, 4.0]]), "history[0] steps must be"),
    "round 0": (_client("rounds", [0, 1]), "client 2 rounds entry must be an integer >= 1"),
    "central lacks history": (lambda d: d["central"].pop("history"), "central lacks history"),
    "plan lacks sigma": (
        lambda d: d["plan"]["2"].pop("noise_multiplier"),
        "plan of client 2 lacks noise_multiplier",
    ),
    "stopped_reason a number": (
        lambda d: d.__setitem__("stopped_reason", 3),
        "stopped_reason must be a string",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_document_is_refused_naming_file_and_problem(case: str, tmp_path: Path) -> None:
    change, problem = BAD[case]
    doc = copy.deepcopy(live_ledger().to_json())
    change(doc)
    path = tmp_path / "privacy.json"
    path.write_text(json.dumps(doc))

    with pytest.raises(RunFileError) as info:
        read_privacy(path)

    message = str(info.value)
    assert message.startswith(f"{path}: ") and problem in message, message


def test_resuming_refuses_a_central_account_without_its_mechanism() -> None:
    doc = live_ledger().to_json()
    doc["central"].pop("noise_multiplier")

    with pytest.raises(RunFileError, match="noise_multiplier"):
        PrivacyLedger.from_json(doc)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(RunFileError, match=r"privacy\.json: missing"):
        read_privacy(tmp_path / "privacy.json")
