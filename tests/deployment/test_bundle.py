"""``deployment.bundle``: the staged app is a valid Flower app that ships what it imports.

A SuperNode on another host has only the FAB: every first-party import of every shipped module
must resolve inside the bundle, checked statically (every import statement, lazy ones too) and
by importing every shipped module with the checkout out of reach.
"""

from __future__ import annotations

import ast
import io
import json
import os
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_disk
from flwr.common.config import flatten_dict, validate_config

from common.config import KEYS, FedveilConfig
from deployment.bundle import APP_PACKAGES, stage_app, staged_pyproject, task_source
from tests.conftest import REPO

DEFAULTS = FedveilConfig.from_flat({})
# Every top-level package of this repository: an import of one of them is ours to ship.
FIRST_PARTY = frozenset(p.parent.name for p in REPO.glob("*/__init__.py"))


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("staged") / "app"
    stage_app(target, DEFAULTS.to_flat())
    return target


def test_staged_pyproject_is_a_valid_flower_app_with_every_key() -> None:
    doc = tomllib.loads(staged_pyproject(DEFAULTS.to_flat()))

    valid, errors, _ = validate_config(doc, check_module=False)
    assert valid, errors
    app = doc["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "server.app:app", "clientapp": "client.app:app"}
    keys = set(flatten_dict(app["config"]))
    assert keys == set(KEYS)
    assert {"run-dir", "resume"} <= keys  # `flwr run --run-config` overrides only declared keys
    assert "federations" not in doc["tool"]["flwr"]
    assert not any("extra ==" in d for d in doc["project"]["dependencies"])


def test_the_bundle_holds_exactly_the_app_packages(app: Path) -> None:
    assert sorted(p.name for p in app.iterdir()) == sorted([*APP_PACKAGES, "pyproject.toml"])
    assert "report" in APP_PACKAGES  # the ServerApp writes the run's report at its end
    assert not any("__pycache__" in str(p) for p in app.rglob("*"))


def _user_project(root: Path) -> Path:
    """A user's folder: a task package with data, notes and bytecode beside its modules."""
    package = root / "mypkg"
    (package / "sub" / "data").mkdir(parents=True)
    (package / "__pycache__").mkdir()
    for name in ("__init__.py", "task.py", "sub/__init__.py", "sub/model.py"):
        (package / name).write_text("")
    (package / "sub" / "data" / "node-0.csv").write_text("label\n0\n")
    (package / "README.md").write_text("notes")
    (package / "__pycache__" / "task.cpython-311.pyc").write_bytes(b"")
    (root / "runs").mkdir()
    (root / "loose.py").write_text("")
    return root


def test_the_task_package_ships_its_python_files_only(tmp_path: Path) -> None:
    project = _user_project(tmp_path / "project")
    target = tmp_path / "app"

    stage_app(target, DEFAULTS.replace(task="mypkg.task").to_flat(), project)

    shipped = sorted(str(p.relative_to(target / "mypkg")) for p in (target / "mypkg").rglob("*"))
    assert shipped == ["__init__.py", "sub", "sub/__init__.py", "sub/model.py", "task.py"]
    assert sorted(p.name for p in target.iterdir()) == sorted(
        [*APP_PACKAGES, "mypkg", "pyproject.toml"]
    )


@pytest.mark.parametrize(
    ("task", "found"),
    [
        ("mypkg.task", "mypkg"),
        ("loose", "loose.py"),
        ("", None),
        ("digits", None),  # a built-in task: fedveil's own
        ("common.tasks.digits", None),  # already in the app
        ("installed.task", None),  # not in the folder: the nodes must have it installed
    ],
)
def test_task_source_is_the_task_top_level_package_in_the_folder(
    tmp_path: Path, task: str, found: str | None
) -> None:
    project = _user_project(tmp_path)

    assert task_source(task, project) == (None if found is None else project / found)


def test_the_example_task_ships_without_its_data(tmp_path: Path) -> None:
    stage_app(tmp_path / "app", DEFAULTS.replace(task="examples.tabular_csv.task").to_flat(), REPO)

    shipped = [p for p in (tmp_path / "app" / "examples").rglob("*") if p.is_file()]
    assert tmp_path / "app" / "examples" / "tabular_csv" / "task.py" in shipped
    assert all(p.suffix == ".py" for p in shipped)


@pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")  # inside flwr build
def test_staged_app_builds_a_small_fab(app: Path) -> None:
    fab = build_fab_from_disk(app)

    names = zipfile.ZipFile(io.BytesIO(fab)).namelist()
    assert "server/app.py" in names and "client/app.py" in names
    assert "common/crypto/certificates.py" in names
    assert not any(n.startswith(("deployment/", "simulations/", "tests/", "runs/")) for n in names)
    assert len(fab) < 1_000_000


def _runtime_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, lazy ones included, except those under ``if TYPE_CHECKING``."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _resolves(app: Path, parts: list[str]) -> bool:
    folder = app.joinpath(*parts)
    return folder.with_suffix(".py").is_file() or (folder / "__init__.py").is_file()


def unresolved_imports(app: Path) -> list[str]:
    """Return ``file: module`` for each first-party import that the bundle does not ship."""
    missing = []
    for path in sorted(app.rglob("*.py")):
        package = list(path.relative_to(app).parent.parts)
        for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name.split(".") for alias in node.names]
            elif node.level:  # relative: from the file's package, `level - 1` up
                base = package[: len(package) - node.level + 1]
                targets = [base + (node.module.split(".") if node.module else [])]
            else:
                targets = [node.module.split(".")] if node.module else []
            for parts in targets:
                if parts and parts[0] in FIRST_PARTY and not _resolves(app, parts):
                    missing.append(f"{path.relative_to(app)}: {'.'.join(parts)}")
    return sorted(missing)


def test_the_import_check_sees_a_module_the_bundle_lacks(tmp_path: Path) -> None:
    (tmp_path / "client").mkdir()
    (tmp_path / "client" / "__init__.py").write_text("")
    (tmp_path / "client" / "app.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from .missing_sibling import x\n"
        "if TYPE_CHECKING:\n    import simulations.hints\n"
        "def lazy() -> None:\n    from simulations.adversary import attacks\n"
    )

    assert unresolved_imports(tmp_path) == [
        "client/app.py: client.missing_sibling",
        "client/app.py: simulations.adversary",
    ]


def test_every_first_party_import_of_the_bundle_resolves_inside_it(app: Path) -> None:
    assert unresolved_imports(app) == []


def test_every_shipped_module_imports_from_the_bundle_alone(app: Path) -> None:
    probe = f"""
import importlib, json, pkgutil, sys
from pathlib import Path
app = Path.cwd().resolve()
sys.path[:] = [p for p in sys.path if p not in ("", ".", {str(REPO)!r})]
sys.path.insert(0, str(app))
failed = {{}}
for package in {list(APP_PACKAGES)!r}:
    module = importlib.import_module(package)
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        try:
            importlib.import_module(info.name)
        except Exception as exc:
            failed[info.name] = f"{{type(exc).__name__}}: {{exc}}"
outside = sorted(
    name for name, module in list(sys.modules.items())
    if name.split(".")[0] in {sorted(FIRST_PARTY)!r}
    and not Path(getattr(module, "__file__", None) or "/").resolve().is_relative_to(app)
)
print(json.dumps({{"failed": failed, "outside": outside}}))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=app,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["failed"] == {}
    assert result["outside"] == []  # imported from the checkout: a node without it would fail
