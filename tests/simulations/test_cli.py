"""Bad input on the command line: one line naming the problem, exit 2, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from simulations.cli import main, resolve_config
from tests.conftest import REPO
from tests.server.test_run_contract import write_run


@pytest.mark.parametrize(
    ("sets", "named"),
    [
        (["nonsense-key=1"], "nonsense-key"),
        (["dp.target-epsilon=0"], "dp.target-epsilon"),
        (["dp.target-epsilon=-1"], "dp.target-epsilon"),
        (["dp.delta=1"], "dp.delta"),
        (["dp.delta=0"], "dp.delta"),
        (["fraction-train=0"], "fraction-train"),
        (["fraction-train=1.5"], "fraction-train"),
        (["dataset=mnist", "data-dir=/nonexistent/fedveil-data"], "data-dir"),
        (["codec.bits=12"], "codec.bits"),
        (["faults.tamper=0.6", "faults.replay=0.6"], "faults"),
        (["robust.root-examples=100000"], "robust.root-examples"),
        (["seed"], "KEY=VALUE"),
    ],
)
def test_bad_config_is_one_line_exit_2_and_writes_nothing(
    sets: list[str], named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["simulate", "--out", str(out)]
    for s in sets:
        argv += ["--set", s]

    status = main(argv)

    err = capsys.readouterr().err.strip()
    assert status == 2
    assert len(err.splitlines()) == 1 and named in err
    assert "Traceback" not in err
    assert not out.exists()


def test_corrupt_data_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "mnist"
    data.mkdir()
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (data / f"{name}.gz").write_bytes(b"\x1f\x8b not really gzip")
    out = tmp_path / "run"

    status = main(
        ["simulate", "--out", str(out), "--set", "dataset=mnist", "--set", f"data-dir={tmp_path}"]
    )

    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1
    assert "train-images-idx3-ubyte.gz" in err
    assert not out.exists()


def test_existing_run_directory_is_not_touched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    precious = tmp_path / "run" / "metrics.jsonl"
    precious.parent.mkdir()
    precious.write_text("precious\n")
    out = precious.parent

    status = main(["simulate", "--config", "quick", "--out", str(out)])

    assert status == 2
    assert "already holds files" in capsys.readouterr().err
    assert precious.read_text() == "precious\n"
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl"]


def test_missing_config_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["simulate", "--config", str(tmp_path / "nope.toml")])
    assert status == 2 and "nope.toml" in capsys.readouterr().err


def test_precedence_defaults_then_file_then_set(tmp_path: Path) -> None:
    preset = tmp_path / "p.toml"
    preset.write_text("num-server-rounds = 7\n[dp]\ndelta = 1e-6\n")

    config = resolve_config(str(preset), ["dp.delta=1e-7", "codec.error-feedback=false"])

    assert config.num_server_rounds == 7
    assert config.dp_delta == 1e-7
    assert config.codec_error_feedback is False


def test_help_lists_every_config_key() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "simulations.cli", "simulate", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    from common.config import KEYS

    for key in KEYS:
        assert key in done.stdout


# --------------------------------------------------------------------------- fedveil check


def test_check_prints_the_summary_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = write_run(tmp_path / "run")

    status = main(["check", str(run)])

    assert status == 0
    assert capsys.readouterr().out == (
        "contract holds: 2 rounds, 2 clients, final accuracy 0.812\n"
    )


def test_check_names_the_broken_promise_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = write_run(tmp_path / "run")
    (run / "metrics.jsonl").write_text('{"round": 1, "accuracy": 0.5}\n')

    status = main(["check", str(run)])

    out = capsys.readouterr().out
    assert status == 1
    assert out.startswith("contract broken: ") and "line 1 lacks loss" in out
    assert len(out.splitlines()) == 1


def test_check_of_a_missing_folder_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["check", str(tmp_path / "absent")])

    err = capsys.readouterr().err
    assert status == 2
    assert "absent is not a directory" in err and len(err.splitlines()) == 1


# --------------------------------------------------------------------------- a user's task
BATCHNORM_TASK = """
from torch import nn

from common.task import Examples, Task


class Rows(Task):
    num_classes = property(lambda self: 2)
    input_shape = property(lambda self: (4,))

    def build_model(self):
        return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))

    def node_examples(self, data_path):
        raise NotImplementedError

    def test_examples(self):
        raise NotImplementedError


def make_task(settings):
    return Rows()
"""


@pytest.mark.parametrize(
    ("module", "source", "named"),
    [
        ("fedveil_bn_task", BATCHNORM_TASK, "BatchNorm1d"),
        ("fedveil_absent_task", None, "fedveil_absent_task` not found"),
        ("fedveil_broken_task", "raise RuntimeError('no GPU here')", "RuntimeError: no GPU here"),
    ],
    ids=["batchnorm", "missing", "raises-on-import"],
)
def test_an_unusable_task_is_one_line_exit_2_before_anything_starts(
    module: str,
    source: str | None,
    named: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if source is not None:
        (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"

    status = main(["simulate", "--config", "quick", "--out", str(out), "--set", f"task={module}"])

    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1
    assert named in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("served", [True, False])
def test_a_deployments_report_is_written_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], served: bool
) -> None:
    from rich.console import Console

    from simulations.cli import _finish
    from tests.report.run_docs import build_docs

    run = build_docs().write(tmp_path / "run")
    if served:  # the ServerApp wrote it when the run ended
        (run / "report.html").write_text("written by the ServerApp")

    _finish(run, None, Console(), reported=True)

    html = (run / "report.html").read_text()
    assert (html == "written by the ServerApp") is served
    assert capsys.readouterr().out.strip().endswith(str(run))
