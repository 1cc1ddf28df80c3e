"""Bad run directories are refused untouched; a differing reported ε is a mismatch."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from report.write import ReportError, write_report
from tests.report.run_docs import DELTA, RunDocs, client_row

# Opacus warns when the optimal RDP order lies at an end of its list: tightness, not us.
pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the (largest|smallest) alpha")


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for folders)."""
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


# ----------------------------------------------------------------------- bad run directories

Mutation = Callable[[RunDocs, Path], None]


def _drop(name: str) -> Mutation:
    return lambda d, run: (run / name).unlink()


def _privacy(change: Callable[[dict[str, Any]], None]) -> Mutation:
    def mutate(d: RunDocs, run: Path) -> None:
        change(d.privacy)
        (run / "privacy.json").write_text(json.dumps(d.privacy))

    return mutate


def _write(name: str, text: str) -> Mutation:
    def mutate(d: RunDocs, run: Path) -> None:
        (run / name).write_text(text)

    return mutate


def _client0(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda p: p["clients"]["0"].__setitem__(key, value)


BAD: dict[str, tuple[Mutation, str, str]] = {
    "no config": (_drop("config.json"), "config.json", "missing"),
    "no ledger": (_drop("privacy.json"), "privacy.json", "missing"),
    "no model": (_drop("model.safetensors"), "model.safetensors", "missing"),
    "no metrics": (_drop("metrics.jsonl"), "metrics.jsonl", "missing"),
    "ledger from another version": (
        _write("privacy.json", json.dumps({"version": 2, "ledger": {"clients": []}})),
        "privacy.json",
        "unknown keys ['ledger', 'version']",
    ),
    "ledger lacks clients": (
        _privacy(lambda p: p.pop("clients")),
        "privacy.json",
        "lacks clients",
    ),
    "client lacks rounds": (
        _privacy(lambda p: p["clients"]["1"].pop("rounds")),
        "privacy.json",
        "client 1 lacks rounds",
    ),
    "history entry of two": (
        _privacy(_client0("history", [[1.1, 0.3]] * 4)),
        "privacy.json",
        "client 0 history[0] must be [noise_multiplier, sample_rate, steps]",
    ),
    "unknown accountant": (
        _privacy(lambda p: p.__setitem__("accountant", "gdp")),
        "privacy.json",
        "accountant must be one of",
    ),
    "clients as a list": (
        _privacy(lambda p: p.__setitem__("clients", [])),
        "privacy.json",
        "clients must be an object",
    ),
    "epsilon 5 % off": (
        _privacy(
            lambda p: p["clients"]["1"].__setitem__("epsilon", p["clients"]["1"]["epsilon"] * 1.05)
        ),
        "privacy.json",
        "client 1 epsilon",
    ),
    "history longer than rounds": (
        _privacy(lambda p: p["clients"]["2"]["rounds"].pop()),
        "privacy.json",
        "client 2 has 2 history entries but 1 rounds",
    ),
    "charged in a round that never finished": (
        _privacy(_client0("rounds", [1, 2, 3, 9])),
        "privacy.json",
        "charged in rounds [9]",
    ),
    "central epsilon off": (
        _privacy(
            lambda p: p.__setitem__(
                "central", {"epsilon": 0.1, "delta": DELTA, "history": [[2.0, 1.0, 1]] * 4}
            )
        ),
        "privacy.json",
        "central epsilon",
    ),
    "delta differs from config": (
        _privacy(lambda p: p.__setitem__("delta", 1e-6)),
        "privacy.json",
        "dp.delta",
    ),
    "metrics line lacks keys": (
        _write("metrics.jsonl", '{"round": 1, "accuracy": 0.5}\n'),
        "metrics.jsonl",
        "line 1 lacks loss",
    ),
    "metrics line not JSON": (
        _write("metrics.jsonl", "{not json\n"),
        "metrics.jsonl",
        "line 1 is not JSON",
    ),
    "model not safetensors": (
        _write("model.safetensors", "garbage, not a model"),
        "model.safetensors",
        "not a safetensors file",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_run_directory_is_refused_and_left_untouched(
    case: str, docs: RunDocs, tmp_path: Path
) -> None:
    mutate, file_name, problem = BAD[case]
    run = docs.write(tmp_path / "run")
    (run / "report.html").write_text("an earlier report")
    mutate(docs, run)
    before = snapshot(run)

    with pytest.raises(ReportError) as info:
        write_report(run)

    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(run / file_name) + ":"), message
    assert problem in message, message
    assert snapshot(run) == before


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="not a directory"):
        write_report(tmp_path / "absent")


def test_error_is_a_value_error() -> None:
    assert issubclass(ReportError, ValueError)


def test_a_reported_epsilon_that_differs_is_a_mismatch_even_if_unflagged(
    docs: RunDocs, tmp_path: Path
) -> None:
    docs.privacy["clients"]["2"]["reported_epsilon"] = 0.25  # the ledger did not flag it

    html = write_report(docs.write(tmp_path / "run")).html.read_text(encoding="utf-8")

    assert client_row(html, "2")[-1] == "reported ε mismatch"
    assert "Clients 2 reported an ε that differs from the ledger&#x27;s." in html
