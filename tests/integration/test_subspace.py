"""End to end: a shared-subspace run is small both ways, robust, and learns."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.cli import fedveil, simulate_args
from tests.integration.run_files import metrics_rows

pytestmark = pytest.mark.slow

ROUNDS = 4


def test_a_subspace_run_sends_a_tenth_both_ways_and_its_median_learns_despite_attackers(
    tmp_path: Path,
) -> None:
    out = tmp_path / "subspace"
    done = fedveil(
        *simulate_args(
            out,
            "sim.clients=10",
            f"num-server-rounds={ROUNDS}",
            "codec.mask=subspace",
            "codec.topk=0.25",
            "codec.bits=8",
            "aggregation=median",
            "robust.assumed-malicious=2",  # every client sends every kept coordinate: n > 2f
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
        # A quarter of the coordinates at 8 bits, no index bytes: a sixteenth of float32.
        assert row["bytes_sealed"] < row["bytes_dense"] / 12
    # Round 1 names the seeded initial model; later rounds send only last round's subspace.
    assert rows[0]["bytes_down"] < rows[0]["bytes_dense"] / 20
    for row in rows[1:]:
        assert row["bytes_down"] < row["bytes_dense"] / 10
    assert rows[-1]["accuracy"] > 0.5
