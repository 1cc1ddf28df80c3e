"""Run the fedveil CLI from the checkout in a subprocess, as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Final

from tests.conftest import REPO

FEDVEIL: Final = (sys.executable, "-m", "simulations.cli")
"""The command line of ``fedveil`` (run with ``cwd=REPO``)."""


def simulate_args(out: Path, *sets: str) -> list[str]:
    """Return the arguments of ``fedveil simulate --config quick --out OUT --set S ...``."""
    args = ["simulate", "--config", "quick", "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    return args


def fedveil(*args: str, timeout: float | None) -> subprocess.CompletedProcess[str]:
    """Run ``fedveil ARGS`` to its end (within ``timeout`` s, if given), capturing its output."""
    return python(*FEDVEIL[1:], *args, timeout=timeout)


def python(*args: str, timeout: float | None) -> subprocess.CompletedProcess[str]:
    """Run this interpreter with ``ARGS`` in the checkout to its end, capturing its output."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
