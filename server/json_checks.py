"""Strict type checks on the JSON documents of a run directory, failures naming the file.

Every reader of ``config.json``, ``metrics.jsonl`` and ``privacy.json`` checks through
:class:`Fields`, so a value of the wrong type or domain raises one ``RunFileError`` whose message
is one line, ``<file>: <what> ...``, never a ``KeyError`` or ``TypeError`` from deep inside.
A bool is never accepted as a number (``type(x) is int``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from common.accounting import HistoryEntry

HISTORY_SHAPE = "[noise_multiplier, sample_rate, steps]"


class RunFileError(ValueError):
    """A run-directory file is missing, unreadable, or does not hold what its contract promises."""


class Fields:
    """Checks on the values of one document; ``where`` (a path or a label) leads every error."""

    def __init__(self, where: str | Path) -> None:
        self.where = str(where)

    def error(self, problem: str) -> RunFileError:
        """Return the error for ``problem``, on one line."""
        return RunFileError(f"{self.where}: {' '.join(problem.split())}")

    def obj(self, value: Any, what: str) -> dict[str, Any]:
        """Return ``value`` if it is a JSON object."""
        if not isinstance(value, dict):
            raise self.error(f"{what} must be an object, got {type(value).__name__}")
        return value

    def need(self, doc: Mapping[str, Any], keys: Iterable[str], what: str) -> None:
        """Refuse ``doc`` unless it has every one of ``keys``."""
        missing = [k for k in keys if k not in doc]
        if missing:
            raise self.error(f"{what} lacks {', '.join(missing)} (written by another version?)")

    def number(self, value: Any, what: str, *, finite: bool = True) -> float:
        """Return ``value`` as a float if it is a JSON number (finite unless told otherwise)."""
        if type(value) not in (int, float) or (finite and not math.isfinite(value)):
            kind = "a finite number" if finite else "a number"
            raise self.error(f"{what} must be {kind}, got {value!r}")
        return float(value)

    def optional_number(self, value: Any, what: str) -> float | None:
        """Return ``None`` for null, else ``value`` checked as a finite number."""
        return None if value is None else self.number(value, what)

    def integer(self, value: Any, what: str, *, minimum: int = 0) -> int:
        """Return ``value`` if it is an integer of at least ``minimum``."""
        if type(value) is not int or value < minimum:
            raise self.error(f"{what} must be an integer >= {minimum}, got {value!r}")
        return value

    def boolean(self, value: Any, what: str) -> bool:
        """Return ``value`` if it is ``true`` or ``false``."""
        if type(value) is not bool:
            raise self.error(f"{what} must be true or false, got {value!r}")
        return value

    def text(self, value: Any, what: str) -> str:
        """Return ``value`` if it is a string."""
        if not isinstance(value, str):
            raise self.error(f"{what} must be a string, got {value!r}")
        return value

    def array(self, value: Any, what: str) -> list[Any]:
        """Return ``value`` if it is a JSON array."""
        if not isinstance(value, list):
            raise self.error(f"{what} must be a list, got {type(value).__name__}")
        return value

    def integers(self, value: Any, what: str, *, minimum: int = 0) -> list[int]:
        """Return ``value`` if it is a list of integers of at least ``minimum``."""
        return [self.integer(v, f"{what} entry", minimum=minimum) for v in self.array(value, what)]

    def history(self, value: Any, what: str) -> tuple[HistoryEntry, ...]:
        """Return a DP-SGD history: ``[σ, q, steps]`` entries with σ > 0, 0 < q <= 1."""
        if not isinstance(value, list):
            raise self.error(f"{what} must be a list of {HISTORY_SHAPE}")
        out: list[HistoryEntry] = []
        for i, entry in enumerate(value):
            if not (isinstance(entry, list) and len(entry) == 3):
                raise self.error(f"{what}[{i}] must be {HISTORY_SHAPE}")
            sigma = self.number(entry[0], f"{what}[{i}] noise multiplier")
            rate = self.number(entry[1], f"{what}[{i}] sample rate")
            steps = self.integer(entry[2], f"{what}[{i}] steps")
            if sigma <= 0 or not 0 < rate <= 1:
                raise self.error(f"{what}[{i}] = {entry} is out of range (σ > 0, 0 < q <= 1)")
            out.append((sigma, rate, steps))
        return tuple(out)


def read_json(path: Path) -> Any:
    """Return the parsed JSON of ``path``; a missing or unreadable file is a ``RunFileError``."""
    if not path.is_file():
        raise Fields(path).error("missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise Fields(path).error(f"not readable JSON ({exc})") from None
    except RecursionError:
        raise Fields(path).error("nested too deeply to be a fedveil run file") from None
