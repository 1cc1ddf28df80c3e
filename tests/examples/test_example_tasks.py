"""Both example tasks through the task interface: each loads, reads every party and trains."""

from __future__ import annotations

import ast
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from examples.image_folder import make_data as image_data
from examples.tabular_csv import make_data as tabular_data
from tests.conftest import REPO
from tests.examples.checks import assert_one_dp_sgd_round_trains, load_example, read_each_party

EXAMPLE_NAMES = (
    "examples.tabular_csv",
    "examples.image_folder",
    "import examples",
    "from examples",
)
FEDVEIL = ("common", "client", "server", "simulations", "report", "deployment")


@dataclass(frozen=True)
class Example:
    """A small generated data set of one example, and what reading it must give."""

    write: Callable[[Path], None]
    node: str
    sizes: tuple[int, int, int]  # pool, test set, the node
    input_shape: tuple[int, ...]
    batch_size: int


EXAMPLES = {
    "image_folder": Example(
        functools.partial(
            image_data.write_dataset, seed=0, per_class=4, test_per_class=2, node_sizes=(6, 9)
        ),
        "node-1",
        (16, 8, 9),
        (1, 16, 16),
        8,
    ),
    "tabular_csv": Example(
        functools.partial(
            tabular_data.write_dataset, seed=0, train=60, test=20, node_sizes=(10, 25)
        ),
        "node-1.csv",
        (60, 20, 25),
        (8,),
        16,
    ),
}


@pytest.mark.parametrize("name", EXAMPLES)
def test_each_task_loads_by_module_path_and_reads_every_party(name: str, tmp_path: Path) -> None:
    example = EXAMPLES[name]
    example.write(tmp_path)
    task = load_example(f"examples.{name}.task", tmp_path)

    pool, test, node = read_each_party(task, tmp_path / example.node)

    assert type(task).__module__ == f"examples.{name}.task"
    assert (task.num_classes, task.input_shape) == (4, example.input_shape)
    assert (len(pool), len(test), len(node)) == example.sizes


@pytest.mark.parametrize("name", EXAMPLES)
def test_one_dp_sgd_round_trains_each_model(name: str, tmp_path: Path) -> None:
    example = EXAMPLES[name]
    example.write(tmp_path)
    task = load_example(f"examples.{name}.task", tmp_path)
    pool = task.pool()
    assert pool is not None
    model = task.build_model()
    assert model(pool.inputs).shape == (len(pool), task.num_classes)

    assert_one_dp_sgd_round_trains(model, pool, batch_size=example.batch_size)


@pytest.mark.parametrize("name", EXAMPLES)
def test_an_example_imports_only_the_task_interface_of_fedveil(name: str) -> None:
    imported = set()
    for path in (REPO / "examples" / name).glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)

    ours = {name for name in imported if name.split(".")[0] in FEDVEIL}

    assert ours == {"common.task"}


def test_fedveil_code_never_names_the_examples() -> None:
    naming = [
        str(path.relative_to(REPO))
        for package in FEDVEIL
        for path in (REPO / package).rglob("*.py")
        if any(name in path.read_text() for name in EXAMPLE_NAMES)
    ]

    assert naming == []
