"""The benchmarks' command lines: config keys from ``--set``, the parser, one-line refusals."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from benchmarks.command_line import add_assignments, benchmark_parser, config_keys
from common.config import ConfigError


def test_config_keys_parse_each_assignment_and_a_later_one_wins() -> None:
    flat = config_keys(["seed=1", " lr = 0.5", "seed=2"])

    assert list(flat) == ["seed", "lr"]
    assert (str(flat["seed"]), str(flat["lr"])) == ("2", "0.5")


def test_a_text_without_a_key_and_value_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        config_keys(["seed"])


def test_the_parser_names_the_module_and_collects_repeated_assignments() -> None:
    parser = benchmark_parser("codec", "what it measures")
    add_assignments(parser, flag="--plain-set", dest="plain")

    args = parser.parse_args(["--plain-set", "a=1", "--plain-set", "b=2"])

    assert parser.prog == "python -m benchmarks.codec"
    assert (args.data_dir, args.plain) == (None, ["a=1", "b=2"])


@pytest.mark.parametrize(
    ("name", "args", "named"),
    [
        ("codec", ["--set", "codec.bits=4"], "codec.bits"),
        ("codec", ["--set", "nonsense-key=1"], "nonsense-key"),
        ("codec", ["--set", "seed"], "KEY=VALUE"),
        ("codec", ["--data-dir", "/nonexistent/fedveil-data"], "/nonexistent/fedveil-data"),
        ("defenses", ["--aggregators", "fedavg,nope"], "nope"),
        ("defenses", ["--parts", "robustness,speed"], "--parts"),
        ("defenses", ["--seeds", "0"], "--seeds"),
        ("defenses", ["--rounds", "0"], "--rounds"),
        ("defenses", ["--datasets", "mnist", "--data-dir", "/nonexistent/data"], "/nonexistent"),
        ("privacy_utility", ["--partitionings", "iid,random"], "--partitionings"),
        ("privacy_utility", ["--epsilons", "one"], "one"),
        ("privacy_utility", ["--set", "nonsense-key=1"], "nonsense-key"),
        (
            "privacy_utility",
            ["--data-dir", "/nonexistent/fedveil-data"],
            "/nonexistent/fedveil-data",
        ),
    ],
)
def test_every_benchmark_refuses_bad_input_in_one_line_exit_2_before_any_run(
    name: str, args: list[str], named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main = importlib.import_module(f"benchmarks.{name}").main
    # privacy_utility requires both; a case's own --data-dir comes later and wins.
    required = ["--data-dir", str(tmp_path), "--out", str(tmp_path / "out")]
    argv = [*(required if name == "privacy_utility" else []), *args]

    status = main([*argv, "--json", str(tmp_path / "never.json")])

    err = capsys.readouterr().err.strip()
    assert status == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"benchmarks.{name}: error: ") and named in err
    assert list(tmp_path.iterdir()) == []  # no output folder, no JSON
