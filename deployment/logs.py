"""Reading files that running processes are still writing: process logs and run files.

Every reader tolerates a file that does not exist yet, is being appended to, or holds a torn
last line: it returns what it can (``""``, ``[]``, ``None``) instead of raising, because the
orchestrator polls these files while Flower's processes write them.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def size(path: Path) -> int:
    """Return a file's size in bytes, 0 if it does not exist."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def read_from(path: Path, offset: int) -> str:
    """Return a file's text from byte ``offset`` on (``""`` if unreadable)."""
    try:
        with path.open("rb") as fh:
            fh.seek(max(offset, 0))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def last_line(path: Path) -> str:
    """Return the most telling line of a Flower log: its exit reason, else its last error."""
    text = _ANSI.sub("", read_from(path, max(size(path) - 8000, 0)))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for marker in ("Exit Code:", "ERROR", "Error"):
        hits = [i for i, ln in enumerate(lines) if marker in ln]
        if hits:
            tail = lines[hits[-1] : hits[-1] + 4]
            return " ".join(ln for ln in tail if not ln.startswith(("INFO", "For more")))[:400]
    return lines[-1][:400] if lines else "(empty log)"


def metric_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Return the complete lines of a run's ``metrics.jsonl`` (a torn last line is skipped)."""
    rows = []
    for line in read_from(run_dir / "metrics.jsonl", 0).splitlines():
        with contextlib.suppress(ValueError):
            rows.append(json.loads(line))
    return rows


def json_file(path: Path) -> dict[str, Any] | None:
    """Return a JSON object file's content, ``None`` if it is missing, partial or not an object."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None
