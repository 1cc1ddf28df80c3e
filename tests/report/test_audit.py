"""The audit section: each audited client's lower bound beside its ε; a bound above ε is a bug."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from report.write import write_report
from tests.report.run_docs import build_docs

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the (largest|smallest) alpha")


def _audit(bound: float, epsilon: float, mode: str = "white-box") -> dict[str, Any]:
    return {
        "epsilon_lower_bound": bound,
        "epsilon_accountant": epsilon,
        "m": 4810,
        "guesses": 96,
        "correct": 90,
        "mode": mode,
    }


def _report(tmp_path: Path, bounds: dict[str, float], mode: str = "white-box") -> str:
    docs = build_docs()
    for cid, share in bounds.items():
        c = docs.privacy["clients"][cid]
        c["audit"] = _audit(share * c["epsilon"], c["epsilon"], mode)
    files = write_report(docs.write(tmp_path / "run"))
    return files.html.read_text(encoding="utf-8")


def _audit_rows(html: str) -> list[tuple[str, list[str]]]:
    section = html[html.index('<section id="audit">') :]
    section = section[: section.index("</table>")]
    return [
        (attrs, re.findall(r"<td>(.*?)</td>", row))
        for attrs, row in re.findall(r"<tr([^>]*)>(.*?)</tr>", section)
        if "<td>" in row
    ]


def test_an_honest_audit_sits_beside_epsilon_without_a_warning(tmp_path: Path) -> None:
    cid = next(iter(build_docs().privacy["clients"]))
    html = _report(tmp_path, {cid: 0.4})
    [(attrs, cells)] = _audit_rows(html)
    assert cells[0] == cid
    assert cells[3] == "90 of 96"
    assert cells[6] == "40%"
    assert cells[7] == "consistent"
    assert "warn" not in attrs
    assert "Privacy bug" not in html
    assert "utility" in html[html.index('<section id="audit">') :]


def test_a_bound_above_epsilon_is_flagged_as_a_privacy_bug(tmp_path: Path) -> None:
    first, second = list(build_docs().privacy["clients"])[:2]
    html = _report(tmp_path, {first: 0.5, second: 1.3})
    rows = dict((cells[0], (attrs, cells)) for attrs, cells in _audit_rows(html))
    assert 'class="warn"' in rows[second][0]
    assert rows[second][1][7].startswith("PRIVACY BUG")
    assert "warn" not in rows[first][0]
    assert "Privacy bug: 1 audited client(s)" in html


def test_no_audit_no_section(tmp_path: Path) -> None:
    assert '<section id="audit">' not in _report(tmp_path, {})


def test_a_black_box_audit_says_its_canaries_spend_part_of_the_clients_data(
    tmp_path: Path,
) -> None:
    cid = next(iter(build_docs().privacy["clients"]))
    html = _report(tmp_path, {cid: 0.01}, mode="black-box")
    section = html[html.index('<section id="audit">') :]
    section = section[: section.index("</section>")]
    [(_, cells)] = _audit_rows(html)
    assert cells[1] == "black-box"
    assert "Black-box" in section and "spent on the audit" in section
    assert "White-box" not in section
