"""The privacy-utility benchmark's cells, table and JSON, on fabricated runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.privacy_utility import (
    DELTA,
    TUNED,
    cell_name,
    markdown_table,
    plain_config,
    private_cell,
    private_config,
    read_results,
    summary_json,
)


def _cell(accuracy: float, epsilon: float | None) -> dict[str, Any]:
    return {"accuracy": accuracy, "epsilon_max": epsilon}


def test_cell_names() -> None:
    assert cell_name("iid", 3.0) == "iid-eps3"
    assert cell_name("dirichlet", 0.5) == "dirichlet-eps0.5"
    assert cell_name("dirichlet", None) == "dirichlet-nodp"


def test_a_private_cell_spends_its_target_and_the_baseline_keeps_its_optimizer() -> None:
    config = private_config(TUNED, "dirichlet", 3.0, "/data", "/out")
    baseline = plain_config(TUNED, {"lr": 0.02}, "iid", "/data")

    assert config.dp_target_epsilon == 3.0 and config.dp_budget == pytest.approx(3.003)
    assert config.dp_delta == DELTA and config.partitioning == "dirichlet"
    assert baseline.lr == 0.02 and baseline.partitioning == "iid"


def test_private_cell_reads_final_accuracy_largest_epsilon_and_sigmas() -> None:
    rows = [{"accuracy": 0.5}, {"accuracy": 0.8}]
    privacy = {
        "clients": {
            "0": {"epsilon": 2.9, "history": [[1.2, 0.04, 10], [1.2, 0.04, 10]]},
            "1": {"epsilon": 3.0, "history": [[1.3, 0.05, 10]]},
        }
    }

    cell = private_cell(rows, privacy)

    assert cell == {
        "accuracy": 0.8,
        "accuracies": [0.5, 0.8],
        "rounds": 2,
        "epsilon_max": 3.0,
        "sigma": [1.2, 1.3],
    }


def test_table_has_a_row_per_split_and_opacus_beside_it() -> None:
    results = {"iid-eps1": _cell(0.871, 0.999), "iid-nodp": _cell(0.986, None)}

    lines = markdown_table(results, [1.0, 8.0]).splitlines()

    assert lines[0] == "| MNIST, 20 clients | ε = 1 | ε = 8 | no DP |"
    assert lines[2] == "| fedveil, IID | 87.1 % (ε 1.00) | not run | 98.6 % |"
    assert lines[3].startswith("| fedveil, Dirichlet α = 0.5 | not run |")
    assert lines[4] == "| Opacus central (reference) | 94.6 % (ε 1.16) | 97.1 % (ε 6.86) | 98.9 % |"


def test_results_file_keeps_the_last_line_of_each_cell(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text(
        "".join(
            json.dumps({"cell": c, "accuracy": a}) + "\n"
            for c, a in [("iid-eps1", 0.1), ("iid-eps3", 0.2), ("iid-eps1", 0.3)]
        )
    )

    done = read_results(path)

    assert {k: v["accuracy"] for k, v in done.items()} == {"iid-eps1": 0.3, "iid-eps3": 0.2}
    assert read_results(tmp_path / "absent.jsonl") == {}


def test_summary_json_holds_the_cells_and_the_table() -> None:
    cells = {"iid-eps1": _cell(0.871, 0.999)}

    doc = summary_json(cells, [1.0], "| table |")

    assert doc == {
        "benchmark": "privacy_utility",
        "epsilons": [1.0],
        "cells": cells,
        "table": "| table |",
    }
