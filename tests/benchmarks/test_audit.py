"""The audit benchmark's reading of privacy.json and its summary, on fabricated ledgers."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.audit import BASE, CASES, client_audits, main, summarize
from benchmarks.runs import BenchmarkError
from common.config import FedveilConfig


def _client(epsilon: float, bound: float | None) -> dict[str, Any]:
    audit = None
    if bound is not None:
        audit = {
            "epsilon_lower_bound": bound,
            "epsilon_accountant": epsilon,
            "m": 100,
            "guesses": 10,
            "correct": 9,
            "mode": "white-box",
        }
    return {"epsilon": epsilon, "audit": audit}


def test_client_audits_skip_clients_without_an_audit() -> None:
    doc = {"clients": {"0": _client(4.0, 1.0), "1": _client(4.0, None), "2": _client(2.0, 1.0)}}
    rows = client_audits(doc)
    assert [r["client"] for r in rows] == ["0", "2"]
    assert [r["share"] for r in rows] == [0.25, 0.5]


def test_summary_flags_a_bound_above_epsilon() -> None:
    honest = summarize([{"share": 0.25}, {"share": 0.5}])
    assert honest["max_share"] == 0.5 and honest["mean_share"] == 0.375
    assert honest["any_bound_above_epsilon"] is False
    assert summarize([{"share": 1.2}])["any_bound_above_epsilon"] is True
    with pytest.raises(BenchmarkError, match="no client was audited"):
        summarize([])


def test_every_case_is_a_valid_audited_config() -> None:
    for case in CASES.values():
        config = FedveilConfig.from_flat({**BASE, **case})
        assert config.dp_target_epsilon == 4.0
    assert FedveilConfig.from_flat({**BASE, **CASES["codec"]}).privacy_audit
    assert not FedveilConfig.from_flat({**BASE, **CASES["no-audit"]}).privacy_audit
    black_box = FedveilConfig.from_flat({**BASE, **CASES["black-box"]})
    assert black_box.privacy_audit and black_box.privacy_audit_mode == "black-box"


def test_bad_arguments_end_with_one_line_and_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--seeds", "0"]) == 2
    assert main(["--set", "nonsense"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("benchmarks.audit: error:") for line in lines)
