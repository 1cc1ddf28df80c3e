"""End to end: a coordinate-wise median learns from top-k sparse updates despite attackers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.cli import fedveil, simulate_args
from tests.integration.run_files import metrics_rows

pytestmark = pytest.mark.slow

ROUNDS = 4


def test_median_of_sparse_updates_learns_with_scaled_attackers(tmp_path: Path) -> None:
    out = tmp_path / "sparse-median"
    done = fedveil(
        *simulate_args(
            out,
            "sim.clients=10",
            f"num-server-rounds={ROUNDS}",
            "aggregation=median",
            "codec.mask=topk",  # top-10 % sparse updates (the default is a shared subspace)
            "codec.topk=0.1",
            "codec.bits=8",
            "robust.assumed-malicious=0",  # f = 0: codec.topk = 0.1 over 10 clients may run
            "attack.fraction=0.2",
            "attack.kind=scale",
        ),
        timeout=600,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    rows = metrics_rows(out)
    assert [r["round"] for r in rows] == list(range(1, ROUNDS + 1))
    for row in rows:
        assert row["rejected"] == [] and len(row["clients"]) == 10
        assert row["bytes_sealed"] < row["bytes_dense"] / 8  # sparse updates indeed
    # A median over all ten decoded updates is zero almost everywhere and leaves the model near
    # chance (0.1); the median over each coordinate's senders learns.
    assert rows[-1]["accuracy"] > 0.5


def test_too_few_senders_per_coordinate_are_refused_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "refused"
    done = fedveil(
        *simulate_args(
            out, "sim.clients=10", "aggregation=median", "codec.mask=topk", "codec.topk=0.1"
        ),
        timeout=600,
    )

    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "codec.topk = 0.1" in lines[0] and "2f = 2" in lines[0]
    assert not out.exists()
