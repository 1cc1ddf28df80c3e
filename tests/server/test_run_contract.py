"""The run-directory contract check: a run our writers made holds; each broken promise is named."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server.ledger import PrivacyLedger
from server.run_contract import ContractBroken, check_run_contract
from server.rundir import CONFIG, METRICS, MODEL, PRIVACY, Rejection, RoundRecord, RunDirectory

ENTRY = (1.1, 0.25, 4)


def write_run(path: Path) -> Path:
    """Write a two-round, two-client run directory with the server's own writers."""
    run = RunDirectory.create(path)
    run.write_config({"num-server-rounds": 2, "seed": 0, "run-tag": path.name})
    ledger = PrivacyLedger(accountant="rdp", delta=1e-5, budget=8.0)
    for rnd, accuracy in ((1, 0.5), (2, 0.8125)):
        for cid in ("0", "1"):
            ledger.charge(cid, rnd, ENTRY, 0.0)
        run.append_round(
            RoundRecord(
                round=rnd,
                accuracy=accuracy,
                loss=1.0 / rnd,
                watermark_accuracy=None,
                clients=[11, 12],
                rejected=[Rejection(13, "open-failed", "tampered")] if rnd == 2 else [],
                flagged=[],
                bytes_sealed=1000,
                bytes_dense=8000,
                seconds=0.25,
            )
        )
    ledger.save(path / PRIVACY)
    run.write_model({"fc.weight": np.zeros((2, 3), np.float32)})
    return path


def _rewrite_json(name: str, change: Callable[[Any], None]) -> Callable[[Path], object]:
    def mutate(run: Path) -> None:
        doc = json.loads((run / name).read_text())
        change(doc)
        (run / name).write_text(json.dumps(doc))

    return mutate


def _rewrite_rounds(change: Callable[[list[dict[str, Any]]], None]) -> Callable[[Path], object]:
    def mutate(run: Path) -> None:
        rows = [json.loads(line) for line in (run / METRICS).read_text().splitlines()]
        change(rows)
        (run / METRICS).write_text("".join(json.dumps(r) + "\n" for r in rows))

    return mutate


def _header_claims(size: int) -> Callable[[Path], object]:
    def mutate(run: Path) -> None:
        data = (run / MODEL).read_bytes()
        (run / MODEL).write_bytes(size.to_bytes(8, "little") + data[8:])

    return mutate


BROKEN: dict[str, tuple[Callable[[Path], object], str]] = {
    "no config": (lambda run: (run / CONFIG).unlink(), "config.json missing"),
    "no metrics": (lambda run: (run / METRICS).unlink(), "metrics.jsonl missing"),
    "no ledger": (lambda run: (run / PRIVACY).unlink(), "privacy.json missing"),
    "no model": (lambda run: (run / MODEL).unlink(), "model.safetensors missing"),
    "config not an object": (
        lambda run: (run / CONFIG).write_text("[1, 2]"),
        "the configuration must be an object",
    ),
    "config not JSON": (lambda run: (run / CONFIG).write_text("{"), "not readable JSON"),
    "no rounds": (lambda run: (run / METRICS).write_text(""), "no rounds"),
    "round lacks a key": (
        _rewrite_rounds(lambda rows: rows[1].pop("bytes_dense")),
        "line 2 lacks bytes_dense",
    ),
    "rejection lacks a reason": (
        _rewrite_rounds(lambda rows: rows[1]["rejected"][0].pop("reason")),
        "line 2 rejection lacks reason",
    ),
    "clients not node ids": (
        _rewrite_rounds(lambda rows: rows[0].__setitem__("clients", ["a"])),
        "line 1 clients entry must be an integer",
    ),
    "ledger lacks central": (
        _rewrite_json(PRIVACY, lambda doc: doc.pop("central")),
        "the ledger lacks central",
    ),
    "unknown accountant": (
        _rewrite_json(PRIVACY, lambda doc: doc.__setitem__("accountant", "gdp")),
        "accountant must be one of",
    ),
    "client lacks exhausted": (
        _rewrite_json(PRIVACY, lambda doc: doc["clients"]["1"].pop("exhausted")),
        "client 1 lacks exhausted",
    ),
    "history entry of two": (
        _rewrite_json(PRIVACY, lambda doc: doc["clients"]["0"]["history"][1].pop()),
        "client 0 history[1] must be [noise_multiplier, sample_rate, steps]",
    ),
    "safetensors header unreadable": (
        lambda run: (run / MODEL).write_bytes(b"garbage, not a model"),
        "not a safetensors file",
    ),
    "safetensors header longer than the file": (_header_claims(1 << 20), "not a safetensors file"),
}


def test_a_run_written_by_the_server_keeps_the_contract(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run")

    assert check_run_contract(run) == "contract holds: 2 rounds, 2 clients, final accuracy 0.812"


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_each_broken_promise_is_refused_by_name(case: str, tmp_path: Path) -> None:
    mutate, named = BROKEN[case]
    run = write_run(tmp_path / "run")
    mutate(run)

    with pytest.raises(ContractBroken) as info:
        check_run_contract(run)

    assert named in str(info.value)
    assert "\n" not in str(info.value)


def test_contract_broken_is_a_value_error() -> None:
    assert issubclass(ContractBroken, ValueError)
