from __future__ import annotations

import gzip
import struct
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from common.config import FedveilConfig
from common.data import FEMNIST_FILE, load_data
from common.models import create_model, model_for
from common.task import (
    BUILTIN_TASKS,
    Examples,
    Task,
    TaskError,
    TaskSettings,
    check_examples,
    load_task,
    read_examples,
    seeded_model,
    task_of,
    vet_model,
)
from common.tasks.image_sets import NODE_IDX_FILES

SETTINGS = TaskSettings(seed=3, data_dir="", test_fraction=0.2, model="auto")


def one_line(exc: pytest.ExceptionInfo[TaskError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------- the loader


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory for user task modules; sys.path is restored afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return tmp_path


def write_module(folder: Path, source: str) -> str:
    """Write a uniquely named module into ``folder`` and return its name."""
    name = f"usertask_{uuid.uuid4().hex}"
    (folder / f"{name}.py").write_text(source)
    return name


GOOD_TASK = """
import torch
from torch import nn
from common.task import Examples, Task

class Tiny(Task):
    def __init__(self, seed):
        self.seed = seed
    num_classes = 3
    input_shape = (4,)
    def build_model(self):
        torch.manual_seed(self.seed)
        return nn.Sequential(nn.Linear(4, 8), {norm}, nn.ReLU(), nn.Linear(8, 3))
    def node_examples(self, data_path):
        return Examples(torch.zeros(2, 4), torch.zeros(2, dtype=torch.int64))
    def test_examples(self):
        return Examples(torch.zeros(5, 4), torch.arange(5) % 3)

def make_task(settings):
    return Tiny(settings.seed)
"""


def test_a_user_module_in_the_working_directory_loads(user_dir: Path) -> None:
    name = write_module(user_dir, GOOD_TASK.format(norm="nn.GroupNorm(2, 8)"))

    task = load_task(name, SETTINGS)

    assert isinstance(task, Task)
    assert task.num_classes == 3
    assert task.pool() is None and task.root_examples() is None and task.pool_writers() is None
    assert len(task.test_examples()) == 5


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (None, "importable from the working directory"),
        ("import no_such_dependency_fedveil\n", "imports `no_such_dependency_fedveil`"),
        ("def broken(:\n", "failed to import: SyntaxError"),
        ("raise RuntimeError('boom\\n  two lines')\n", "failed to import: RuntimeError: boom two"),
        ("x = 1\n", "has no make_task(settings) function"),
        ("make_task = 3\n", "has no make_task(settings) function"),
        ("def make_task(settings):\n    return 3\n", "returned int, not a common.task.Task"),
        (GOOD_TASK.format(norm="nn.BatchNorm1d(8)"), "layer `1` (BatchNorm1d)"),
        (GOOD_TASK.replace("num_classes = 3", "num_classes = 1"), "num_classes must be"),
        (GOOD_TASK.replace("input_shape = (4,)", "input_shape = [4]"), "input_shape must be"),
    ],
)
def test_a_bad_task_module_is_refused_in_one_line(
    user_dir: Path, source: str | None, expected: str
) -> None:
    name = f"missing_{uuid.uuid4().hex}" if source is None else write_module(user_dir, source)

    with pytest.raises(TaskError) as exc:
        load_task(name, SETTINGS)

    message = one_line(exc)
    assert expected in message
    assert name in message or "layer" in message


@pytest.mark.parametrize(
    ("name", "expected"),
    [("", "config key `task` is empty"), ("mypkg/task.py", "dotted module path")],
)
def test_an_empty_or_path_like_task_name_is_refused(name: str, expected: str) -> None:
    with pytest.raises(TaskError) as exc:
        load_task(name, SETTINGS)

    assert expected in one_line(exc)


# ------------------------------------------------------------------------------- vet_model


class WithBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x).mean((2, 3)))
        return out


def test_vet_model_refuses_batchnorm_naming_the_layer_and_groupnorm() -> None:
    with pytest.raises(TaskError) as exc:
        vet_model(WithBatchNorm())

    message = one_line(exc)
    assert "layer `features.1` (BatchNorm2d)" in message
    assert "GroupNorm" in message


def test_vet_model_refuses_an_lstm_naming_dplstm() -> None:
    with pytest.raises(TaskError) as exc:
        vet_model(nn.Sequential(nn.LSTM(4, 4)))

    assert "DPLSTM" in one_line(exc)


def test_vet_model_refuses_a_model_in_eval_mode() -> None:
    with pytest.raises(TaskError, match="training mode"):
        vet_model(WithBatchNorm().eval())


def test_vet_model_accepts_the_registered_models() -> None:
    for name in ("mlp", "cnn"):
        vet_model(create_model(name, 10, seed=0))


# ------------------------------------------------------------------------- check_examples


def examples(n: int = 6) -> Examples:
    return Examples(torch.zeros(n, 1, 8, 8), torch.arange(n) % 10)


BAD_EXAMPLES = {
    "empty": (Examples(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.int64)), "no examples"),
    "1-D inputs": (Examples(torch.zeros(6), torch.zeros(6, dtype=torch.int64)), "shape (6,)"),
    "wrong shape": (
        Examples(torch.zeros(6, 1, 28, 28), torch.zeros(6, dtype=torch.int64)),
        "expected (n, 1, 8, 8)",
    ),
    "float inputs of 64 bits": (
        Examples(torch.zeros(6, 1, 8, 8, dtype=torch.float64), torch.zeros(6, dtype=torch.int64)),
        "float32",
    ),
    "float labels": (Examples(torch.zeros(6, 1, 8, 8), torch.zeros(6)), "int64 class indices"),
    "2-D labels": (
        Examples(torch.zeros(6, 1, 8, 8), torch.zeros(6, 1, dtype=torch.int64)),
        "expected (n,)",
    ),
    "label too large": (
        Examples(torch.zeros(6, 1, 8, 8), torch.tensor([0, 1, 2, 3, 4, 10])),
        "[0, 10], outside [0, 9]",
    ),
    "negative label": (
        Examples(torch.zeros(6, 1, 8, 8), torch.tensor([0, 1, -1, 3, 4, 5])),
        "[-1, 5], outside",
    ),
    "non-finite inputs": (
        Examples(
            torch.zeros(6, 1, 8, 8).index_fill_(0, torch.tensor([2]), float("nan")),
            torch.zeros(6, dtype=torch.int64),
        ),
        "64 input values are NaN or infinite",
    ),
    "length mismatch": (
        Examples(torch.zeros(6, 1, 8, 8), torch.zeros(5, dtype=torch.int64)),
        "6 inputs but 5 labels",
    ),
    "not tensors": (Examples(np.zeros((6, 1, 8, 8)), torch.zeros(6)), "torch tensors"),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("case", sorted(BAD_EXAMPLES))
def test_check_examples_refuses_naming_the_source(case: str) -> None:
    bad, expected = BAD_EXAMPLES[case]

    with pytest.raises(TaskError) as exc:
        check_examples(bad, num_classes=10, input_shape=(1, 8, 8), source="node-3.npz")

    message = one_line(exc)
    assert message.startswith("node-3.npz: ")
    assert expected in message


def test_check_examples_accepts_fitting_examples() -> None:
    check_examples(examples(), num_classes=10, input_shape=(1, 8, 8), source="ok")


def test_select_takes_the_examples_at_the_indices() -> None:
    pool = Examples(torch.arange(10.0)[:, None], torch.arange(10) % 3)

    part = pool.select(np.array([7, 2, 2], dtype=np.int64))

    assert part.inputs.flatten().tolist() == [7.0, 2.0, 2.0]
    assert part.labels.tolist() == [1, 2, 2]


# ---------------------------------------------------------------- built-in tasks = today's


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the IDX layout (LeCun's MNIST page), gzip-compressed."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    dims = struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + dims + array.astype(np.uint8).tobytes()))


def fake_idx_set(folder: Path, rng: np.random.Generator) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 40), ("t10k", 12)):
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    return folder


def fake_femnist(folder: Path, rng: np.random.Generator) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {}
    for split, n in (("train", 30), ("test", 9)):
        arrays[f"x_{split}"] = rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)
        arrays[f"y_{split}"] = rng.integers(0, 62, n)
        arrays[f"writer_{split}"] = np.array([f"f{i % 4:04d}" for i in range(n)])
    np.savez(folder / FEMNIST_FILE, **arrays)
    return folder


@pytest.fixture(params=sorted(BUILTIN_TASKS))
def builtin(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, TaskSettings]:
    name = str(request.param)
    rng = np.random.default_rng(0)
    data_dir = ""
    if name in ("mnist", "fashion-mnist"):
        data_dir = str(fake_idx_set(tmp_path / name, rng))
    elif name == "femnist":
        data_dir = str(fake_femnist(tmp_path / name, rng))
    return name, TaskSettings(seed=5, data_dir=data_dir, test_fraction=0.2, model="auto")


def test_builtin_task_gives_todays_tensors(builtin: tuple[str, TaskSettings]) -> None:
    name, settings = builtin
    data = load_data(name, settings.data_dir, settings.seed, settings.test_fraction)
    indices = np.array([3, 0, 7, 3], dtype=np.int64)

    task = load_task(name, settings)
    pool, test = task.pool(), task.test_examples()

    assert pool is not None
    assert task.num_classes == data.num_classes
    assert task.input_shape == data.image_shape
    x, y = data.tensors(data.train)
    assert torch.equal(pool.inputs, x) and torch.equal(pool.labels, y)
    x, y = data.tensors(data.train, indices)
    part = pool.select(indices)
    assert torch.equal(part.inputs, x) and torch.equal(part.labels, y)
    x, y = data.tensors(data.test)
    assert torch.equal(test.inputs, x) and torch.equal(test.labels, y)
    writers = task.pool_writers()
    expected_writers = data.train.writers
    assert (writers is None) == (expected_writers is None)
    assert writers is None or writers.tolist() == expected_writers.tolist()  # type: ignore[union-attr]
    for examples_, source in ((pool, "pool"), (test, "test")):
        check_examples(
            examples_, num_classes=task.num_classes, input_shape=task.input_shape, source=source
        )


@pytest.mark.parametrize("model", ["auto", "mlp"])
def test_builtin_task_builds_todays_model(model: str) -> None:
    settings = TaskSettings(seed=11, data_dir="", test_fraction=0.2, model=model)
    expected = create_model(model_for(model, (1, 8, 8)), 10, seed=11).state_dict()

    built = load_task("digits", settings).build_model().state_dict()

    assert built.keys() == expected.keys()
    assert all(torch.equal(built[k], expected[k]) for k in expected)


@pytest.mark.parametrize("model", ["cnn", "cnn-wide"])
def test_builtin_task_refuses_a_model_for_other_images(model: str) -> None:
    settings = TaskSettings(seed=11, data_dir="", test_fraction=0.2, model=model)

    with pytest.raises(TaskError, match=f"model `{model}` takes 28x28 images .* digits has 8x8"):
        load_task("digits", settings)


def test_builtin_node_npz_gives_todays_partition(tmp_path: Path) -> None:
    data = load_data("digits", "", SETTINGS.seed, SETTINGS.test_fraction)
    indices = np.array([10, 4, 99], dtype=np.int64)
    path = tmp_path / "node.npz"
    np.savez(path, x=data.train.images[indices][:, 0], y=data.train.labels[indices])

    got = load_task("digits", SETTINGS).node_examples(path)

    x, y = data.tensors(data.train, indices)
    assert torch.equal(got.inputs, x) and torch.equal(got.labels, y)


def test_builtin_node_idx_folder_gives_todays_partition(tmp_path: Path) -> None:
    settings = TaskSettings(
        seed=0,
        data_dir=str(fake_idx_set(tmp_path / "mnist", np.random.default_rng(1))),
        test_fraction=0.2,
        model="auto",
    )
    data = load_data("mnist", settings.data_dir, 0, 0.2)
    node = tmp_path / "node"
    node.mkdir()
    write_idx(node / f"{NODE_IDX_FILES[0]}.gz", data.train.images[:5, 0])
    write_idx(node / f"{NODE_IDX_FILES[1]}.gz", data.train.labels[:5])

    got = load_task("mnist", settings).node_examples(node)

    x, y = data.tensors(data.train, np.arange(5, dtype=np.int64))
    assert torch.equal(got.inputs, x) and torch.equal(got.labels, y)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "does not exist"),
        ({"x": np.zeros((2, 8, 8))}, "must hold arrays `x` (images) and `y` (labels)"),
        ({"x": np.full((2, 8, 8), 0.5) - 1, "y": np.zeros(2, np.int64)}, "raw pixel values"),
        (b"not a zip", "cannot read"),
        ("folder", f"{NODE_IDX_FILES[0]}[.gz] not found"),
    ],
)
def test_builtin_node_data_errors_are_one_line(
    tmp_path: Path, content: dict[str, np.ndarray] | bytes | str | None, expected: str
) -> None:
    path = tmp_path / "node.npz"
    if isinstance(content, dict):
        np.savez(path, **content)  # type: ignore[arg-type]
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "folder":
        path.mkdir()

    with pytest.raises(TaskError) as exc:
        load_task("digits", SETTINGS).node_examples(path)

    assert expected in one_line(exc)


def test_seeded_model_depends_only_on_the_seed_and_leaves_the_global_generator() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)

    first = seeded_model(7, lambda: torch.nn.Linear(3, 2))
    after = torch.rand(1)
    same, other = (seeded_model(s, lambda: torch.nn.Linear(3, 2)) for s in (7, 8))

    assert torch.equal(after, expected_next)
    assert torch.equal(first.weight, same.weight)
    assert not torch.equal(first.weight, other.weight)


def test_data_folder_is_data_dir_expanded_or_the_default(tmp_path: Path) -> None:
    unset = TaskSettings(seed=0, data_dir="", test_fraction=0.2, model="auto")
    home = TaskSettings(seed=0, data_dir="~/sets", test_fraction=0.2, model="auto")

    assert unset.data_folder(tmp_path) == tmp_path
    assert home.data_folder(tmp_path) == Path.home() / "sets"


def test_task_of_an_empty_task_is_the_built_in_dataset_with_the_runs_settings() -> None:
    config = FedveilConfig.from_flat({"seed": 5, "test-fraction": 0.25, "model": "mlp"})

    task = task_of(config)

    assert task is load_task("digits", TaskSettings(5, "", 0.25, "mlp"))
    assert (task.input_shape, task.num_classes) == ((1, 8, 8), 10)


def test_task_of_a_module_path_loads_that_module(tmp_path: Path) -> None:
    from examples.tabular_csv.make_data import write_dataset
    from examples.tabular_csv.task import SensorTask

    write_dataset(tmp_path, seed=0, train=8, test=8, node_sizes=())
    config = FedveilConfig.from_flat(
        {"task": "examples.tabular_csv.task", "data-dir": str(tmp_path), "dataset": "mnist"}
    )

    task = task_of(config)

    assert isinstance(task, SensorTask) and task.root == tmp_path  # `dataset` is not used


def test_read_examples_turns_a_user_readers_failure_into_one_line() -> None:
    def broken() -> Examples:
        raise ValueError("no column\n  `speed`")

    with pytest.raises(TaskError) as refused:
        read_examples(broken, source="/data/x.csv")

    assert (
        str(refused.value)
        == "/data/x.csv: cannot be read by the task (ValueError: no column `speed`)"
    )


def test_read_examples_lets_one_line_errors_through_unchanged() -> None:
    from common.data import DataError

    for error in (TaskError("a.csv: bad"), DataError("b.idx: truncated")):

        def fails(error: Exception = error) -> Examples:
            raise error

        with pytest.raises(type(error)) as raised:
            read_examples(fails, source="ignored")
        assert raised.value is error
