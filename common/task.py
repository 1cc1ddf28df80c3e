"""The task interface: the model and the data of one federated problem, and how fedveil loads it.

The `task` config key names a built-in task (``BUILTIN_TASKS``) or a dotted module path importable
from the working directory or ``PYTHONPATH``; that module defines
``make_task(settings: TaskSettings) -> Task``. The built-in sets are written the same way.

Where each part runs: ``build_model`` everywhere; ``node_examples`` only on the node that owns the
data (a deployment's ``data-path``); ``pool``/``pool_writers`` only in simulation, where one data
set is partitioned into many nodes; ``test_examples``/``root_examples`` only on the server.
Examples never leave the process that reads them. ``FileTask`` is a ``Task`` whose parties all
read files with one reader.

Checks, each a one-line ``TaskError``: ``load_task`` refuses a module that cannot be imported, has
no ``make_task`` or returns something else, and a model Opacus cannot train (``vet_model``);
``check_examples`` refuses data that does not fit the task; ``read_examples`` turns anything a
task's reader raises into one line. ``vet_model`` expects a model fresh
from ``build_model`` (training mode). ``task_of(config)`` is the run's task: `task`, else the
built-in task `dataset` names.
"""

from __future__ import annotations

import abc
import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from common.data import DataError

if TYPE_CHECKING:
    from common.config import FedveilConfig

BUILTIN_TASKS: dict[str, str] = {
    "digits": "common.tasks.digits",
    "mnist": "common.tasks.mnist",
    "fashion-mnist": "common.tasks.fashion_mnist",
    "femnist": "common.tasks.femnist",
}
"""Built-in task names and the modules that define them."""


class TaskError(ValueError):
    """A task, its model or its data cannot be used; the message names what and how to fix it."""


@dataclass(frozen=True)
class Examples:
    """Inputs float32 ``(n, *input_shape)``; labels int64 ``(n,)`` in ``[0, num_classes)``."""

    inputs: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def select(self, indices: npt.NDArray[np.int64]) -> Examples:
        """Return the examples at ``indices`` (a partition of a pool), in that order."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return Examples(self.inputs[index], self.labels[index])


@dataclass(frozen=True)
class TaskSettings:
    """What fedveil passes to ``make_task``, from the run config.

    ``seed`` seeds the model's initial weights (and any split the task draws); ``data_dir`` is the
    run's `data-dir` (``""`` when unset: a task then uses its own default); ``test_fraction`` is the
    share held out for the server when a data set has no test split of its own; ``model`` is
    `model` (``auto``, ``mlp``, ``cnn``, ``cnn-wide``), which the built-in tasks honour and user
    tasks may ignore.
    """

    seed: int
    data_dir: str
    test_fraction: float
    model: str

    def data_folder(self, default: Path) -> Path:
        """Return `data-dir` (``~`` expanded), or the task's ``default`` when it is unset."""
        return Path(self.data_dir).expanduser() if self.data_dir else default


def seeded_model(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """Return ``build()`` with its initial weights drawn from torch's generator seeded by ``seed``.

    The global generator's state is restored afterwards, so seeding a model never makes later
    randomness predictable.
    """
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return build()
    finally:
        torch.random.set_rng_state(state)


class Task(abc.ABC):
    """One federated classification problem: a model and where each party's examples come from."""

    @property
    @abc.abstractmethod
    def num_classes(self) -> int:
        """Number of classes; labels lie in ``[0, num_classes)``."""

    @property
    @abc.abstractmethod
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. ``(1, 28, 28)``; a node knows it without the server's data."""

    @abc.abstractmethod
    def build_model(self) -> nn.Module:
        """Return a fresh model with initial weights that depend only on the settings' seed."""

    @abc.abstractmethod
    def node_examples(self, data_path: Path) -> Examples:
        """Read a deployed node's own examples from ``data_path`` (a file or a folder)."""

    @abc.abstractmethod
    def test_examples(self) -> Examples:
        """Return the server's held-out test examples (never given to a client)."""

    def pool(self) -> Examples | None:
        """Return the training pool a simulation partitions among nodes, if the task has one."""
        return None

    def pool_writers(self) -> npt.NDArray[np.str_] | None:
        """Return one natural id per pool example (e.g. FEMNIST writers) for `by-writer` splits."""
        return None

    def root_examples(self) -> Examples | None:
        """Return a small trusted root set held by the server, if the task has one."""
        return None


class FileTask(Task):
    """A task whose every party reads its examples with one reader, from a file or a folder.

    A subclass declares ``num_classes``, ``input_shape``, ``network`` (called with no arguments
    to build the model; ``build_model`` seeds its initial weights) and ``read`` (a static
    method from a path to ``Examples``, raising ``TaskError`` naming the path). A simulation's
    pool is ``root / pool_file``, the server's test set ``root / test_file``; a deployed node
    reads its own `data-path`.
    """

    network: Callable[[], nn.Module]
    pool_file = "train"
    test_file = "test"

    def __init__(self, root: Path, seed: int) -> None:
        self.root = root
        self.seed = seed

    @staticmethod
    @abc.abstractmethod
    def read(path: Path, /) -> Examples:
        """Read the examples at ``path``."""

    def build_model(self) -> nn.Module:
        """Return a fresh ``network()`` whose initial weights depend only on the seed."""
        return seeded_model(self.seed, self.network)

    def node_examples(self, data_path: Path) -> Examples:
        """Read the node's own `data-path`."""
        return self.read(data_path)

    def pool(self) -> Examples:
        """Read ``root / pool_file``, which a simulation splits among its nodes."""
        return self.read(self.root / self.pool_file)

    def test_examples(self) -> Examples:
        """Read the server's ``root / test_file``."""
        return self.read(self.root / self.test_file)


def check_examples(
    examples: Examples, *, num_classes: int, input_shape: tuple[int, ...], source: str
) -> None:
    """Refuse examples that do not fit the task, with one line naming ``source`` and the problem.

    Raises:
        TaskError: not tensors, empty, wrong dtype or shape, lengths differ, a label outside
            ``[0, num_classes)``, or a non-finite input.

    """

    def refuse(problem: str) -> TaskError:
        return TaskError(f"{source}: {problem}")

    inputs, labels = examples.inputs, examples.labels
    if not isinstance(inputs, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise refuse("inputs and labels must be torch tensors")
    if inputs.dtype != torch.float32:
        raise refuse(f"inputs must be float32, got {inputs.dtype}; convert with .float()")
    if labels.dtype != torch.int64:
        raise refuse(f"labels must be int64 class indices, got {labels.dtype}; use .long()")
    if inputs.ndim < 2 or tuple(inputs.shape[1:]) != tuple(input_shape):
        expected = ", ".join(map(str, input_shape))
        raise refuse(f"inputs have shape {tuple(inputs.shape)}, expected (n, {expected})")
    if labels.ndim != 1:
        raise refuse(f"labels have shape {tuple(labels.shape)}, expected (n,)")
    if inputs.shape[0] != labels.shape[0]:
        raise refuse(f"{inputs.shape[0]} inputs but {labels.shape[0]} labels")
    if labels.shape[0] == 0:
        raise refuse("holds no examples")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise refuse(f"labels span [{low}, {high}], outside [0, {num_classes - 1}]")
    bad = int((~torch.isfinite(inputs)).sum())
    if bad:
        raise refuse(f"{bad} input values are NaN or infinite")


_T = TypeVar("_T")


def read_examples(read: Callable[[], _T], *, source: str) -> _T:
    """Call one of a task's readers; turn whatever it raises into one ``TaskError`` line.

    ``TaskError`` and ``common.data.DataError`` (already one line naming the file) pass
    unchanged; any other exception, from user code, is named with ``source``.
    """
    try:
        return read()
    except (TaskError, DataError):
        raise
    except Exception as exc:  # user code: every failure becomes one line, never a traceback
        reason = " ".join(str(exc).split())
        raise TaskError(
            f"{source}: cannot be read by the task ({type(exc).__name__}: {reason})"
        ) from exc


_FIXES: tuple[tuple[tuple[type[nn.Module], ...], str], ...] = (
    (
        (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm),
        "replace BatchNorm with GroupNorm (e.g. nn.GroupNorm(groups, channels))",
    ),
    (
        (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d),
        "build it with track_running_stats=False",
    ),
    ((nn.LSTM,), "use opacus.layers.DPLSTM instead"),
    ((nn.GRU,), "use opacus.layers.DPGRU instead"),
    ((nn.MultiheadAttention,), "use opacus.layers.DPMultiheadAttention instead"),
)
"""The layers Opacus's validators refuse, and what to use instead."""


def _fix_for(layer: nn.Module) -> str:
    for kinds, fix in _FIXES:
        if isinstance(layer, kinds):
            return fix
    return "opacus.validators.ModuleValidator.fix(model) may replace it"


def vet_model(model: nn.Module) -> None:
    """Refuse a model that Opacus cannot train with DP-SGD, naming the layer and the fix.

    Raises:
        TaskError: ``ModuleValidator.validate(model, strict=False)`` reports an error.

    """
    from opacus.validators import ModuleValidator

    if not isinstance(model, nn.Module):
        raise TaskError(f"build_model returned {type(model).__name__}, not a torch.nn.Module")
    if not ModuleValidator.validate(model, strict=False):
        return
    if not model.training:
        raise TaskError("build_model returned a model in eval mode; return it in training mode")
    for name, layer in model.named_modules():
        # The innermost module that fails is the layer to change; its containers fail through it.
        if ModuleValidator.validate(layer, strict=False) and not any(
            ModuleValidator.validate(child, strict=False) for child in layer.children()
        ):
            where = f"layer `{name}`" if name else "the model itself"
            raise TaskError(
                f"model {where} ({type(layer).__name__}) cannot be trained with DP-SGD "
                f"(Opacus): {_fix_for(layer)}"
            )
    raise TaskError("model cannot be trained with DP-SGD (Opacus ModuleValidator refuses it)")


def _import_task_module(name: str) -> object:
    # Like `python -m`, the working directory comes first: installed distributions ship
    # generic top-level names (Opacus installs a package called `examples`) that would
    # otherwise hide the user's module of the same name.
    if name.endswith(".py") or "/" in name or "\\" in name:
        raise TaskError(
            f"task `{name}` looks like a file path; give a dotted module path (mypkg.task) "
            f"importable from the working directory or PYTHONPATH"
        )
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (name == missing or name.startswith(f"{missing}.")):
            raise TaskError(
                f"task module `{name}` not found; it must be importable from the working "
                f"directory ({cwd}) or PYTHONPATH"
            ) from None
        raise TaskError(
            f"task module `{name}` imports `{missing}`, which is not installed"
        ) from exc
    except Exception as exc:  # any failure inside user code becomes one line
        reason = " ".join(str(exc).split())
        raise TaskError(
            f"task module `{name}` failed to import: {type(exc).__name__}: {reason}"
        ) from exc


def _check_declared(task: Task, name: str) -> None:
    classes = task.num_classes
    if type(classes) is not int or classes < 2:
        raise TaskError(f"task `{name}`: num_classes must be an int >= 2, got {classes!r}")
    shape = task.input_shape
    if not isinstance(shape, tuple) or not shape or any(type(d) is not int or d < 1 for d in shape):
        raise TaskError(
            f"task `{name}`: input_shape must be a tuple of positive ints, got {shape!r}"
        )


@lru_cache(maxsize=8)
def load_task(name: str, settings: TaskSettings) -> Task:
    """Load a task by built-in name or module path, once per process, and vet its model.

    Raises:
        TaskError: the module cannot be imported, has no ``make_task``, ``make_task`` returns
            something other than a ``Task``, or the task's declarations or model are unusable.
            What ``make_task`` itself raises propagates (a task raises ``TaskError`` for bad data).

    """
    if not name.strip():
        raise TaskError(
            f"config key `task` is empty; use one of {sorted(BUILTIN_TASKS)} or a module path"
        )
    module = _import_task_module(BUILTIN_TASKS.get(name, name))
    make_task = getattr(module, "make_task", None)
    if not callable(make_task):
        raise TaskError(
            f"task module `{name}` has no make_task(settings) function; define one that "
            f"returns a common.task.Task"
        )
    task = make_task(settings)
    if not isinstance(task, Task):
        raise TaskError(
            f"make_task in `{name}` returned {type(task).__name__}, not a common.task.Task"
        )
    _check_declared(task, name)
    vet_model(task.build_model())
    return task


def task_of(config: FedveilConfig) -> Task:
    """Return the run's task (`task`, else the built-in `dataset`), loaded once per process.

    Raises:
        TaskError: as ``load_task``.

    """
    settings = TaskSettings(
        seed=config.seed,
        data_dir=config.data_dir,
        test_fraction=config.test_fraction,
        model=config.model,
    )
    return load_task(config.task or config.dataset, settings)
