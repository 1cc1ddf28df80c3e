"""The bad inputs of issue 16 end with one line on stderr and exit 2, before anything starts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server.checkpoint import STATE_FILE, Checkpoint, save_checkpoint
from server.ledger import PrivacyLedger
from simulations.cli import main
from tests.report.run_docs import build_docs
from tests.server.test_run_contract import write_run


def _one_line_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], *words: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err


@pytest.fixture
def no_simulation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if Flower were started: the refusal must come first."""

    def started(*_: object, **__: object) -> None:
        raise AssertionError("a simulation started despite bad input")

    monkeypatch.setattr("flwr.simulation.run_simulation", started)


def _resumable_run(tmp_path: Path) -> Path:
    run = write_run(tmp_path / "run")
    ledger = PrivacyLedger(accountant="rdp", delta=1e-5, budget=8.0)
    save_checkpoint(
        run / "checkpoint",
        Checkpoint(
            run_tag="run",
            round=1,
            arrays={"fc.weight": np.zeros((2, 3), np.float32)},
            node_clients={11: "0"},
            trained_before={11},
            ledger=ledger.to_json(),
        ),
    )
    return run


def _set_state(run: Path, **fields: Any) -> None:
    path = run / "checkpoint" / STATE_FILE
    state = json.loads(path.read_text())
    state.update(fields)
    path.write_text(json.dumps(state))


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"model": "/etc/passwd"}, "model must be a file name"),
        ({"model": "../../config.json"}, "model must be a file name"),
        ({"ledger": {}}, "ledger lacks"),
        ({"round": "1"}, "round must be an integer"),
    ],
)
def test_resume_refuses_a_tampered_checkpoint(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_simulation: None,
    fields: dict[str, Any],
    named: str,
) -> None:
    run = _resumable_run(tmp_path)
    _set_state(run, **fields)

    _one_line_exit_2(capsys, ["resume", str(run)], STATE_FILE, named)


def test_resume_refuses_a_model_symlink_out_of_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_simulation: None
) -> None:
    run = _resumable_run(tmp_path)
    model = run / "checkpoint" / "global-1.safetensors"
    model.unlink()
    model.symlink_to("/etc/passwd")

    _one_line_exit_2(capsys, ["resume", str(run)], "leads outside")


def test_resume_refuses_a_deeply_nested_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_simulation: None
) -> None:
    run = _resumable_run(tmp_path)
    (run / "checkpoint" / STATE_FILE).write_text("[" * 200_000 + "]" * 200_000)

    _one_line_exit_2(capsys, ["resume", str(run)], "nested too deeply")


def test_a_deployments_resume_checks_its_checkpoint_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _resumable_run(tmp_path)
    (run / "deployment.json").write_text("{}")
    _set_state(run, model="/etc/passwd")

    def started(*_: object, **__: object) -> None:
        raise AssertionError("a federation started despite a tampered checkpoint")

    monkeypatch.setattr("deployment.federation.federation_resume", started)
    _one_line_exit_2(capsys, ["resume", str(run)], "model must be a file name")


def test_out_naming_a_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_simulation: None
) -> None:
    out = tmp_path / "notes.txt"
    out.write_text("mine\n")

    _one_line_exit_2(capsys, ["simulate", "--out", str(out)], "--out", "not a folder")

    assert out.read_text() == "mine\n"


@pytest.mark.parametrize(
    "assignment",
    [
        "dp.noise-multiplier=1e-300",
        "dp.noise-multiplier=1e308",
        "dp.target-epsilon=1e-300",
        "dp.delta=1e-300",
    ],
)
def test_dp_values_no_accountant_computes_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_simulation: None, assignment: str
) -> None:
    out = tmp_path / "run"

    _one_line_exit_2(
        capsys,
        ["simulate", "--config", "quick", "--set", assignment, "--out", str(out)],
        assignment.split("=")[0],
    )

    assert not out.exists()


def test_report_with_its_html_place_taken_by_a_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = build_docs().write(tmp_path / "run")
    (run / "report.html").mkdir()

    _one_line_exit_2(capsys, ["report", str(run)], "report.html", "not a regular file")


def test_a_usage_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["keys", "generate", "--days", "many", str(tmp_path)])

    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.splitlines()) == 1 and "--days" in err
