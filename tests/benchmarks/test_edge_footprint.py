"""The edge-footprint benchmark's parsing, table and output (its cases run in fresh processes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import edge_footprint as bench

STATUS = "Name:\tpython\nVmPeak:\t  900 kB\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n"


def test_peak_rss_is_vmhwm_in_bytes() -> None:
    assert bench.peak_rss_bytes(STATUS) == 2048 * 1024


def test_a_status_without_vmhwm_is_an_error() -> None:
    with pytest.raises(ValueError, match="VmHWM"):
        bench.peak_rss_bytes("Name:\tpython\n")


def test_heavy_imports_name_top_level_packages_in_a_fixed_order() -> None:
    loaded = ["torch", "pyarrow.lib", "sklearn.datasets", "scipyx", "pandas"]

    assert bench.heavy_imports(loaded) == ["sklearn", "pandas", "pyarrow"]


def test_the_baseline_case_reports_this_process(tmp_path: Path) -> None:
    result = bench.run_child("baseline", "", tmp_path)

    assert result["status"] == "imported"
    assert result["peak_rss_bytes"] > 0 and result["seconds"] >= 0


def _result(case: str, mib: int, heavy: list[str], seconds: float = 1.5) -> dict[str, Any]:
    return {
        "case": case,
        "status": "trained",
        "seconds": seconds,
        "peak_rss_bytes": mib * bench.MIB,
        "heavy_imports": heavy,
    }


def test_the_table_shows_each_case_above_the_baseline() -> None:
    text = bench.table([_result("baseline", 300, []), _result("mnist", 420, ["pandas"])])

    assert "| mnist | trained | 420 | 120 | 1.50 | pandas |" in text
    assert "| baseline | trained | 300 | 0 | 1.50 | none |" in text


def test_main_skips_mnist_without_data_dir_and_writes_stamped_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []

    def fake_measure(case: str, data_dir: str) -> dict[str, Any]:
        asked.append(case)
        return _result(case, 100, [])

    monkeypatch.setattr(bench, "measure", fake_measure)
    out = tmp_path / "edge.json"

    assert bench.main(["--out", str(out), "--repeat", "1"]) == 0

    doc = json.loads(out.read_text())
    assert "mnist" not in asked and "digits" in asked
    assert [r["case"] for r in doc["results"]] == asked
    assert {"date", "commit", "machine"} <= set(doc)


def test_a_failing_case_is_one_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def failing(case: str, data_dir: str) -> dict[str, Any]:
        raise RuntimeError(f"case {case} failed: boom")

    monkeypatch.setattr(bench, "measure", failing)

    assert bench.main(["--cases", "digits"]) == 1
    assert capsys.readouterr().err.strip() == "edge_footprint: case digits failed: boom"


def test_a_repeated_case_keeps_the_median_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    runs = iter([(300, 2.0), (100, 3.0), (200, 1.0)])

    def measure(case: str, _: str) -> dict[str, Any]:
        mib, seconds = next(runs)
        return _result(case, mib, [], seconds)

    monkeypatch.setattr(bench, "measure", measure)

    result = bench.repeated("digits", "", 3)

    assert result["peak_rss_bytes"] == 200 * bench.MIB
    assert result["peak_rss_runs"] == [m * bench.MIB for m in (100, 200, 300)]
    assert result["seconds"] == 2.0 and result["seconds_runs"] == [1.0, 2.0, 3.0]
