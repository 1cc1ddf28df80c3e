"""Verifying a model file: ``model.safetensors`` and ``watermark.key`` to a verdict.

The model is whichever registered model (``common.models.MODELS``) has exactly the file's tensor
names and shapes; its class count is read from the shapes too, and nothing is built from the
file's numbers before they are checked. Every refusal is one line (:class:`WatermarkError`).
This is what ``fedveil watermark verify`` runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from common.models import IMAGE_SIDES, MODELS, create_model
from common.weights import NamedArrays, WeightsError, load_safetensors
from server.json_checks import RunFileError
from server.rundir import read_model_shapes
from server.watermark_detection import DETECTION_P, WatermarkVerdict, verify_watermark
from server.watermark_key import WatermarkError, read_key
from server.watermark_trigger import TriggerSet

MAX_CLASSES: Final = 10_000
"""Largest class count a model file may claim (bounds what verification builds)."""

INPUT_SHAPES: Final[Mapping[str, tuple[int, int, int]]] = {
    name: (1, side, side) for name, side in IMAGE_SIDES.items()
}
"""Input shape of each registered model, to rebuild the trigger set from a model file alone."""


def state_of(model: nn.Module) -> NamedArrays:
    """Return a copy of ``model``'s ``state_dict`` as named float32 numpy arrays."""
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}


def load_state(model: nn.Module, state: Mapping[str, npt.ArrayLike]) -> None:
    """Load named arrays into ``model`` (names and shapes must match its ``state_dict``)."""
    model.load_state_dict(
        {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state.items()}
    )


def _header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Read the tensor names and shapes from a safetensors header, without the data."""
    if not path.is_file():
        raise WatermarkError(f"cannot read {path} (no such file)")
    try:
        return read_model_shapes(path)
    except RunFileError as exc:
        raise WatermarkError(str(exc)) from None


def _model_shapes(name: str, num_classes: int) -> dict[str, tuple[int, ...]]:
    model = create_model(name, num_classes, seed=0)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def identify_model(shapes: Mapping[str, tuple[int, ...]]) -> tuple[str, int] | None:
    """Return the registered model name and class count whose state has exactly ``shapes``.

    Nothing is built from the file's numbers until they are checked: the names must match a
    registered model's, and the class count is read from the one dimension that changes with
    it (at most ``MAX_CLASSES``) before that model is built and compared shape by shape.
    """
    wanted = dict(shapes)
    for name in MODELS:
        two, three = _model_shapes(name, 2), _model_shapes(name, 3)
        if set(two) != set(wanted):
            continue
        for key, shape in two.items():
            if shape == three[key] or len(wanted[key]) != len(shape):
                continue
            axis = next(i for i, (a, b) in enumerate(zip(shape, three[key], strict=True)) if a != b)
            num_classes = wanted[key][axis]
            if 2 <= num_classes <= MAX_CLASSES and _model_shapes(name, num_classes) == wanted:
                return name, num_classes
            break
    return None


def verify_model_file(
    model_path: Path,
    key_path: Path,
    *,
    threshold: float = DETECTION_P,
    task_model: nn.Module | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> WatermarkVerdict:
    """Test a safetensors model file for the watermark of a key file.

    Without ``task_model`` the model is whichever registered model (``common.models.MODELS``)
    has exactly the file's tensor names and shapes; its class count comes from the shapes too.
    A user task's model is given as ``task_model`` (a fresh instance of the task's architecture)
    with the task's ``input_shape``; its classes are its output width.

    Raises:
        WatermarkError: One line: the key file is missing, unsafe or not a watermark key; the
            model file is missing or not safetensors; or its tensors fit no registered model
            (or not the given task model).

    """
    model_path, key_path = Path(model_path), Path(key_path)
    key = read_key(key_path)
    shapes = _header_shapes(model_path)
    if task_model is not None:
        if input_shape is None:
            raise WatermarkError("a task model needs its input shape")
        model, shape = task_model, input_shape
    else:
        model, shape = _registered_model(model_path, shapes)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    try:
        arrays = load_safetensors(model_path, expected)
    except WeightsError as exc:
        raise WatermarkError(str(exc).splitlines()[0]) from None
    if not all(np.isfinite(a).all() for a in arrays.values()):
        raise WatermarkError(f"{model_path}: the model holds non-finite weights")
    load_state(model, arrays)
    model.eval()
    with torch.no_grad():
        num_classes = int(model(torch.zeros((1, *shape))).shape[-1])
    trigger = TriggerSet.from_key(key, shape, num_classes)
    return verify_watermark(model, trigger, threshold=threshold)


def _registered_model(
    model_path: Path, shapes: Mapping[str, tuple[int, ...]]
) -> tuple[nn.Module, tuple[int, ...]]:
    found = identify_model(shapes)
    if found is None:
        listed = ", ".join(f"{k} {list(v)}" for k, v in list(shapes.items())[:6])
        raise WatermarkError(
            f"{model_path}: tensors fit no registered model {sorted(MODELS)} ({listed}); "
            f"for a user task's model give --task MODULE"
        )
    name, num_classes = found
    if name not in INPUT_SHAPES:
        raise WatermarkError(f"{model_path}: no input shape known for model {name!r}")
    return create_model(name, num_classes, seed=0), INPUT_SHAPES[name]
