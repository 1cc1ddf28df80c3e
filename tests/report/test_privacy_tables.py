"""The privacy numbers: ε per client under both accountants, statuses, ε per round."""

from __future__ import annotations

from pathlib import Path

import pytest

from report.write import write_report
from tests.report.run_docs import ROUNDS, RunDocs, Written, build_docs, client_row, eps

# Opacus warns when the optimal RDP order lies at an end of its list: tightness, not us.
pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the (largest|smallest) alpha")


def test_every_client_has_a_row_with_both_accountants(written: Written) -> None:
    for cid, c in written.docs.privacy["clients"].items():
        history = [tuple(h) for h in c["history"]]
        cells = client_row(written.html, cid)
        assert cells[3] == str(len(c["rounds"]))  # rounds trained
        assert cells[4] == str(sum(h[2] for h in history))  # steps
        assert cells[5] == f"{c['epsilon']:.3f}"
        assert cells[6] == f"{eps(history, 'prv'):.3f}"
        assert cells[8] == "8"
        assert cells[9] == "-"  # keyed by its own label: no other node or label to name
        assert cells[10] == "ok"


def test_epsilon_over_rounds_is_reconstructed_from_history_and_rounds(written: Written) -> None:
    clients = written.docs.privacy["clients"]
    section = written.html[written.html.index('<section id="over-time">') :]
    for r in range(1, ROUNDS + 1):
        cumulative = []
        for c in clients.values():
            k = sum(1 for x in c["rounds"] if x <= r)
            cumulative.append(eps([tuple(h) for h in c["history"][:k]]))
        charged = sum(1 for c in clients.values() if r in c["rounds"])
        row = (
            f"<tr><td>{r}</td><td>{charged}</td><td>{min(cumulative):.3f}</td>"
            f"<td>{max(cumulative):.3f}</td></tr>"
        )
        assert row in section


def test_statuses_budget_reached_and_mismatch(docs: RunDocs, tmp_path: Path) -> None:
    clients = docs.privacy["clients"]
    clients["0"]["exhausted"] = True  # it refused a round
    clients["1"]["reported_epsilon"] = 0.5
    clients["1"]["mismatch"] = True
    # One more round like its last would pass this budget, so the server no longer samples it.
    clients["2"]["budget"] = clients["2"]["epsilon"] + 0.01
    html = write_report(docs.write(tmp_path / "run")).html.read_text(encoding="utf-8")
    assert client_row(html, "0")[-1] == "budget reached"
    assert client_row(html, "1")[-1] == "reported ε mismatch"
    assert client_row(html, "1")[7] == "0.500"
    assert client_row(html, "2")[-1] == "budget reached"
    assert html.count('<tr class="warn">') == 1


def test_over_budget_is_shown_not_hidden(docs: RunDocs, tmp_path: Path) -> None:
    docs.privacy["clients"]["1"]["budget"] = 1.0
    html = write_report(docs.write(tmp_path / "run")).html.read_text(encoding="utf-8")
    assert client_row(html, "1")[-1] == "over budget"
    assert client_row(html, "0")[-1] == "ok"


def test_prv_ledger_shows_rdp_beside_it(tmp_path: Path) -> None:
    docs = build_docs("prv")
    docs.privacy["clients"] = {"2": docs.privacy["clients"]["2"]}
    html = write_report(docs.write(tmp_path / "run")).html.read_text(encoding="utf-8")
    history = [tuple(h) for h in docs.privacy["clients"]["2"]["history"]]
    assert "Accountant: privacy-random-variable (PRV) accountant" in html
    assert f"<strong>ε = {eps(history, 'rdp'):.3f}</strong>" in html
    assert client_row(html, "2")[5:7] == [f"{eps(history, 'prv'):.3f}", f"{eps(history):.3f}"]
