"""DP-SGD in the round's subspace (``client.subspace`` through ``client.trainer``).

Each test fails if its part is removed: the gradient restricted after clipping instead of
before (the clip then scales the kept part by the whole norm), the noise left outside, or the
weights outside moved. Noise and batches come from seeded generators, in the tests only.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from client import trainer
from client.subspace import SubspaceDPSGD, parameter_masks
from client.trainer import DPSGDSettings, train_dp_sgd


@pytest.fixture(autouse=True)
def seeded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seed the trainer's noise and sampling generators (test-only; the product never seeds)."""
    seeds = itertools.count(7)

    def generator(*_: Any, **__: Any) -> torch.Generator:
        return torch.Generator().manual_seed(next(seeds))

    monkeypatch.setattr(trainer, "_secret_generator", generator)


def _settings(**changes: Any) -> DPSGDSettings:
    base: dict[str, Any] = {
        "local_epochs": 1,
        "batch_size": 16,
        "lr": 0.1,
        "momentum": 0.9,
        "noise_multiplier": 1.3,
        "max_grad_norm": 0.7,
    }
    return DPSGDSettings(**{**base, **changes})


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in model.state_dict().values()]).clone()


def _mask(size: int, kept: int, seed: int = 0) -> np.ndarray:
    mask = np.zeros(size, dtype=np.bool_)
    mask[np.random.default_rng(seed).choice(size, kept, replace=False)] = True
    return mask


def test_only_the_subspace_moves_and_every_kept_weight_does() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4))
    before = _flat(model)
    mask = _mask(before.numel(), 60)
    gen = torch.Generator().manual_seed(1)
    images, labels = torch.randn(128, 20, generator=gen), torch.randint(0, 4, (128,), generator=gen)

    train_dp_sgd(model, images, labels, _settings(), subspace=mask)

    moved = (_flat(model) != before).numpy()
    assert not moved[~mask].any()
    assert moved[mask].all()  # noise alone moves every kept weight


def test_the_noise_is_drawn_only_inside_with_std_sigma_c_over_b() -> None:
    # Zero inputs give a bias-free layer zero gradients: the step is noise alone.
    n, features, classes = 64, 300, 10
    settings = _settings(momentum=0.0, lr=1.0)
    model = nn.Linear(features, classes, bias=False)
    before = _flat(model)
    mask = _mask(before.numel(), 1500)

    outcome = train_dp_sgd(
        model, torch.zeros(n, features), torch.zeros(n, dtype=torch.long), settings, subspace=mask
    )

    step = (_flat(model) - before).numpy()
    steps = outcome.entry[2]
    expected = settings.noise_multiplier * settings.max_grad_norm / settings.batch_size
    assert np.all(step[~mask] == 0)
    # 1,500 draws: the sample std is within ~2 % of the truth (5 sd is 9 %).
    assert float(step[mask].std()) == pytest.approx(expected * np.sqrt(steps), rel=0.09)


def test_an_example_is_clipped_by_its_norm_inside_the_subspace() -> None:
    # One example whose gradient is huge outside the subspace and small inside: clipped by its
    # norm inside, the kept part passes whole; clipped by the whole norm, it would shrink ~1e4x.
    features, classes = 50, 10
    settings = _settings(batch_size=1, noise_multiplier=0.0, momentum=0.0, lr=1.0)
    image = torch.full((1, features), 100.0)
    image[0, 0] = 0.001
    torch.manual_seed(0)
    model = nn.Linear(features, classes, bias=False)
    label = model(image).argmin(dim=1).detach()
    (gradient,) = torch.autograd.grad(
        nn.functional.cross_entropy(model(image), label), [model.weight]
    )
    mask = np.zeros((classes, features), dtype=np.bool_)
    mask[:, 0] = True  # the first input feature's weights only
    before = _flat(model)

    train_dp_sgd(model, image, label, settings, subspace=mask.reshape(-1))

    step = (before - _flat(model)).reshape(classes, features)
    inside = gradient[:, 0]
    assert float(gradient.norm()) > 1000 * settings.max_grad_norm
    assert float(inside.norm()) < settings.max_grad_norm  # nothing to clip inside
    torch.testing.assert_close(step[:, 0], inside, rtol=1e-4, atol=1e-7)
    assert float(step[:, 1:].abs().max()) == 0.0


def test_a_subspace_uses_per_sample_gradients_even_where_ghost_clipping_would_win(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(trainer, "GHOST_FROM_VALUES", 0)  # ghost for every model
    model = nn.Linear(8, 3, bias=False)
    before = _flat(model)
    mask = _mask(before.numel(), 5)

    train_dp_sgd(model, torch.randn(32, 8), torch.randint(0, 3, (32,)), _settings(), subspace=mask)

    assert not ((_flat(model) != before).numpy()[~mask]).any()


def test_masks_follow_the_state_dict_layout_and_refuse_what_does_not_fit() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    size = sum(t.numel() for t in model.state_dict().values())
    mask = np.zeros(size, dtype=np.bool_)
    mask[:6] = True  # the first layer's weight
    masks = parameter_masks(model, mask, torch.device("cpu"))
    assert [tuple(m.shape) for m in masks] == [tuple(p.shape) for p in model.parameters()]
    assert float(masks[0].sum()) == 6 and float(sum(m.sum() for m in masks[1:])) == 0

    with pytest.raises(ValueError, match="values for"):
        parameter_masks(model, mask[:-1], torch.device("cpu"))
    running_mean = list(model.state_dict()).index("1.running_mean")
    offset = sum(t.numel() for t in list(model.state_dict().values())[:running_mean])
    buffer_kept = np.zeros(size, dtype=np.bool_)
    buffer_kept[offset] = True
    with pytest.raises(ValueError, match="not trained"):
        parameter_masks(model, buffer_kept, torch.device("cpu"))


def test_attach_refuses_an_optimizer_over_other_parameters() -> None:
    masks = [torch.ones(2, 3)]

    optimizer = SimpleNamespace(params=[torch.zeros(3, 2)])

    with pytest.raises(ValueError, match="not the ones"):
        SubspaceDPSGD(masks).attach(optimizer)
