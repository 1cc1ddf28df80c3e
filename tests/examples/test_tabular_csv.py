from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from common.task import TaskError
from examples.tabular_csv.make_data import write_dataset
from examples.tabular_csv.task import CLASSES, FEATURES, SensorTask
from tests.examples.checks import assert_one_dp_sgd_round_trains, load_example, read_each_party

REPO = Path(__file__).resolve().parents[2]
MODULE = "examples.tabular_csv.task"
EXAMPLE_NAMES = (
    "examples.tabular_csv",
    "examples.image_folder",
    "import examples",
    "from examples",
)
FEDVEIL = ("common", "client", "server", "simulations", "report", "deployment")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    write_dataset(tmp_path, seed=0, train=60, test=20, node_sizes=(10, 25))
    return tmp_path


def test_the_task_loads_by_module_path_and_reads_each_file(data: Path) -> None:
    task = load_example(MODULE, data)

    pool, test, node = read_each_party(task, data / "node-1.csv")

    assert isinstance(task, SensorTask) and task.num_classes == len(CLASSES)
    assert (len(pool), len(test), len(node)) == (60, 20, 25)
    assert task.input_shape == (len(FEATURES),)


def test_generated_nodes_differ_in_size_and_label_mix(tmp_path: Path) -> None:
    write_dataset(tmp_path, seed=0, train=8, test=8, node_sizes=(300, 400))
    task = SensorTask(tmp_path, seed=0)

    a, b = (task.node_examples(tmp_path / f"node-{i}.csv") for i in (0, 1))

    assert (len(a), len(b)) == (300, 400)
    mix_a = torch.bincount(a.labels, minlength=4) / len(a)
    mix_b = torch.bincount(b.labels, minlength=4) / len(b)
    # Far beyond sampling noise at these sizes: each node draws its own label mix.
    assert float((mix_a - mix_b).abs().max()) > 0.15


def test_scaling_is_fixed_so_every_file_scales_a_row_identically(tmp_path: Path) -> None:
    header = ",".join([*FEATURES, "label"])
    centres = ",".join(str(c) for c, _ in FEATURES.values())
    one_up = ",".join(str(c + s) for c, s in FEATURES.values())
    for name, rows in (("a.csv", [centres, one_up]), ("b.csv", [one_up])):
        (tmp_path / name).write_text("\n".join([header, *(f"{r},2" for r in rows)]) + "\n")
    task = SensorTask(tmp_path, seed=0)

    a, b = task.node_examples(tmp_path / "a.csv"), task.node_examples(tmp_path / "b.csv")

    assert torch.equal(a.inputs[0], torch.zeros(len(FEATURES)))
    assert torch.allclose(a.inputs[1], torch.ones(len(FEATURES)))
    assert torch.equal(a.inputs[1], b.inputs[0])
    assert a.labels.tolist() == [2, 2]


def test_the_model_is_seeded_and_maps_rows_to_logits(data: Path) -> None:
    task = load_example(MODULE, data)
    test = task.test_examples()

    logits = task.build_model()(test.inputs)

    assert logits.shape == (20, len(CLASSES))
    same, other = task.build_model(), load_example(MODULE, data, seed=1).build_model()
    first = next(iter(task.build_model().parameters()))
    assert torch.equal(first, next(iter(same.parameters())))
    assert not torch.equal(first, next(iter(other.parameters())))


def test_one_dp_sgd_round_trains_the_model(data: Path) -> None:
    task = load_example(MODULE, data)
    pool = task.pool()
    assert pool is not None
    model = task.build_model()

    assert_one_dp_sgd_round_trains(model, pool, batch_size=16)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "not found; run `python -m examples.tabular_csv.make_data`"),
        ("temperature_c,label\n1,0\n", "missing columns"),
        (",".join([*FEATURES, "label"]) + "\n" + "x," * len(FEATURES) + "0\n", "line 2"),
        (",".join([*FEATURES, "label"]) + "\n" + "nan," * len(FEATURES) + "0\n", "NaN"),
    ],
)
def test_a_bad_csv_is_refused_in_one_line_naming_the_file(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    path = tmp_path / "node.csv"
    if content is not None:
        path.write_text(content)

    with pytest.raises(TaskError) as exc:
        SensorTask(tmp_path, seed=0).node_examples(path)

    message = str(exc.value)
    assert "\n" not in message
    assert str(path) in message and expected in message


@pytest.mark.parametrize("example", ["tabular_csv", "image_folder"])
def test_an_example_imports_only_the_task_interface_of_fedveil(example: str) -> None:
    imported = set()
    for path in (REPO / "examples" / example).glob("*.py"):
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
