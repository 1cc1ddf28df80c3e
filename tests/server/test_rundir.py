"""The run directory's writer and typed readers: contract JSON, round trips, refusals by name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common import protocol
from common.config import ConfigError, FedveilConfig
from common.weights import save_safetensors
from server.rundir import (
    CONFIG,
    METRICS,
    ROUND_KEYS,
    Rejection,
    RoundRecord,
    RunDirectory,
    RunDirError,
    RunFileError,
    read_config,
    read_model_shapes,
    read_rounds,
    read_run_config,
)


def record(rnd: int, **changes: object) -> RoundRecord:
    fields: dict[str, object] = {
        "round": rnd,
        "accuracy": 0.5,
        "loss": 1.25,
        "watermark_accuracy": None,
        "clients": [11, 12],
        "rejected": [Rejection(13, "open-failed", "tampered")],
        "flagged": [12],
        "bytes_sealed": 900,
        "bytes_dense": 8000,
        "seconds": 0.5,
        **changes,
    }
    return RoundRecord(**fields)  # type: ignore[arg-type]


def metrics_text(*docs: object) -> str:
    return "".join(json.dumps(d) + "\n" for d in docs)


# --------------------------------------------------------------------------- metrics.jsonl


def test_a_round_is_one_json_line_with_the_contract_keys_in_order(tmp_path: Path) -> None:
    run = RunDirectory.create(tmp_path / "run")

    run.append_round(record(1, refused=[14], faults=[{"node": 12, "kind": "tamper"}]))

    line = (tmp_path / "run" / METRICS).read_text()
    assert line.endswith("}\n") and line.count("\n") == 1
    doc = json.loads(line)
    assert tuple(doc)[: len(ROUND_KEYS)] == ROUND_KEYS
    assert tuple(doc)[len(ROUND_KEYS) :] == ("refused", "faults", "epsilon_max", "bytes_down")
    assert doc["rejected"] == [{"node": 13, "reason": "open-failed", "detail": "tampered"}]


def test_rounds_read_back_as_written(tmp_path: Path) -> None:
    run = RunDirectory.create(tmp_path / "run")
    written = [record(1), record(2, watermark_accuracy=0.75, epsilon_max=1.5, rejected=[])]
    for r in written:
        run.append_round(r)

    assert read_rounds(run.path) == written


def test_non_finite_accuracy_and_loss_are_kept(tmp_path: Path) -> None:
    run = RunDirectory.create(tmp_path / "run")
    run.append_round(record(1, loss=float("nan"), accuracy=float("inf")))

    (back,) = read_rounds(run.path)

    assert np.isnan(back.loss) and back.accuracy == float("inf")


def test_a_run_without_metrics_has_no_rounds(tmp_path: Path) -> None:
    assert read_rounds(tmp_path) == []


def test_a_growing_file_skips_a_line_still_being_written(tmp_path: Path) -> None:
    whole = json.dumps(record(1).to_json()) + "\n"
    (tmp_path / METRICS).write_text(whole + json.dumps(record(2).to_json())[:40])

    assert read_rounds(tmp_path, growing=True) == [record(1)]
    with pytest.raises(RunFileError, match="line 2 is not JSON"):
        read_rounds(tmp_path)


def test_a_line_nested_too_deeply_is_one_line(tmp_path: Path) -> None:
    (tmp_path / METRICS).write_text("[" * 200_000 + "]" * 200_000 + "\n")
    with pytest.raises(RunFileError, match="line 1 is nested too deeply") as info:
        read_rounds(tmp_path)
    assert "\n" not in str(info.value)


def test_truncate_keeps_the_rounds_up_to_the_checkpoint_byte_for_byte(tmp_path: Path) -> None:
    run = RunDirectory.create(tmp_path / "run")
    for rnd in (1, 2, 3):
        run.append_round(record(rnd))
    first_two = "".join((run.path / METRICS).read_text().splitlines(keepends=True)[:2])

    run.truncate_rounds(2)

    assert (run.path / METRICS).read_text() == first_two


def test_truncate_drops_a_last_line_torn_by_a_crash(tmp_path: Path) -> None:
    run = RunDirectory.create(tmp_path / "run")
    for rnd in (1, 2):
        run.append_round(record(rnd))
    whole = (run.path / METRICS).read_text()
    with (run.path / METRICS).open("a") as fh:
        fh.write('{"round": 3, "accur')  # the process died inside append_round

    run.truncate_rounds(2)

    assert (run.path / METRICS).read_text() == whole


def test_old_rounds_without_later_fields_read_with_defaults(tmp_path: Path) -> None:
    doc = record(1).to_json()
    for key in ("refused", "faults", "epsilon_max", "bytes_down"):
        doc.pop(key)
    (tmp_path / METRICS).write_text(metrics_text(doc))

    (back,) = read_rounds(tmp_path)

    assert (back.refused, back.faults, back.epsilon_max, back.bytes_down) == ([], [], 0.0, 0)


def test_bytes_down_round_trips_and_must_be_a_count(tmp_path: Path) -> None:
    (tmp_path / METRICS).write_text(metrics_text(_with(bytes_down=12_345)))
    assert read_rounds(tmp_path)[0].bytes_down == 12_345

    (tmp_path / METRICS).write_text(metrics_text(_with(bytes_down=-1)))
    with pytest.raises(RunFileError, match="bytes_down"):
        read_rounds(tmp_path)


def _with(**changes: object) -> dict[str, object]:
    doc = record(1).to_json()
    doc.update(changes)
    return doc


def _without(key: str) -> dict[str, object]:
    doc = record(1).to_json()
    doc.pop(key)
    return doc


BAD_METRICS: dict[str, tuple[str, str]] = {
    "not JSON": ("{round: 1\n", "line 1 is not JSON"),
    "not an object": ("[1, 2]\n", "line 1 must be an object"),
    "lacks a key": (metrics_text(_without("seconds")), "line 1 lacks seconds"),
    "round 0": (metrics_text(_with(round=0)), "line 1 round must be an integer >= 1"),
    "round true": (metrics_text(_with(round=True)), "line 1 round must be an integer"),
    "accuracy text": (metrics_text(_with(accuracy="0.9")), "line 1 accuracy must be a number"),
    "clients not a list": (metrics_text(_with(clients=3)), "line 1 clients must be a list"),
    "rejection lacks reason": (
        metrics_text(_with(rejected=[{"node": 1}])),
        "line 1 rejection lacks reason",
    ),
    "negative bytes": (metrics_text(_with(bytes_sealed=-1)), "line 1 bytes_sealed"),
    "rounds out of order": (
        metrics_text(record(2).to_json(), record(1).to_json()),
        "line 2: round 1 follows round 2",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_METRICS))
def test_bad_metrics_are_refused_naming_file_and_line(case: str, tmp_path: Path) -> None:
    text, problem = BAD_METRICS[case]
    (tmp_path / METRICS).write_text(text)

    with pytest.raises(RunFileError) as info:
        read_rounds(tmp_path)

    message = str(info.value)
    assert message.startswith(f"{tmp_path / METRICS}: ") and problem in message, message
    assert "\n" not in message


def test_from_json_refuses_a_round_it_cannot_trust() -> None:
    with pytest.raises(RunFileError, match="a round lacks loss"):
        RoundRecord.from_json({"round": 1, "accuracy": 0.5})


# --------------------------------------------------------------------------- config.json


def test_config_round_trips_and_resume_config_drops_the_run_tag(tmp_path: Path) -> None:
    config = FedveilConfig.from_flat({"num-server-rounds": 3, "seed": 7})
    run = RunDirectory.create(tmp_path / "run")
    run.write_config({**config.to_flat(), protocol.RUN_TAG: "run"})

    assert read_config(run.path)[protocol.RUN_TAG] == "run"
    assert read_run_config(run.path) == config


@pytest.mark.parametrize(
    ("text", "problem"), [("[]", "must be an object"), ("{", "not readable JSON")]
)
def test_bad_config_is_refused_by_name(tmp_path: Path, text: str, problem: str) -> None:
    (tmp_path / CONFIG).write_text(text)

    with pytest.raises(RunFileError, match=problem) as info:
        read_config(tmp_path)

    assert str(info.value).startswith(str(tmp_path / CONFIG))


def test_missing_config_is_named(tmp_path: Path) -> None:
    with pytest.raises(RunFileError, match=f"{CONFIG}: missing"):
        read_run_config(tmp_path)


def test_config_of_another_version_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / CONFIG).write_text(json.dumps({"no-such-key": 1}))

    with pytest.raises(ConfigError, match="no-such-key"):
        read_run_config(tmp_path)


# --------------------------------------------------------------------------- model.safetensors


def test_model_shapes_come_from_the_header(tmp_path: Path) -> None:
    run = RunDirectory.create(tmp_path / "run")
    run.write_model({"fc.weight": np.zeros((10, 64), np.float32), "t": np.array(1.0, np.float32)})

    assert read_model_shapes(run.path / "model.safetensors") == {"fc.weight": (10, 64), "t": ()}


@pytest.mark.parametrize("size", [0, 7, 1 << 40])
def test_unreadable_header_is_not_a_safetensors_file(tmp_path: Path, size: int) -> None:
    path = tmp_path / "model.safetensors"
    save_safetensors(path, {"w": np.zeros(3, np.float32)})
    path.write_bytes(size.to_bytes(8, "little") + path.read_bytes()[8:])

    with pytest.raises(RunFileError, match="not a safetensors file") as info:
        read_model_shapes(path)

    assert str(info.value).startswith(str(path))


# --------------------------------------------------------------------------- the folder


def test_create_refuses_a_folder_that_holds_a_run(tmp_path: Path) -> None:
    (tmp_path / METRICS).write_text("precious\n")

    with pytest.raises(RunDirError, match="already holds files"):
        RunDirectory.create(tmp_path)

    assert (tmp_path / METRICS).read_text() == "precious\n"


def test_create_accepts_a_deployment_folder(tmp_path: Path) -> None:
    (tmp_path / "deployment.json").write_text("{}")

    assert RunDirectory.create(tmp_path).path == tmp_path
