from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from safetensors.numpy import save as safetensors_save
from safetensors.torch import load_file as torch_load_file

from common.models import create_model
from common.weights import (
    WeightsError,
    flatten,
    load_safetensors,
    map_update,
    save_safetensors,
    unflatten,
)

names = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12)
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)


@st.composite
def named_arrays(draw: st.DrawFn) -> dict[str, np.ndarray]:
    keys = draw(st.lists(names, min_size=0, max_size=5, unique=True))
    return {
        k: draw(hnp.arrays(np.float32, draw(shapes), elements=st.floats(width=32))) for k in keys
    }


def bitwise_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype == np.float32 and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def shapes_of(arrays: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in arrays.items()}


def model_arrays() -> dict[str, np.ndarray]:
    model = create_model("cnn", 10, seed=0)
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------- flatten / unflatten


def test_flatten_known_answer() -> None:
    arrays = {"b": np.array([[1, 2], [3, 4]], np.float32), "a": np.array([5], np.float32)}

    flat = flatten(arrays)

    # Mapping order, not name order; row-major inside each array.
    assert flat.dtype == np.float32
    assert flat.tolist() == [1, 2, 3, 4, 5]


def test_flatten_empty_and_other_dtypes() -> None:
    assert flatten({}).shape == (0,)
    assert flatten({}).dtype == np.float32
    assert flatten({"x": np.array([0.5, 1.5], np.float64)}).dtype == np.float32


@settings(max_examples=60, deadline=None)
@given(named_arrays())
def test_unflatten_inverts_flatten(arrays: dict[str, np.ndarray]) -> None:
    flat = flatten(arrays)

    back = unflatten(flat, shapes_of(arrays))

    assert flat.ndim == 1
    assert flat.shape[0] == sum(a.size for a in arrays.values())
    assert list(back) == list(arrays)
    assert all(bitwise_equal(back[k], arrays[k]) for k in arrays)


def test_model_state_round_trips_through_a_flat_vector() -> None:
    model = create_model("cnn", 10, seed=0)
    arrays = model_arrays()
    vector = flatten(arrays)

    other = create_model("cnn", 10, seed=1)
    back = unflatten(vector, shapes_of(arrays))
    other.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()})

    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(other(x), model(x))


@pytest.mark.parametrize("delta", [-1, 1, 100])
def test_unflatten_wrong_length(delta: int) -> None:
    shapes = {"w": (2, 3), "b": (3,)}

    with pytest.raises(WeightsError, match="9"):
        unflatten(np.zeros(9 + delta, np.float32), shapes)


def test_unflatten_refuses_a_matrix() -> None:
    with pytest.raises(WeightsError):
        unflatten(np.zeros((3, 3), np.float32), {"w": (9,)})


# ------------------------------------------------------------------------------ safetensors


@settings(max_examples=25, deadline=None)
@given(named_arrays())
def test_safetensors_round_trip(
    tmp_path_factory: pytest.TempPathFactory, arrays: dict[str, np.ndarray]
) -> None:
    path = tmp_path_factory.mktemp("st") / "model.safetensors"

    save_safetensors(path, arrays)
    loaded = load_safetensors(path, shapes_of(arrays))

    assert set(loaded) == set(arrays)
    assert all(bitwise_equal(loaded[k], arrays[k]) for k in arrays)


def test_saved_model_loads_in_torch_under_state_dict_names(tmp_path: Path) -> None:
    arrays = model_arrays()
    path = tmp_path / "model.safetensors"

    save_safetensors(path, arrays)
    tensors = torch_load_file(str(path))

    # The run-directory contract: tensor names are the model's state_dict keys.
    model = create_model("cnn", 10, seed=5)
    model.load_state_dict(tensors)
    assert all(np.array_equal(model.state_dict()[k].numpy(), arrays[k]) for k in arrays)


def test_load_returns_float32_in_expected_order(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(safetensors_save({"b": np.ones(2), "a": np.zeros((1, 2))}))

    loaded = load_safetensors(path, {"a": (1, 2), "b": (2,)})

    assert list(loaded) == ["a", "b"]
    assert all(v.dtype == np.float32 for v in loaded.values())


@pytest.mark.parametrize(
    ("stored", "expected", "hint"),
    [
        ({"w": (2,)}, {"w": (2,), "b": (1,)}, "missing ['b']"),
        ({"w": (2,), "b": (1,)}, {"w": (2,)}, "unexpected ['b']"),
        ({"x": (2,)}, {"w": (2,)}, "missing ['w']"),
        ({"w": (2, 3)}, {"w": (3, 2)}, "tensor w"),
        ({"w": (6,)}, {"w": (2, 3)}, "tensor w"),
        ({"w": ()}, {"w": (1,)}, "tensor w"),
    ],
)
def test_load_refuses_what_does_not_fit_the_model(
    tmp_path: Path,
    stored: dict[str, tuple[int, ...]],
    expected: dict[str, tuple[int, ...]],
    hint: str,
) -> None:
    path = tmp_path / "model.safetensors"
    save_safetensors(path, {k: np.zeros(s, np.float32) for k, s in stored.items()})

    with pytest.raises(WeightsError) as info:
        load_safetensors(path, expected)

    assert str(path) in str(info.value)
    assert hint in str(info.value)


def valid_file() -> bytes:
    return safetensors_save({"w": np.arange(4, dtype=np.float32)})


NOT_SAFETENSORS = {
    "empty": b"",
    "short": b"\x01\x02",
    "text": b"this is not a model",
    "huge-header-length": (2**62).to_bytes(8, "little") + b"{}",
    "header-not-json": (4).to_bytes(8, "little") + b"nope",
    "truncated": valid_file()[:-3],
    "pickle": b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00.",
}


@pytest.mark.parametrize("case", sorted(NOT_SAFETENSORS))
def test_not_a_safetensors_file_names_it(tmp_path: Path, case: str) -> None:
    path = tmp_path / f"{case}.safetensors"
    path.write_bytes(NOT_SAFETENSORS[case])

    with pytest.raises(WeightsError) as info:
        load_safetensors(path, {"w": (4,)})

    assert str(path) in str(info.value)


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_unreadable_path_names_it(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "model.safetensors"
    if kind == "directory":
        path.mkdir()

    with pytest.raises(WeightsError) as info:
        load_safetensors(path, {"w": (4,)})

    assert str(path) in str(info.value)


# ----------------------------------------------------------------------------- saving


def test_failed_write_of_a_new_file_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "model.safetensors"

    def boom(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        save_safetensors(path, {"w": np.zeros(3, np.float32)})
    monkeypatch.undo()

    assert os.listdir(tmp_path) == []


def test_scalar_and_non_contiguous_arrays_keep_shape_and_values(tmp_path: Path) -> None:
    # A 0-d tensor (e.g. a learned temperature) and a transposed view, saved as they are.
    matrix = np.arange(6, dtype=np.float32).reshape(2, 3)
    arrays = {"scale": np.array(2.5, np.float32), "wt": matrix.T}
    path = tmp_path / "m.safetensors"

    save_safetensors(path, arrays)
    loaded = load_safetensors(path, {"scale": (), "wt": (3, 2)})

    assert loaded["scale"].shape == () and float(loaded["scale"]) == 2.5
    assert loaded["wt"].tolist() == [[0, 3], [1, 4], [2, 5]]


def test_map_update_transforms_the_flat_update_and_adds_it_to_global() -> None:
    global_weights = {"b": np.ones(2, dtype=np.float32), "a": np.zeros((1, 2), dtype=np.float32)}
    local = {"a": np.array([[3.0, 4.0]], dtype=np.float32), "b": np.full(2, 2.0, dtype=np.float32)}
    seen: list[np.ndarray] = []

    def double(flat: np.ndarray) -> np.ndarray:
        seen.append(flat.copy())
        return 2 * flat

    out = map_update(local, global_weights, double)

    np.testing.assert_array_equal(seen[0], [1.0, 1.0, 3.0, 4.0])  # global_weights order
    np.testing.assert_array_equal(out["b"], [3.0, 3.0])
    np.testing.assert_array_equal(out["a"], [[6.0, 8.0]])
    assert all(v.dtype == np.float32 for v in out.values())


def test_map_update_refuses_other_names_or_shapes() -> None:
    global_weights = {"w": np.zeros(3, dtype=np.float32)}
    with pytest.raises(ValueError, match="names differ"):
        map_update({"v": np.zeros(3, dtype=np.float32)}, global_weights, lambda f: f)
    with pytest.raises(ValueError, match="tensor w: local shape"):
        map_update({"w": np.zeros(4, dtype=np.float32)}, global_weights, lambda f: f)


def test_a_dtype_numpy_cannot_read_is_one_line(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "bf16.safetensors"
    save_file({"w": torch.zeros(2, dtype=torch.bfloat16)}, str(path))
    with pytest.raises(WeightsError, match="float32") as info:
        load_safetensors(path, {"w": (2,)})
    assert "\n" not in str(info.value)
