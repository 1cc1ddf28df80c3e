"""A benchmark run: nodes paired with partitions, and one real smallest run (slow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.codec_results import summarize_metrics
from benchmarks.runs import BenchmarkError, node_partitions, read_rounds, run_simulation
from common.weights import save_safetensors
from server.checkpoint import Checkpoint, save_checkpoint
from server.ledger_file import PrivacyFile


def _finished_run(folder: Path, node_clients: dict[int, str]) -> Path:
    arrays = {"w": np.zeros((2, 3), dtype=np.float32)}
    save_safetensors(folder / "model.safetensors", arrays)
    checkpoint = Checkpoint(
        run_tag="t",
        round=1,
        arrays=arrays,
        node_clients=node_clients,
        trained_before=set(node_clients),
        ledger=PrivacyFile(unit="example", accountant="rdp", delta=1e-5, clients=()).to_json(),
    )
    save_checkpoint(folder / "checkpoint", checkpoint)
    return folder


def test_nodes_pair_with_their_partitions(tmp_path: Path) -> None:
    run = _finished_run(tmp_path, {7048085930230898180: "1", 140199213236433: "0"})

    assert node_partitions(run) == {7048085930230898180: 1, 140199213236433: 0}


@pytest.mark.parametrize("missing", ["model.safetensors", "checkpoint/state.json"])
def test_a_run_without_its_files_cannot_be_paired(tmp_path: Path, missing: str) -> None:
    run = _finished_run(tmp_path, {1: "0"})
    (run / missing).unlink()

    with pytest.raises(BenchmarkError, match="cannot pair nodes with partitions"):
        node_partitions(run)


def test_a_run_that_finished_no_round_has_no_rows(tmp_path: Path) -> None:
    assert read_rounds(tmp_path) == []


def test_metrics_that_break_the_contract_are_one_benchmark_error(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"round": 1}\n')

    with pytest.raises(BenchmarkError, match=r"metrics\.jsonl"):
        read_rounds(tmp_path)


@pytest.mark.slow
def test_smallest_real_run_finishes_its_round_and_pairs_its_nodes(tmp_path: Path) -> None:
    run = tmp_path / "run"

    rows = run_simulation({"sim.clients": 2, "num-server-rounds": 1}, run)

    assert len(rows) == 1
    assert sorted(node_partitions(run).values()) == [0, 1]
    assert set(node_partitions(run)) == set(rows[0]["clients"])
    summary = summarize_metrics("dense", 0, rows)
    assert summary.bytes_up > 0 and 0.0 <= summary.final_accuracy <= 1.0
    assert summary.down_measured and summary.bytes_down > 0  # the signed downlink is counted
