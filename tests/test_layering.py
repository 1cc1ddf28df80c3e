"""The packages import only what the layout table in README.md allows (static, with ``ast``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"common", "client", "server", "report", "deployment", "simulations", "benchmarks"}
ALLOWED = {
    "common": {"common"},
    "client": {"common", "client"},
    "server": {"common", "server"},
    "report": {"common", "server", "report"},
    "deployment": {"common", "server", "report", "deployment"},
    "simulations": {"common", "client", "server", "report", "deployment", "simulations"},
}
# The one exception: the ServerApp entry module (``server.app:app``) is the app's composition
# root; at the end of a run it writes the report, as ``fedveil simulate`` does.
EXCEPTIONS = {"server/app.py": {"report"}}


def allowed(package: str, path: Path) -> set[str]:
    return ALLOWED[package] | EXCEPTIONS.get(path.relative_to(REPO).as_posix(), set())


def first_party_imports(path: Path) -> set[str]:
    """Top-level first-party packages a file imports, function-level imports included."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {n.split(".")[0] for n in names} & (FIRST_PARTY | {"tests"})
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_the_layout_allows(package: str) -> None:
    offenders = {
        str(path.relative_to(REPO)): sorted(first_party_imports(path) - allowed(package, path))
        for path in (REPO / package).rglob("*.py")
        if first_party_imports(path) - allowed(package, path)
    }

    assert not offenders, f"{package}/ imports outside its layer: {offenders}"


def test_the_checker_sees_function_level_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from server.app import app\n    import simulations.cli\n")

    assert first_party_imports(module) == {"server", "simulations"}


@pytest.mark.parametrize("path", sorted(EXCEPTIONS))
def test_every_exception_is_still_needed(path: str) -> None:
    # An exception no file uses any more would silently widen the layer.
    package = path.split("/")[0]

    assert EXCEPTIONS[path] <= first_party_imports(REPO / path) - ALLOWED[package]
