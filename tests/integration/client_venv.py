"""A virtual environment holding only fedveil's client install, built from this checkout.

As the edge recipe in docs/deployment.md does, with two differences a test needs: torch comes
from the machine's package index (pip's own configuration and cache), and fedveil from a wheel
built from a copy of the checkout's installable files (``pip wheel --no-deps``), so the build
leaves nothing in the working tree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Final

from tests.conftest import REPO

TORCH: Final = "torch==2.13.0"
SERVER_ONLY: Final = frozenset({"ray", "scikit-learn", "matplotlib", "flwr-datasets"})
"""Distributions of ``fedveil[server]`` (and the simulation engine) an edge client must lack."""


def clean_env() -> dict[str, str]:
    """This process's environment without what would leak the dev environment into the venv.

    A Ray simulation run earlier in the same test process sets ``PYTHONPATH`` to the dev
    environment's site-packages; inherited, it makes the client venv see every dev package.
    """
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def _pip(python: Path, *args: str) -> None:
    done = subprocess.run(
        [str(python), "-m", "pip", *args],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env=clean_env(),
    )
    if done.returncode != 0:
        raise RuntimeError(f"pip {' '.join(args)} failed: {done.stderr[-2000:]}")


def build_wheel(out: Path) -> Path:
    """Build fedveil's wheel from a copy of the checkout's installable files; return it."""
    doc = tomllib.loads((REPO / "pyproject.toml").read_text())
    source = out / "source"
    for top in sorted({p.split(".")[0] for p in doc["tool"]["setuptools"]["packages"]}):
        shutil.copytree(REPO / top, source / top, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    _pip(
        Path(sys.executable),
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(out),
        str(source),
    )
    (wheel,) = out.glob("fedveil-*.whl")
    return wheel


def installed(venv: Path) -> set[str]:
    """Return the names of the distributions installed in ``venv`` (lower case)."""
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=clean_env(),
    )
    return {str(d["name"]).lower() for d in json.loads(done.stdout)}


def build_client_venv(where: Path) -> Path:
    """Create ``where/venv`` with torch and fedveil's base install only; return it."""
    venv = where / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", str(venv)], check=True, timeout=300, env=clean_env()
    )
    python = venv / "bin" / "python"
    _pip(python, "install", TORCH)
    _pip(python, "install", str(build_wheel(where / "wheel")))
    return venv
