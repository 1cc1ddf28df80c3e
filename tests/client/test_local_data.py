"""A node's examples: its partition of the task's pool, or its own file (`data-path`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict

from client.local_data import client_id_of, load_local_data, partition_of
from common.config import FedveilConfig
from common.data import load_data
from common.partition import PartitionSpec, cached_partitions
from common.task import TaskError
from examples.tabular_csv.make_data import write_dataset
from examples.tabular_csv.task import FEATURES
from tests.conftest import NODE_ID, client_context

CONFIG = FedveilConfig.from_flat({"sim.clients": 4})
TABULAR = "examples.tabular_csv.task"


def node_context(**node: str | int) -> Context:
    return Context(
        run_id=1, node_id=NODE_ID, node_config=dict(node), state=RecordDict(), run_config={}
    )


@pytest.fixture
def csv_dir(tmp_path: Path) -> Path:
    write_dataset(tmp_path, seed=0, train=60, test=20, node_sizes=(10, 25))
    return tmp_path


def tabular(data_dir: Path) -> FedveilConfig:
    return CONFIG.replace(task=TABULAR, data_dir=str(data_dir))


def test_a_partition_is_the_built_in_data_sets_as_before() -> None:
    spec = PartitionSpec("iid", 4, CONFIG.seed, CONFIG.dirichlet_alpha)
    digits = load_data("digits", "", CONFIG.seed, CONFIG.test_fraction)
    expected = digits.tensors(digits.train, cached_partitions("digits", "", 0, 0.2, spec)[1])

    data = load_local_data(CONFIG, client_context(1, 4))

    assert (data.client_id, data.num_classes) == (1, 10)
    assert torch.equal(data.inputs, expected[0]) and torch.equal(data.labels, expected[1])


def test_a_data_path_is_read_through_the_task(csv_dir: Path) -> None:
    path = csv_dir / "node-1.csv"

    data = load_local_data(tabular(csv_dir), node_context(**{"data-path": str(path)}))

    assert data.inputs.shape == (25, len(FEATURES))
    assert data.source == str(path)
    assert data.client_id == NODE_ID  # no partition-id: the node's own id


def test_the_data_path_wins_over_a_partition(csv_dir: Path) -> None:
    ctx = client_context(2, 4, **{"data-path": str(csv_dir / "node-0.csv")})

    data = load_local_data(tabular(csv_dir), ctx)

    assert (len(data.labels), data.client_id) == (10, 2)


def test_a_simulated_node_of_a_user_task_gets_its_partition_of_the_pool(csv_dir: Path) -> None:
    parts = [load_local_data(tabular(csv_dir), client_context(i, 3)) for i in range(3)]

    assert sum(len(p.labels) for p in parts) == 60
    assert all(p.inputs.shape[1:] == (len(FEATURES),) for p in parts)


def _write(path: Path, header: list[str], rows: list[list[float]]) -> Path:
    lines = [",".join(header), *(",".join(str(v) for v in row) for row in rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda d: d / "absent.csv", "not found"),
        (
            lambda d: _write(d / "labels.csv", [*FEATURES, "label"], [[1.0] * len(FEATURES) + [9]]),
            "outside [0, 3]",
        ),
        (lambda d: _write(d / "columns.csv", ["speed_rpm", "label"], [[1.0, 0]]), "missing"),
        (lambda d: _write(d / "empty.csv", [*FEATURES, "label"], []), "no examples"),
    ],
    ids=["missing", "labels-out-of-range", "wrong-columns", "empty"],
)
def test_unusable_node_data_is_one_line_naming_the_file(
    csv_dir: Path, make: object, problem: str
) -> None:
    path = make(csv_dir)  # type: ignore[operator]

    with pytest.raises(TaskError) as refused:
        load_local_data(tabular(csv_dir), node_context(**{"data-path": str(path)}))

    message = str(refused.value)
    assert str(path) in message and problem in message
    assert "\n" not in message


def test_a_task_module_the_node_cannot_import_is_one_line() -> None:
    with pytest.raises(TaskError, match="no_such_fedveil_task"):
        load_local_data(CONFIG.replace(task="no_such_fedveil_task.task"), client_context(0, 4))


def test_a_partition_outside_the_federation_is_named() -> None:
    with pytest.raises(TaskError, match="outside"):
        partition_of(client_context(4, 4))


@pytest.mark.parametrize(("node", "expected"), [({"partition-id": 3}, 3), ({}, NODE_ID)])
def test_the_client_id_is_the_partition_else_the_node(node: dict[str, int], expected: int) -> None:
    assert client_id_of(node_context(**node)) == expected


def test_a_node_id_beyond_float_precision_stays_exact_as_a_float() -> None:
    ctx = Context(run_id=1, node_id=2**63 + 5, node_config={}, state=RecordDict(), run_config={})

    client = client_id_of(ctx)

    assert int(float(client)) == client
    assert np.isfinite(float(client))


_NODE_IMPORTS = """
import json, sys
from pathlib import Path
from flwr.app import Context, RecordDict
from client.local_data import load_local_data
from common.config import FedveilConfig

config = FedveilConfig.from_flat({"task": sys.argv[1], "data-dir": sys.argv[2]})
context = Context(run_id=1, node_id=7, node_config=json.loads(sys.argv[3]),
                  state=RecordDict(), run_config={})
load_local_data(config, context)
print(json.dumps(sorted({name.partition(".")[0] for name in sys.modules})))
"""


@pytest.mark.parametrize(
    "node", [{"data-path": "node-0.csv"}, {"partition-id": 1, "num-partitions": 3}], ids=str
)
def test_a_node_imports_no_simulation_or_dataframe_library(
    csv_dir: Path, node: dict[str, str | int]
) -> None:
    # A fresh interpreter: this test process has imported everything already. A partition
    # node splits the pool with numpy (common.partition_numpy), not flwr-datasets.
    if "data-path" in node:
        node = {"data-path": str(csv_dir / str(node["data-path"]))}
    done = subprocess.run(
        [sys.executable, "-c", _NODE_IMPORTS, TABULAR, str(csv_dir), json.dumps(node)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = set(json.loads(done.stdout.splitlines()[-1]))

    assert "client" in loaded  # the probe really ran the node's loader
    assert not loaded & {"flwr_datasets", "datasets", "pandas", "pyarrow", "sklearn", "matplotlib"}
