"""The server's root set: drawn from its held-out split, disjoint from evaluation, a descent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from common.config import ConfigError
from common.data import load_data
from common.models import create_model
from common.task import Examples, Task, TaskError
from common.weights import flatten
from server.evaluation import CentralEvaluator
from server.root_set import RootSet, server_examples, split_held_out


def test_root_and_evaluation_split_the_held_out_examples() -> None:
    root, evaluation = split_held_out(360, 100, seed=3)

    assert len(root) == 100 and len(evaluation) == 260
    assert np.intersect1d(root, evaluation).size == 0
    assert np.array_equal(np.union1d(root, evaluation), np.arange(360))
    again, _ = split_held_out(360, 100, seed=3)
    other, _ = split_held_out(360, 100, seed=4)
    assert np.array_equal(root, again) and not np.array_equal(root, other)


def test_no_root_set_leaves_the_whole_split_for_evaluation() -> None:
    root, evaluation = split_held_out(360, 0, seed=0)
    assert root.size == 0 and np.array_equal(evaluation, np.arange(360))


@pytest.mark.parametrize("count", [181, 10_000])
def test_a_root_set_larger_than_half_the_split_is_refused(count: int) -> None:
    with pytest.raises(ConfigError, match=r"`robust.root-examples` must be in \[0, 180\]"):
        split_held_out(360, count, seed=0)


def _held_out() -> Examples:
    data = load_data("digits", "", 0, 0.2)
    return Examples(*data.tensors(data.test))


def test_evaluation_skips_the_root_examples() -> None:
    data = _held_out()
    root, evaluation = split_held_out(len(data), 100, 0)
    model = create_model("mlp", 10, seed=0)
    root_set = RootSet.from_held_out(data, root, lr=1.0, max_grad_norm=1.0)
    # Train on the root set only, so that the two parts score differently.
    for _ in range(40):
        root_set_model_step(model, root_set)

    on_root = CentralEvaluator(data, indices=root).evaluate(model).accuracy
    on_rest = CentralEvaluator(data, indices=evaluation).evaluate(model).accuracy
    on_all = CentralEvaluator(data).evaluate(model).accuracy

    assert on_root > on_rest
    assert on_all == pytest.approx((100 * on_root + len(evaluation) * on_rest) / len(data))


def root_set_model_step(model: torch.nn.Module, root_set: RootSet) -> None:
    """Apply the root set's reference update to ``model`` (what the reference is)."""
    delta = root_set.reference(model, steps=1)
    flat = flatten({k: v.detach().numpy() for k, v in model.state_dict().items()}) + delta
    state, offset = {}, 0
    for name, value in model.state_dict().items():
        state[name] = torch.from_numpy(
            flat[offset : offset + value.numel()].reshape(value.shape).astype(np.float32)
        )
        offset += value.numel()
    model.load_state_dict(state)


def test_reference_descends_the_root_loss_and_leaves_the_model_alone() -> None:
    data = _held_out()
    root, _ = split_held_out(len(data), 100, 0)
    root_set = RootSet.from_held_out(data, root, lr=1.0, max_grad_norm=1.0)
    model = create_model("mlp", 10, seed=0)
    before = flatten({k: v.detach().numpy().copy() for k, v in model.state_dict().items()})

    def loss() -> float:
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(model(root_set.images), root_set.labels))

    start_loss = loss()
    delta = root_set.reference(model)

    assert delta.shape == before.shape and delta.dtype == np.float64
    assert np.array_equal(
        flatten({k: v.detach().numpy() for k, v in model.state_dict().items()}), before
    )
    # Each of the 6 steps moves at most lr * max_grad_norm.
    assert 0 < np.linalg.norm(delta) <= 6 * 1.0 + 1e-5
    root_set_model_step(model, root_set)
    assert loss() < start_loss


def test_a_root_set_without_examples_is_refused() -> None:
    with pytest.raises(ValueError, match="root set"):
        RootSet(
            torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.int64), lr=1.0, max_grad_norm=1.0
        )


class _RowTask(Task):
    """Rows of 3 features, 2 classes; a root set of its own when ``root`` is given."""

    def __init__(self, root: Examples | None = None, bad_test: bool = False) -> None:
        self.root = root
        self.bad_test = bad_test

    @property
    def num_classes(self) -> int:
        return 2

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (3,)

    def build_model(self) -> torch.nn.Module:
        return torch.nn.Linear(3, 2)

    def node_examples(self, data_path: Path) -> Examples:
        raise NotImplementedError

    def test_examples(self) -> Examples:
        labels = torch.arange(40) % (3 if self.bad_test else 2)
        return Examples(torch.randn(40, 3, generator=torch.Generator().manual_seed(0)), labels)

    def root_examples(self) -> Examples | None:
        return self.root


def test_server_examples_without_a_root_set_evaluate_on_every_test_example() -> None:
    root, evaluation = server_examples(_RowTask(), 0, 0, lr=1.0, max_grad_norm=1.0)

    assert root is None
    assert torch.equal(evaluation.inputs, _RowTask().test_examples().inputs)


def test_server_examples_split_the_test_examples_when_the_task_has_no_root_set() -> None:
    root, evaluation = server_examples(_RowTask(), 10, 0, lr=1.0, max_grad_norm=1.0)

    assert root is not None and (len(root), len(evaluation)) == (10, 30)
    test = _RowTask().test_examples().inputs.tolist()
    rows = root.images.tolist() + evaluation.inputs.tolist()
    assert sorted(rows) == sorted(test)  # disjoint, and together the whole test set


def test_a_tasks_own_root_set_is_used_whole_and_evaluation_keeps_every_test_example() -> None:
    own = Examples(torch.zeros(5, 3), torch.tensor([0, 1, 0, 1, 1]))

    root, evaluation = server_examples(_RowTask(own), 2, 0, lr=1.0, max_grad_norm=1.0)

    assert root is not None and torch.equal(root.labels, own.labels)
    assert len(evaluation) == 40
    assert server_examples(_RowTask(own), 0, 0, lr=1.0, max_grad_norm=1.0)[0] is None


def test_test_examples_that_do_not_fit_the_task_are_one_line() -> None:
    with pytest.raises(TaskError, match=r"the task's test examples: labels span \[0, 2\]"):
        server_examples(_RowTask(bad_test=True), 0, 0, lr=1.0, max_grad_norm=1.0)
