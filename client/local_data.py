"""A node's training examples: its own file (``data-path``) or its share of a simulation's pool.

Node config (set by the device owner, never by the server): ``data-path`` names the node's own
data, a file or a folder read here and nowhere else, through the run's task
(``Task.node_examples``); without it, ``partition-id``/``num-partitions`` pick this node's
partition of the task's pool, as a simulation does. Either way the examples are checked against
the task (``common.task.check_examples``) before any privacy is spent.

Every problem (the task module, a missing or malformed file, labels outside the task's classes,
a node config naming no data) is one ``TaskError`` line naming the file or key; the caller
refuses the round with it. ``client_id_of`` is the id a node's replies carry: its
``partition-id`` when it has one, else its Flower node id (kept within float64's exact integers,
as metrics travel as floats).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from flwr.app import Context

from common.config import FedveilConfig
from common.data import DataError
from common.partition import PartitionError, PartitionSpec, task_partitions, task_pool
from common.partition_numpy import split_labels
from common.task import Examples, Task, TaskError, check_examples, read_examples, task_of

DATA_PATH = "data-path"
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
_EXACT_IN_FLOAT = 2**53


@dataclass(frozen=True)
class LocalData:
    """A node's training inputs ``(n, *input_shape)`` float32 and labels ``(n,)`` int64."""

    client_id: int
    inputs: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    source: str


def partition_of(context: Context) -> tuple[int, int]:
    """Return ``(partition_id, num_partitions)`` from the node config.

    Raises:
        TaskError: either key is missing or not an integer, or the id is out of range.

    """
    try:
        pid = int(context.node_config[PARTITION_ID])
        count = int(context.node_config[NUM_PARTITIONS])
    except (KeyError, ValueError, TypeError):
        raise TaskError(
            f"node config names no data: give `{DATA_PATH}` (this node's own file or folder), "
            f"or `{PARTITION_ID}` and `{NUM_PARTITIONS}` for a simulation-style partition "
            f'(--node-config "{PARTITION_ID}=0 {NUM_PARTITIONS}=N")'
        ) from None
    if not 0 <= pid < count:
        raise TaskError(f"node config `{PARTITION_ID}` {pid} is outside [0, {count})")
    return pid, count


def client_id_of(context: Context) -> int:
    """Return the id this node's replies carry: ``partition-id``, else the node id.

    An unusable ``partition-id`` falls back to the node id here; ``partition_of`` refuses it
    where it picks the data.
    """
    try:
        return int(context.node_config[PARTITION_ID])
    except (KeyError, ValueError, TypeError):
        return int(context.node_id) % _EXACT_IN_FLOAT


def _node_file(task: Task, path: Path) -> Examples:
    if not path.exists():
        raise TaskError(f"{path}: not found; set the node config `{DATA_PATH}` to existing data")
    return read_examples(lambda: task.node_examples(path), source=str(path))


def load_local_data(config: FedveilConfig, context: Context) -> LocalData:
    """Return this node's checked training examples (``data-path``, else its partition).

    Raises:
        TaskError: the task, the node config or the data cannot be used (one line).

    """
    client_id = client_id_of(context)
    try:
        task = task_of(config)
        raw_path = str(context.node_config.get(DATA_PATH, "")).strip()
        if raw_path:
            path = Path(raw_path).expanduser()
            examples, source = _node_file(task, path), str(path)
        else:
            pid, count = partition_of(context)
            spec = PartitionSpec(config.partitioning, count, config.seed, config.dirichlet_alpha)
            examples = task_pool(task).select(task_partitions(task, spec, split_labels)[pid])
            source = f"partition {pid} of {count} of the task's pool"
    except (DataError, PartitionError) as exc:
        raise TaskError(str(exc)) from None
    check_examples(
        examples, num_classes=task.num_classes, input_shape=task.input_shape, source=source
    )
    return LocalData(client_id, examples.inputs, examples.labels, task.num_classes, source)
