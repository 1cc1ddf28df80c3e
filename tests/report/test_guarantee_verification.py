"""What the server verifies, flagged accounts, the node's own limits and the error channel."""

from __future__ import annotations

from pathlib import Path

import pytest

from common import protocol
from report.analysis import ReportError, analyse
from report.write import write_report
from tests.report.run_docs import RunDocs, Written, add_plan, client_row

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the (largest|smallest) alpha")


def test_the_statement_says_what_the_server_verifies_and_cannot(written: Written) -> None:
    html = written.html
    statement = html[html.index('<section id="statement">') : html.index('<section id="channels">')]

    assert "What the server verifies, and what it cannot." in statement
    assert "Each client supplies its own DP facts" in statement
    assert "nobody can check a client&#x27;s noise from outside its device" in statement
    assert "lower bound on ε" in statement
    assert "Warning: clients" not in statement  # no account is flagged


def test_the_error_channel_and_the_node_limits_channel_are_listed(written: Written) -> None:
    channels = written.html[written.html.index('<section id="channels">') :]

    assert "Error report: a Flower error code and message" in channels
    assert "only the error code and the exception&#x27;s type" in channels
    assert "The node&#x27;s own limits (max ε, min σ, max rounds)" in channels
    assert "Client-supplied DP facts." in written.html


def test_flagged_accounts_are_warned_about_and_named_in_their_status(
    docs: RunDocs, tmp_path: Path
) -> None:
    clients = docs.privacy["clients"]
    clients["0"]["flags"] = ["dp-facts", "shared-label"]
    clients["0"].update(label="7", node=101)
    clients["1"]["flags"] = ["shared-label", "unaccountable"]
    clients["1"].update(label="7", node=202, exhausted=True)
    clients["2"]["flags"] = ["error-after-training"]

    html = write_report(docs.write(tmp_path / "run")).html.read_text(encoding="utf-8")

    assert "Warning: clients 0 declared DP facts that differ from their plan" in html
    assert "Warning: clients 1 declared DP facts no accountant can compute" in html
    assert "Warning: clients 2 failed after training" in html
    assert "Warning: clients 0, 1 declared a label another node declares too" in html
    assert client_row(html, "0")[-2:] == [
        "node 101, label 7",
        "DP facts differed from its plan, label shared",
    ]
    assert client_row(html, "1")[-1] == "budget reached, label shared, ε is a lower bound"
    assert client_row(html, "2")[-1] == "failed after training"


def test_each_nodes_own_limits_are_listed_in_the_plan(docs: RunDocs, tmp_path: Path) -> None:
    add_plan(docs)
    docs.privacy["clients"]["0"]["node_limits"] = {
        protocol.NODE_MAX_EPSILON: 2.5,
        protocol.NODE_MIN_NOISE: 1.2,
        protocol.NODE_MAX_ROUNDS: 4.0,
    }
    docs.privacy["clients"]["1"]["node_limits"] = {protocol.NODE_MAX_ROUNDS: 3.0}

    html = write_report(docs.write(tmp_path / "run")).html.read_text(encoding="utf-8")

    plan = html[html.index("node&#x27;s own limits</th>") :]
    assert "<td>ε ≤ 2.5, σ ≥ 1.2, ≤ 4 rounds</td>" in plan
    assert "<td>≤ 3 rounds</td>" in plan
    assert "<td>none</td>" in plan  # client 2 reported none


@pytest.mark.parametrize("sigma", [1e-300, 1.7e308])
def test_a_ledger_entry_no_accountant_computes_is_refused_in_one_line(
    docs: RunDocs, tmp_path: Path, sigma: float
) -> None:
    docs.privacy["clients"]["2"]["history"][0][0] = sigma

    with pytest.raises(ReportError) as refused:
        analyse(docs.write(tmp_path / "run"))

    message = str(refused.value)
    assert "client 2 history[0]" in message and "outside what an accountant computes" in message
    assert "\n" not in message
