"""What the benchmarks' command lines share: the parser, ``--set KEY=VALUE`` and the refusal.

Each benchmark runs as ``python -m benchmarks.<name>``. Bad input ends it before any run starts
with one line on stderr, ``benchmarks.<name>: error: <problem>``, and exit status 2 (``refuse``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from common.config import ConfigValue, parse_assignment

_DATA_DIR_HELP = (
    "folder holding the IDX data sets, MNIST's directly or in mnist/ (without it: digits only)"
)


def benchmark_parser(name: str, description: str) -> argparse.ArgumentParser:
    """Return the parser of ``python -m benchmarks.<name>``, with its optional ``--data-dir``."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=description)
    parser.add_argument("--data-dir", help=_DATA_DIR_HELP)
    return parser


def add_assignments(
    parser: argparse.ArgumentParser,
    help_text: str | None = None,
    *,
    flag: str = "--set",
    dest: str = "assignments",
) -> None:
    """Add ``flag KEY=VALUE``, repeatable, collected as a list of texts in ``dest``."""
    parser.add_argument(
        flag, dest=dest, action="append", default=[], metavar="KEY=VALUE", help=help_text
    )


def config_keys(assignments: Sequence[str]) -> dict[str, ConfigValue]:
    """Parse ``KEY=VALUE`` texts into config keys; a later one wins.

    Raises:
        ConfigError: a text is not ``KEY=VALUE``.

    """
    flat: dict[str, ConfigValue] = {}
    for text in assignments:
        key, value = parse_assignment(text)
        flat[key] = value
    return flat


def refuse(name: str, problem: object) -> int:
    """Print ``benchmarks.<name>: error: <problem>`` on stderr; return the exit status, 2."""
    print(f"benchmarks.{name}: error: {problem}", file=sys.stderr)
    return 2
