"""The benchmarks' shared command-line pieces: config keys from ``--set`` and the parser."""

from __future__ import annotations

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
