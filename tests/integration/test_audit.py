"""``fedveil simulate --set privacy.audit=true``: every client audited, bound below ε, reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.cli import fedveil, simulate_args
from tests.integration.run_files import privacy

pytestmark = pytest.mark.slow


def test_an_audited_simulation_records_each_clients_bound_beside_its_epsilon(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    done = fedveil(*simulate_args(run, "privacy.audit=true"), timeout=600)

    assert done.returncode == 0, done.stderr[-3000:]
    ledger = privacy(run)
    assert ledger["clients"]
    for cid, client in ledger["clients"].items():
        audit = client["audit"]
        assert audit["mode"] == "white-box", cid
        assert audit["epsilon_accountant"] == client["epsilon"]
        assert audit["m"] == 4810  # one canary per parameter of the digits MLP
        assert 0 < audit["guesses"] <= audit["m"]
        assert 0 <= audit["epsilon_lower_bound"] <= client["epsilon"]
    report = (run / "report.md").read_text()
    assert "Empirical privacy audit" in report
    assert "PRIVACY BUG" not in report
