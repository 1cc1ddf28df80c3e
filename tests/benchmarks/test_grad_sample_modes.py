"""The grad-sample-mode benchmark: its JSON, the mode it fits, and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import grad_sample_modes as bench
from client.trainer import GHOST, HOOKS
from simulations.bench_steps import MODES


def test_a_short_run_writes_every_mode_of_both_models_and_fits_the_trainers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "modes.json"
    args = ["--device", "cpu", "--batch-size", "16", "--blocks", "1", "--steps-per-block", "1"]

    assert bench.main([*args, "--out", str(out)]) == 0

    doc = json.loads(out.read_text())
    assert doc["device"] == "cpu" and doc["commit"] is not None
    for name in ("mlp", "cnn", "cnn-wide"):
        row = doc["models"][name]
        assert set(row["ratio_to_plain"]) == set(MODES)
        assert all(t > 0 for t in row["step_seconds"].values())
        assert row["takes_empty_batch"]["hooks"]
        # Only a mode that takes empty batches and the same step as hooks may fit.
        assert row["fit"] in MODES and row["takes_empty_batch"][row["fit"]]
        assert row["relative_difference_to_hooks"][row["fit"]] <= bench.SAME
    assert {HOOKS, GHOST} <= set(MODES)
    assert "fit:" in capsys.readouterr().out


def test_a_step_on_an_empty_batch_moves_by_noise_only() -> None:
    x, y = bench.fixed_batch((1, 8, 8), 8, torch.device("cpu"))

    # σ = 0 and no example: the step is exactly zero.
    assert float(bench.dp_step("mlp", "hooks", x, y, batch=slice(0)).abs().max()) == 0.0
    assert bench.takes_empty_batch("mlp", "hooks", x, y)


@pytest.mark.parametrize("args", [["--device", "gpu"], ["--blocks", "0"], ["--batch-size", "-1"]])
def test_bad_options_are_refused_in_one_line(
    args: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert bench.main([*args, "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("benchmarks.grad_sample_modes: error:") and err.count("\n") == 1
    assert not (tmp_path / "x.json").exists()
