"""The installed distribution is ours and its Flower app declaration matches the code."""

from __future__ import annotations

import importlib
import io
import os
import tomllib
import zipfile
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import pytest
from flwr.common.config import flatten_dict

from common.config import KEYS, FedveilConfig, load_toml

REPO = Path(__file__).resolve().parents[1]
OUR_PACKAGES = ("common", "client", "server", "simulations")


def pyproject() -> dict[str, Any]:
    with (REPO / "pyproject.toml").open("rb") as fh:
        return tomllib.load(fh)


def flower_run_config() -> dict[str, Any]:
    """The run config exactly as Flower derives it from pyproject (its own flattening)."""
    return flatten_dict(pyproject()["tool"]["flwr"]["app"]["config"])


@pytest.mark.parametrize("name", OUR_PACKAGES)
def test_imported_package_is_the_repositorys(name: str) -> None:
    module = importlib.import_module(name)

    location = Path(module.__file__ or "").resolve()

    assert location.is_relative_to(REPO), f"{name} imported from {location}, not from {REPO}"
    assert location.parent == REPO / name


def test_setuptools_lists_every_package_explicitly() -> None:
    packages = pyproject()["tool"]["setuptools"]["packages"]
    on_disk = {
        ".".join(init.parent.relative_to(REPO).parts)
        for top in (*OUR_PACKAGES, "report", "deployment")
        for init in (REPO / top).rglob("__init__.py")
    }

    assert set(OUR_PACKAGES) <= set(packages)
    assert on_disk == set(packages), "every package on disk is listed, and nothing else"


def test_base_install_is_the_edge_client() -> None:
    project = pyproject()["project"]
    base = " ".join(project["dependencies"])
    server = " ".join(project["optional-dependencies"]["server"])

    for heavy in ("ray", "simulation", "scikit-learn", "matplotlib", "flwr-datasets"):
        assert heavy not in base, f"{heavy} would make every edge node install it"
        assert heavy in server or heavy == "ray"


def test_fedveil_console_script_points_to_cli_main() -> None:
    from simulations.cli import main

    scripts = metadata.entry_points(group="console_scripts").select(name="fedveil")

    assert len(scripts) == 1
    (script,) = scripts
    assert script.value == "simulations.cli:main"
    assert script.dist is not None and script.dist.name == "fedveil"
    assert script.load() is main


def test_flower_config_has_exactly_the_known_keys() -> None:
    flat = flower_run_config()

    assert set(flat) == set(KEYS), (
        f"only in pyproject: {sorted(set(flat) - set(KEYS))}; "
        f"only in common.config.KEYS: {sorted(set(KEYS) - set(flat))}"
    )


@pytest.mark.parametrize("key", sorted(KEYS))
def test_flower_config_default_equals_code_default(key: str) -> None:
    flat = flower_run_config()
    if key not in flat:
        pytest.fail(f"`{key}` is missing from [tool.flwr.app.config]")

    declared, spec = flat[key], KEYS[key]

    assert type(declared) is spec.kind, f"`{key}`: {declared!r} is not a {spec.kind.__name__}"
    assert declared == spec.default


def test_flower_config_parses_into_the_default_config() -> None:
    flat = flower_run_config()

    parsed = FedveilConfig.from_flat(flat)

    assert parsed == FedveilConfig.from_flat({})
    assert parsed.to_flat() == flat


def test_flower_components_are_the_apps() -> None:
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    components = pyproject()["tool"]["flwr"]["app"]["components"]
    loaded = {}
    for role, ref in components.items():
        module_name, _, attr = ref.partition(":")
        loaded[role] = getattr(importlib.import_module(module_name), attr)

    assert set(loaded) == {"serverapp", "clientapp"}
    assert components["serverapp"] == "server.app:app"
    assert components["clientapp"] == "client.app:app"
    assert isinstance(loaded["serverapp"], ServerApp)
    assert isinstance(loaded["clientapp"], ClientApp)


@pytest.mark.parametrize("preset", ["quick", "default"])
def test_preset_is_package_data_and_parses(preset: str) -> None:
    resource = resources.files("simulations.presets") / f"{preset}.toml"
    assert resource.is_file()

    with resources.as_file(resource) as path:
        config = FedveilConfig.from_flat(load_toml(path))

    assert config.dataset == "digits"  # tests and smoke checks need no data folder
    assert config.to_flat().keys() == KEYS.keys()


def test_quick_preset_is_small() -> None:
    # Its own header promises "3 clients, 2 rounds on digits".
    path = REPO / "simulations" / "presets" / "quick.toml"

    config = FedveilConfig.from_flat(load_toml(path))

    assert (config.sim_clients, config.num_server_rounds) == (3, 2)
    assert config.min_train_clients <= config.sim_clients


def test_default_preset_matches_its_description() -> None:
    # Its header: "digits (embedded), 10 simulated clients, sample-level DP at ε <= 8".
    path = REPO / "simulations" / "presets" / "default.toml"

    config = FedveilConfig.from_flat(load_toml(path))

    assert config.sim_clients == 10
    assert config.dp_target_epsilon <= 8
    assert config.dp_budget <= 8


# ---------------------------------------------------------------- the app bundle (FAB)
FAB_PACKAGES = ("common", "client", "server", "report", "examples")
# Stand-ins for what a checkout may hold beside the code; none of it may reach a node.
RUN_FILES = ("metrics.jsonl", "privacy.json", "checkpoint/state.json", "config.json")
DEVELOPER_FILES = ("tests/conftest.py", "tests/server/fakes.py", "my-runs/notes.md", "README.md")
UNSHIPPED_CODE = ("benchmarks/extra_bench.py", "simulations/extra.py", "deployment/extra.py")
STRAY_FILES = (
    *(f"runs-flwr/20260101-000000/{name}" for name in RUN_FILES),
    *(f"runs/20260101-000000/{name}" for name in RUN_FILES),
    *DEVELOPER_FILES,
    *UNSHIPPED_CODE,
    "docs/extra.md",
    ".venv/lib/python3.11/site-packages/x.py",
    "server/notes.md",
)


# Flower 1.39's build asks pathspec for a pattern style pathspec now deprecates: not ours to fix.
flower_build = pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")


def checkout_files() -> dict[str, bytes | Path]:
    """The checkout as Flower's ``collect_files`` sees it, without walking ``.venv``/``.git``."""
    files: dict[str, bytes | Path] = {}
    for dirpath, dirnames, filenames in os.walk(REPO):
        dirnames[:] = [d for d in dirnames if d not in {".venv", ".git"}]
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                files[path.relative_to(REPO).as_posix()] = path
    return files


@flower_build
def test_app_bundle_ships_only_what_nodes_and_the_serverapp_run() -> None:
    from flwr.cli.build import build_fab_from_files

    files = checkout_files()
    for stray in STRAY_FILES:
        files.setdefault(stray, b"{}\n")
    expected = {
        path.relative_to(REPO).as_posix()
        for package in FAB_PACKAGES
        for path in (REPO / package).rglob("*.py")
        if "__pycache__" not in path.parts
    }

    fab, _ = build_fab_from_files(files)
    names = set(zipfile.ZipFile(io.BytesIO(fab)).namelist())

    assert names - {"pyproject.toml", ".info/CONTENT"} == expected
    assert {"server/app.py", "client/app.py", "report/write.py"} <= names


@flower_build
def test_app_bundle_pyproject_names_the_apps() -> None:
    from flwr.cli.build import build_fab_from_files

    fab, _ = build_fab_from_files(checkout_files())
    shipped = tomllib.loads(zipfile.ZipFile(io.BytesIO(fab)).read("pyproject.toml").decode())

    assert shipped["tool"]["flwr"]["app"]["components"] == {
        "serverapp": "server.app:app",
        "clientapp": "client.app:app",
    }
