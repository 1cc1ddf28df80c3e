"""Opacus's grad-sample modes give the trainer's clipped gradients; the trainer's takes empties.

Differential test: one σ = 0 DP-SGD step with every example clipped, on a fixed batch, in each
mode against ``hooks`` (``benchmarks.grad_sample_modes.dp_step``, Opacus's public API only).
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.grad_sample_modes import MODELS, SAME, dp_step, fixed_batch
from client.trainer import GHOST, HOOKS, grad_sample_mode
from common.models import create_model
from simulations.bench_steps import MODES

CPU = torch.device("cpu")


@pytest.mark.parametrize(("model_name", "shape"), MODELS)
@pytest.mark.parametrize("mode", [m for m in MODES if m != "hooks"])
def test_every_mode_takes_the_same_clipped_step_as_hooks(
    model_name: str, shape: tuple[int, int, int], mode: str
) -> None:
    x, y = fixed_batch(shape, 32, CPU)

    reference = dp_step(model_name, "hooks", x, y)
    step = dp_step(model_name, mode, x, y)

    assert float(reference.abs().max()) > 0
    assert float((step - reference).abs().max()) <= SAME * float(reference.abs().max())


@pytest.mark.parametrize("mode", [HOOKS, GHOST])
def test_the_steps_are_clipped_per_example(mode: str) -> None:
    # With every example clipped to C, the mean step's norm is at most C; unclipped it is not.
    x, y = fixed_batch((1, 8, 8), 32, CPU)
    clip = 1e-3

    step = dp_step("mlp", mode, x, y, max_grad_norm=clip)
    loose = dp_step("mlp", mode, x, y, max_grad_norm=1e6)

    assert float(step.norm()) <= clip * (1 + 1e-4)
    assert float(loose.norm()) > 10 * clip


def test_the_trainer_materialises_small_models_and_ghost_clips_large_ones() -> None:
    # The built-in models at the default batch size: hooks where it was measured fastest (the
    # digits MLP, the MNIST CNN), ghost clipping for the million-parameter CNN.
    assert grad_sample_mode(create_model("mlp", 10, seed=0), 64) == HOOKS
    assert grad_sample_mode(create_model("cnn", 10, seed=0), 64) == HOOKS
    assert grad_sample_mode(create_model("cnn-wide", 10, seed=0), 64) == GHOST


@pytest.mark.parametrize(("model_name", "shape"), MODELS)
@pytest.mark.parametrize("mode", [HOOKS, GHOST])
def test_the_trainers_modes_take_an_empty_poisson_batch(
    model_name: str, shape: tuple[int, int, int], mode: str
) -> None:
    from opacus import PrivacyEngine

    x, y = fixed_batch(shape, 8, CPU)
    model = create_model(model_name, 10, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = PrivacyEngine(accountant="rdp")
        kwargs = {
            "module": model,
            "optimizer": optimizer,
            "data_loader": DataLoader(TensorDataset(x, y), batch_size=8),
            "noise_multiplier": 1.0,
            "max_grad_norm": 1.0,
            "poisson_sampling": True,
            "grad_sample_mode": mode,
        }
        criterion: Any = nn.CrossEntropyLoss()
        if mode == GHOST:
            private, dp_optimizer, criterion, _ = engine.make_private(criterion=criterion, **kwargs)
        else:
            private, dp_optimizer, _ = engine.make_private(**kwargs)
        before = [p.detach().clone() for p in model.parameters()]
        criterion(private(x[:0]), y[:0]).backward()
        dp_optimizer.step()

    moved = [not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True)]
    assert all(moved)  # noise on a zero gradient: the step still happens, as accounted
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
