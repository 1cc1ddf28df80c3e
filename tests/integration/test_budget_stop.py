"""Budgets are enforced end to end: clients stop at their budget, the run ends cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.cli import fedveil, simulate_args
from tests.integration.run_files import metrics_rows, privacy, recomputed_epsilon

pytestmark = pytest.mark.slow


def test_tight_budget_stops_clients_and_the_run_and_accounts_central_dp(tmp_path: Path) -> None:
    run = tmp_path / "run"
    # σ = 1 on 479 examples, batch 64, 2 epochs: rounds cost ε 4.70, 6.03, 7.10, 8.04 (rdp),
    # so a budget of 7.5 allows exactly three rounds of six.
    tight_budget = ("num-server-rounds=6", "dp.noise-multiplier=1.0", "dp.budget=7.5")
    central_dp = ("central-dp.noise-multiplier=0.5", "central-dp.clip=5.0")
    done = fedveil(*simulate_args(run, *tight_budget, *central_dp), timeout=600)

    assert done.returncode == 0, done.stderr[-3000:]
    ledger = privacy(run)
    assert ledger["stopped_reason"] and "budget" in ledger["stopped_reason"]
    for cid, client in ledger["clients"].items():
        assert client["rounds"] == [1, 2, 3], cid
        assert client["epsilon"] <= 7.5
        assert client["epsilon"] == pytest.approx(recomputed_epsilon(client, ledger))
    rows = metrics_rows(run)
    assert [r["round"] for r in rows] == [1, 2, 3]
    central = ledger["central"]
    assert central is not None and len(central["history"]) == 3
    assert central["epsilon"] == pytest.approx(recomputed_epsilon(central, ledger))
    assert (run / "model.safetensors").is_file()
    assert "budget" in (run / "report.md").read_text()


def test_budget_below_one_round_is_refused_naming_the_smallest(tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = fedveil(*simulate_args(run, "dp.noise-multiplier=1.0", "dp.budget=1.0"), timeout=300)

    assert done.returncode == 2
    err = done.stderr.strip()
    assert len(err.splitlines()) == 1
    assert "dp.budget" in err and "smallest budget that works is 4.697" in err
    assert not run.exists()
