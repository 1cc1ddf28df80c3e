"""Where a benchmark's numbers come from: date, commit and machine, stamped into its JSON.

``stamp(doc)`` returns ``doc`` after ``date`` (UTC, ISO 8601), ``commit`` (``git rev-parse HEAD``
of this checkout, ``None`` outside one), ``uncommitted`` (whether tracked files differed from
that commit, ``None`` when unknown) and ``machine`` (platform, CPUs, memory, Python, torch and
numpy versions, load average). ``write_json`` writes a stamped document, creating its folder.
Results worth keeping go to ``RESULTS_DIR`` (``benchmarks/results/``) and into ``RESULTS.md``.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
"""Where each benchmark writes its JSON unless told otherwise."""
_CHECKOUT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    """Return git's stdout in the checkout, or ``None`` without git or outside a repository."""
    git = shutil.which("git")
    if git is None:
        return None
    # A fixed argument list, no user input: nothing reaches a shell.
    done = subprocess.run(  # noqa: S603
        [git, *args], cwd=_CHECKOUT, capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else None


def machine() -> dict[str, Any]:
    """Return what timings and results depend on: platform, CPUs, memory, library versions."""
    import numpy
    import torch

    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        memory = None
    return {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpus": os.cpu_count(),
        "memory_bytes": memory,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "load_average": list(os.getloadavg()),
    }


def stamp(doc: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``doc`` preceded by the date, the commit and the machine it was measured on."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": _git("rev-parse", "HEAD"),
        "uncommitted": None if status is None else bool(status),
        "machine": machine(),
        **doc,
    }


def write_json(path: Path, doc: Mapping[str, Any]) -> None:
    """Write ``stamp(doc)`` as indented JSON to ``path``, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stamp(doc), indent=2) + "\n")
