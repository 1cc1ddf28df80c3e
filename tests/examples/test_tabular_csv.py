from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.task import TaskError
from examples.tabular_csv.make_data import write_dataset
from examples.tabular_csv.task import CLASSES, FEATURES, SensorTask
from tests.examples.checks import load_example

MODULE = "examples.tabular_csv.task"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    write_dataset(tmp_path, seed=0, train=60, test=20, node_sizes=(10, 25))
    return tmp_path


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
