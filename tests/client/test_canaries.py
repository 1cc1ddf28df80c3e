from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from client.canaries import GradientCanaries, requested_canaries
from common import protocol
from common.audit_canaries import CanarySpec

# Inputs never require gradients here; PyTorch's note about backward hooks is noise.
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")

SPEC = CanarySpec(5, 6, 12)


def _private_step(canaries: GradientCanaries | None, *, noise: float) -> list[torch.Tensor]:
    """One full-batch DP-SGD step of a small linear model; return the noised, scaled grads."""
    torch.manual_seed(0)
    model = nn.Linear(8, 3)
    data = TensorDataset(torch.randn(16, 8) * 5, torch.randint(0, 3, (16,)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    _, private_opt, loader = PrivacyEngine().make_private(
        module=model,
        optimizer=optimizer,
        data_loader=DataLoader(data, batch_size=16),
        noise_multiplier=noise,
        max_grad_norm=1.0,
        poisson_sampling=False,
        noise_generator=torch.Generator().manual_seed(9),
    )
    if canaries is not None:
        canaries.attach(private_opt)
    x, y = next(iter(loader))
    nn.functional.cross_entropy(model(x), y).backward()
    private_opt.pre_step()
    return [p.grad.detach().clone() for p in model.parameters()]


def _canaries(sample_rate: float) -> GradientCanaries:
    params = list(nn.Linear(8, 3).parameters())
    return GradientCanaries(SPEC, params, sample_rate=sample_rate, max_grad_norm=1.0)


@pytest.mark.parametrize("noise", [0.0, 1.3])
def test_included_canaries_are_added_to_the_clipped_sum_and_nothing_else_changes(
    noise: float,
) -> None:
    # Same data, same noise generator: the only difference is sum(included canaries) / batch.
    plain = _private_step(None, noise=noise)
    audited = _private_step(_canaries(1.0), noise=noise)
    diff = torch.cat([(a - p).flatten() for a, p in zip(audited, plain, strict=True)]).numpy()
    layout = SPEC.layout(diff.shape[0], 1.0)
    expected = layout.dense(SPEC.included().astype(np.float32)) / 16
    assert np.allclose(diff, expected, atol=1e-6)


def test_each_included_canary_is_sampled_at_the_poisson_rate() -> None:
    canaries = _canaries(0.3)
    steps = 2000
    for _ in range(steps):
        canaries.step_sum()
    trials = steps * int(SPEC.included().sum())
    rate = canaries.added / trials
    # Sampling draws from OS entropy: allow five standard deviations of a binomial rate, so the
    # test fails on a wrong rate (1, or twice or half of q) and not by chance.
    assert rate == pytest.approx(0.3, abs=5 * (0.3 * 0.7 / trials) ** 0.5)


def test_a_step_adds_only_included_canaries() -> None:
    canaries = _canaries(1.0)
    flat = canaries.step_sum().numpy()
    scores = SPEC.layout(flat.shape[0], 1.0).scores(-flat)
    assert np.allclose(scores, SPEC.included().astype(float), atol=1e-5)


def test_canaries_over_other_parameters_are_refused() -> None:
    model = nn.Linear(4, 2)
    _, opt, _ = PrivacyEngine().make_private(
        module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=DataLoader(TensorDataset(torch.zeros(4, 4), torch.zeros(4)), batch_size=2),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
    )
    with pytest.raises(ValueError, match="not the ones the canaries span"):
        _canaries(0.5).attach(opt)


def test_the_request_record_gives_the_spec_and_its_absence_none() -> None:
    record = ConfigRecord(
        {
            protocol.AUDIT_DIRECTIONS_SEED: 5,
            protocol.AUDIT_BITS_SEED: 6,
            protocol.AUDIT_CANARIES: 12,
        }
    )
    assert requested_canaries(record) == SPEC
    assert requested_canaries(None) is None
    record[protocol.AUDIT_CANARIES] = 0
    with pytest.raises(ValueError, match="canary count"):
        requested_canaries(record)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_canaries_live_on_the_training_device() -> None:
    # A step's canary sum is built where the optimizer's sums are: no host-device copy per step.
    params = [p.cuda() for p in nn.Linear(8, 3).parameters()]
    canaries = GradientCanaries(
        SPEC, params, sample_rate=1.0, max_grad_norm=1.0, device=torch.device("cuda")
    )
    flat = canaries.step_sum()
    assert flat.device.type == "cuda"
    scores = SPEC.layout(flat.shape[0], 1.0).scores(-flat.cpu().numpy())
    assert np.allclose(scores, SPEC.included().astype(float), atol=1e-5)


def test_in_a_subspace_a_step_adds_the_cut_canaries_with_norm_c_inside_only() -> None:
    params = [p for p in nn.Linear(30, 10).parameters()]
    size = sum(p.numel() for p in params)
    inside = np.random.default_rng(1).random(size) < 0.3
    canaries = GradientCanaries(SPEC, params, sample_rate=1.0, max_grad_norm=1.0, subspace=inside)

    flat = canaries.step_sum().numpy()

    assert not flat[~inside].any()
    cut = SPEC.layout(size, 1.0).restricted(inside, 1.0)
    expected = cut.dense(SPEC.included().astype(np.float64))
    np.testing.assert_allclose(flat, expected, atol=1e-6)
