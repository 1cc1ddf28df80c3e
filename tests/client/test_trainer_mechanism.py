"""The DP-SGD mechanism of ``client.trainer.train_dp_sgd``: noise, clipping, Poisson sampling.

Each test fails if its part of the mechanism is removed (σ forced to 0 or a tenth, the clip bound
raised to 1e9, Poisson sampling turned off, an unaccounted step). The trainer draws noise and
batches from OS entropy on purpose; here ``_secret_generator`` is replaced by seeded generators,
in the test only, so every figure below is reproducible, and the tolerances are many standard
errors wide besides.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import opacus
import pytest
import torch
from torch import nn

from client import trainer
from client.trainer import DPSGDSettings, train_dp_sgd
from common.accounting import sample_rate, steps_per_round


@pytest.fixture(autouse=True)
def seeded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seed the trainer's noise and sampling generators (test-only; the product never seeds)."""
    seeds = itertools.count(20261206)

    def generator(*_: Any, **__: Any) -> torch.Generator:
        return torch.Generator().manual_seed(next(seeds))

    monkeypatch.setattr(trainer, "_secret_generator", generator)


@pytest.fixture(params=[trainer.HOOKS, trainer.GHOST])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test in each grad-sample mode the trainer picks from (by its size threshold)."""
    chosen: str = request.param
    monkeypatch.setattr(trainer, "GHOST_FROM_VALUES", 0 if chosen == trainer.GHOST else 2**62)
    return chosen


class _Recorder(nn.Module):
    """A bias-free linear model that records the batch size of every forward pass (one a step)."""

    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(features, classes, bias=False)
        self.batch_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(int(x.shape[0]))
        logits: torch.Tensor = self.fc(x)
        return logits


def _settings(**changes: Any) -> DPSGDSettings:
    base: dict[str, Any] = {
        "local_epochs": 1,
        "batch_size": 16,
        "lr": 0.1,
        "momentum": 0.0,
        "noise_multiplier": 1.3,
        "max_grad_norm": 0.7,
    }
    return DPSGDSettings(**{**base, **changes})


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def test_noise_on_a_zero_gradient_has_std_sigma_c_over_b_per_step(mode: str) -> None:
    # Zero inputs give every example a zero gradient through a bias-free linear layer, so each
    # step moves the weights by -lr * N(0, (σC)^2) / B alone; S steps add S such draws.
    n, features, classes = 64, 500, 20
    settings = _settings()
    model = _Recorder(features, classes)
    before = _flat(model)

    outcome = train_dp_sgd(
        model, torch.zeros(n, features), torch.zeros(n, dtype=torch.long), settings
    )

    steps = outcome.entry[2]
    moved = (_flat(model) - before) / (settings.lr * math.sqrt(steps))
    expected = settings.noise_multiplier * settings.max_grad_norm / settings.batch_size
    # 10,000 coordinates: the sample std's relative standard error is ~0.7 %.
    assert moved.numel() == features * classes
    assert float(moved.std()) == pytest.approx(expected, rel=0.05)
    assert abs(float(moved.mean())) < 5 * expected / math.sqrt(moved.numel())


def test_a_single_examples_contribution_is_clipped_to_c(mode: str) -> None:
    # One example, batch size 1: q = 1, so the example is in the one step's batch for sure.
    # σ = 0 leaves the clipped gradient alone: the step is -lr * clip(g) / 1.
    features, classes = 50, 10
    settings = _settings(batch_size=1, noise_multiplier=0.0, max_grad_norm=0.7)
    image = torch.full((1, features), 100.0)
    torch.manual_seed(0)
    model = _Recorder(features, classes)
    # The least likely class: a label the model already predicts with a large margin would give
    # a vanishing gradient (softmax saturates at these inputs), and nothing left to clip.
    label = model.fc(image).argmin(dim=1).detach()
    raw = nn.functional.cross_entropy(model.fc(image), label)
    (gradient,) = torch.autograd.grad(raw, [model.fc.weight])
    before = _flat(model)

    train_dp_sgd(model, image, label, settings)

    assert trainer.grad_sample_mode(model, settings.batch_size) == mode
    step = (before - _flat(model)) / settings.lr
    assert float(gradient.norm()) > 100 * settings.max_grad_norm  # clipping has work to do
    assert float(step.norm()) == pytest.approx(settings.max_grad_norm, rel=1e-4)
    cosine = torch.nn.functional.cosine_similarity(step, gradient.reshape(-1), dim=0)
    assert float(cosine) == pytest.approx(1.0, abs=1e-5)  # scaled down, not turned


def test_poisson_batch_sizes_vary_with_mean_q_times_n() -> None:
    n, batch = 200, 20
    settings = _settings(local_epochs=10, batch_size=batch)
    q = sample_rate(n, batch)
    model = _Recorder(8, 4)
    gen = torch.Generator().manual_seed(0)

    outcome = train_dp_sgd(
        model, torch.randn(n, 8, generator=gen), torch.randint(0, 4, (n,), generator=gen), settings
    )

    sizes = torch.tensor(model.batch_sizes, dtype=torch.float64)
    assert len(sizes) == outcome.entry[2] == 100
    binomial_std = math.sqrt(n * q * (1 - q))  # each example in independently with rate q
    # 100 steps: the mean's standard error is ~0.42, the std's relative one ~7 %.
    assert float(sizes.mean()) == pytest.approx(q * n, abs=2.5)
    assert 0.6 * binomial_std < float(sizes.std()) < 1.4 * binomial_std


def test_the_accountants_history_matches_the_steps_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    engines: list[Any] = []
    real_engine = opacus.PrivacyEngine

    def recording_engine(*args: Any, **kwargs: Any) -> Any:
        engines.append(real_engine(*args, **kwargs))
        return engines[-1]

    monkeypatch.setattr(opacus, "PrivacyEngine", recording_engine)
    n, batch, epochs = 48, 8, 3
    settings = _settings(local_epochs=epochs, batch_size=batch, noise_multiplier=0.9)
    model = _Recorder(8, 4)
    gen = torch.Generator().manual_seed(1)

    outcome = train_dp_sgd(
        model, torch.randn(n, 8, generator=gen), torch.randint(0, 4, (n,), generator=gen), settings
    )

    (engine,) = engines
    taken = len(model.batch_sizes)  # one forward pass per optimizer step, empty batches too
    assert taken == steps_per_round(n, batch, epochs) == 18
    assert engine.accountant.history == [(0.9, sample_rate(n, batch), taken)]
    assert outcome.entry == (0.9, sample_rate(n, batch), taken)
