"""``fedveil bench``: ratio checks, step timing, and the quick form end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from simulations.bench import check_ratios, main, step_times
from tests.conftest import REPO


@pytest.mark.parametrize(
    ("ratios", "bad"),
    [
        ({"a": 1.5, "b": {"x": 2.0}}, []),
        ({"a": 0.0, "b": {"x": float("nan")}, "c": None}, ["a", "b.x", "c"]),
        ({"a": float("inf"), "b": -1.0}, ["a", "b"]),
    ],
)
def test_check_ratios_names_every_bad_field(ratios: dict[str, Any], bad: list[str]) -> None:
    assert check_ratios({"ratios": ratios}) == bad


def test_step_times_cover_every_opacus_mode() -> None:
    times = step_times("mlp", (1, 8, 8), batch_size=16, blocks=1, steps_per_block=2)

    assert set(times) == {"nonprivate", "hooks", "functorch", "ew", "ghost"}
    assert all(math.isfinite(t) and t >= 0 for t in times.values())


def test_bad_config_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--set", "dp.delta=2", "--no-steps"]) == 2
    assert "dp.delta" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_bench_writes_positive_finite_ratios(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    done = subprocess.run(
        [sys.executable, "-m", "simulations.bench", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "bench.json").read_text())
    ratios = report["ratios"]
    for key in (
        "steady_round_time",
        "wall_time",
        "uplink_bytes_per_round",
        "peak_tree_rss",
        "peak_tree_pss",
        "client_cpu_per_call",
        "seal_open_share",
    ):
        assert key in ratios, key
    assert set(ratios["dp_step"]) == {"mlp", "cnn"}
    assert all(set(m) == {"hooks", "functorch", "ew", "ghost"} for m in ratios["dp_step"].values())
    assert check_ratios(report) == []
    assert report["variants"]["fedveil"]["uplink_bytes_per_round"] > 0
    assert "steady round" in done.stdout
