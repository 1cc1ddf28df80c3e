"""Model weights as named float32 arrays: flat vectors for the codec, safetensors on disk.

Names are the model's ``state_dict`` keys, in ``state_dict`` order; that order defines the layout
of the flat vector a client's update is encoded as.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt

from common.files import write_atomic

NamedArrays = dict[str, npt.NDArray[np.float32]]


class WeightsError(ValueError):
    """A weights file or update does not fit the model (names, shapes, dtype, format)."""


def flatten(arrays: Mapping[str, npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
    """Concatenate arrays (in mapping order) into one 1-D float32 vector."""
    if not arrays:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate([np.asarray(a, dtype=np.float32).ravel() for a in arrays.values()])


def unflatten(
    vector: npt.NDArray[np.float32], shapes: Mapping[str, tuple[int, ...]]
) -> NamedArrays:
    """Split a 1-D vector back into named arrays of ``shapes`` (the inverse of ``flatten``)."""
    total = sum(int(np.prod(s)) for s in shapes.values())
    if vector.ndim != 1 or vector.shape[0] != total:
        raise WeightsError(f"vector of shape {vector.shape} does not fit {total} parameters")
    out: NamedArrays = {}
    offset = 0
    for name, shape in shapes.items():
        n = int(np.prod(shape))
        out[name] = vector[offset : offset + n].reshape(shape)
        offset += n
    return out


def map_update(
    local: Mapping[str, npt.NDArray[np.floating]],
    global_weights: Mapping[str, npt.NDArray[np.floating]],
    transform: Callable[[npt.NDArray[np.float32]], npt.NDArray[np.floating]],
) -> NamedArrays:
    """Return ``global + transform(local - global)`` as named float32 arrays.

    The update is transformed as one flat float32 vector (all tensors in ``global_weights``
    order), as the codec and the server see it; ``transform`` must keep its length.

    Raises:
        ValueError: The names or shapes of ``local`` and ``global_weights`` differ.

    """
    if set(local) != set(global_weights):
        raise ValueError(f"names differ: {sorted(set(local) ^ set(global_weights))}")
    names = list(global_weights)
    base = [np.asarray(global_weights[k], dtype=np.float32) for k in names]
    loc = [np.asarray(local[k], dtype=np.float32) for k in names]
    for k, b, x in zip(names, base, loc, strict=True):
        if b.shape != x.shape:
            raise ValueError(f"tensor {k}: local shape {x.shape} differs from global {b.shape}")
    flat = np.concatenate([(x - b).ravel() for b, x in zip(base, loc, strict=True)])
    changed = transform(flat)
    out: NamedArrays = {}
    offset = 0
    for k, b in zip(names, base, strict=True):
        out[k] = (b + changed[offset : offset + b.size].reshape(b.shape)).astype(np.float32)
        offset += b.size
    return out


def save_safetensors(
    path: Path, arrays: Mapping[str, npt.NDArray[np.float32]], *, durable: bool = True
) -> None:
    """Write named arrays as a safetensors file, atomically (``durable``: see ``write_atomic``)."""
    from safetensors.numpy import save

    # Not np.ascontiguousarray: it turns a 0-d array into shape (1,), which then fails to load.
    contiguous = {k: np.asarray(v, dtype=np.float32, order="C") for k, v in arrays.items()}
    write_atomic(path, save(contiguous), durable=durable)


def load_safetensors(path: Path, expected: Mapping[str, tuple[int, ...]]) -> NamedArrays:
    """Read a safetensors model and check it has exactly the ``expected`` names and shapes."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WeightsError(f"cannot read {path} ({exc.strerror}); give an existing file") from None
    try:
        arrays = load(data)
    except (SafetensorError, ValueError, OSError) as exc:
        raise WeightsError(f"{path} is not a safetensors file ({exc})") from None
    except KeyError as exc:
        # safetensors.numpy knows the dtype name but numpy has no such type (e.g. BF16).
        raise WeightsError(
            f"{path} holds tensors of dtype {exc} that numpy cannot read; save it as float32"
        ) from None
    missing = sorted(set(expected) - set(arrays))
    extra = sorted(set(arrays) - set(expected))
    if missing or extra:
        raise WeightsError(f"{path} does not fit the model: missing {missing}, unexpected {extra}")
    out: NamedArrays = {}
    for name, shape in expected.items():
        if tuple(arrays[name].shape) != tuple(shape):
            raise WeightsError(
                f"{path}: tensor {name} has shape {arrays[name].shape}, the model needs {shape}"
            )
        out[name] = arrays[name].astype(np.float32)
    return out
