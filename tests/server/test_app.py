"""The ServerApp entry module: the report at the end of a run, the simulation-only key warning.

The round loop is replaced by a stand-in that writes a synthetic run directory (the report
tests' one), so these tests run the module's own logic without Flower's runtime.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

import pytest
from flwr.app import Context, RecordDict
from flwr.serverapp import Grid

import server.app as server_app
from common.config import FedveilConfig
from server.round_loop import RoundLoopResult
from server.rundir import RunDirectory
from tests.report.run_docs import RunDocs, build_docs

GRID = cast(Grid, object())


class StandInLoop:
    """Writes ``docs`` into the run directory and returns ``result`` (or raises ``error``)."""

    docs: RunDocs | None = None
    result = RoundLoopResult(rounds_completed=4, stopped_reason=None, final_accuracy=0.9)
    error: Exception | None = None

    def __init__(self, grid: Grid, config: FedveilConfig, run_dir: RunDirectory, **_: Any) -> None:
        self.run_dir = run_dir

    def restore(self) -> None:
        """Nothing to restore."""

    def run(self) -> RoundLoopResult:
        if self.docs is not None:
            self.docs.write(self.run_dir.path)
        if self.error is not None:
            raise self.error
        return self.result


@pytest.fixture
def loop(monkeypatch: pytest.MonkeyPatch) -> type[StandInLoop]:
    class Loop(StandInLoop):
        docs = build_docs()

    monkeypatch.setattr(server_app, "RoundLoop", Loop)
    return Loop


def context(out: Path, **run_config: Any) -> Context:
    return Context(
        run_id=7,
        node_id=0,
        node_config={},
        state=RecordDict(),
        run_config={"out-dir": str(out), **run_config},
    )


def the_run(out: Path) -> Path:
    (run,) = out.iterdir()
    return run


def app_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == server_app.__name__ and r.levelno == logging.WARNING
    ]


@pytest.mark.parametrize("stopped_reason", [None, "every client reached its budget"])
def test_flwr_run_app_writes_the_report_when_the_run_ends(
    loop: type[StandInLoop], tmp_path: Path, stopped_reason: str | None
) -> None:
    loop.result = RoundLoopResult(2, stopped_reason, 0.8)

    server_app.app(GRID, context(tmp_path))

    run = the_run(tmp_path)
    assert (run / "report.html").is_file()
    assert "fedveil run" in (run / "report.md").read_text(encoding="utf-8")
    assert list((run / "plots").glob("*.png"))


def test_a_report_failure_is_one_line_and_keeps_the_run(
    loop: type[StandInLoop], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert loop.docs is not None
    loop.docs.privacy["delta"] = "not a number"

    with caplog.at_level(logging.INFO, logger=server_app.__name__):
        server_app.app(GRID, context(tmp_path))

    run = the_run(tmp_path)
    (warning,) = app_warnings(caplog)
    assert str(run) in warning and "fedveil report" in warning
    assert "\n" not in warning
    assert not (run / "report.html").exists()
    for name in ("config.json", "metrics.jsonl", "privacy.json", "model.safetensors"):
        assert (run / name).is_file()


def test_a_report_that_raises_anything_is_still_one_line(
    loop: type[StandInLoop],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import report

    def broken(run_dir: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "write_report", broken)

    server_app.app(GRID, context(tmp_path))

    (warning,) = app_warnings(caplog)
    assert "No space left on device" in warning


def test_a_run_that_fails_writes_no_report(loop: type[StandInLoop], tmp_path: Path) -> None:
    loop.error = RuntimeError("round 1 failed")

    with pytest.raises(RuntimeError, match="round 1 failed"):
        server_app.app(GRID, context(tmp_path))

    assert not (the_run(tmp_path) / "report.html").exists()


def test_simulate_app_leaves_the_report_to_its_caller(
    loop: type[StandInLoop], tmp_path: Path
) -> None:
    # `fedveil simulate` writes the report itself, once.
    run = tmp_path / "run"
    app = server_app.build_server_app(FedveilConfig.from_flat({}), run)

    app(GRID, context(tmp_path))

    assert (run / "metrics.jsonl").is_file()
    assert not (run / "report.html").exists()


def test_on_end_gets_the_run_directory(loop: type[StandInLoop], tmp_path: Path) -> None:
    seen: list[Path] = []
    app = server_app.build_server_app(None, on_end=seen.append)

    app(GRID, context(tmp_path))

    assert seen == [the_run(tmp_path)]


def test_simulation_only_keys_are_named_in_one_warning(
    loop: type[StandInLoop], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_config = {"faults.tamper": 0.2, "attack.fraction": 0.25, "faults.drop": 0.0}

    server_app.app(GRID, context(tmp_path, **run_config))

    (warning,) = app_warnings(caplog)
    assert warning.startswith("attack.fraction, faults.tamper set")
    assert "faults.drop" not in warning


def test_default_run_config_warns_nothing(
    loop: type[StandInLoop], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server_app.app(GRID, context(tmp_path))

    assert app_warnings(caplog) == []


def test_a_simulation_is_not_warned_about_its_own_faults(
    loop: type[StandInLoop], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = FedveilConfig.from_flat({"faults.replay": 0.5})
    app = server_app.build_server_app(config, tmp_path / "run")

    app(GRID, context(tmp_path))

    assert app_warnings(caplog) == []


@pytest.mark.parametrize(
    ("flat", "named"),
    [
        ({}, []),
        ({"attack.kind": "scale"}, ["attack.kind"]),
        ({"faults.misroute": 0.1, "faults.replay": 0.1}, ["faults.misroute", "faults.replay"]),
        ({"codec.topk": 0.5, "watermark.enabled": True}, []),
    ],
)
def test_simulation_only_keys(flat: dict[str, Any], named: list[str]) -> None:
    assert server_app.simulation_only_keys(FedveilConfig.from_flat(flat)) == named
