from __future__ import annotations

import pytest
import torch
from opacus.data_loader import DPDataLoader
from torch.utils.data import DataLoader

from client.trainer import DPSGDSettings, IndexedTensors, _collate_gathered, train_dp_sgd
from common.accounting import steps_per_round
from common.models import create_model


def _examples(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 8, 8, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def test_batches_are_gathered_examples_in_index_order() -> None:
    images, labels = _examples(10)
    data = IndexedTensors(images, labels)

    batch = data.__getitems__([7, 2, 2, 9])

    assert len(batch) == 4
    assert torch.equal(batch.images, images[[7, 2, 2, 9]])
    assert torch.equal(batch.labels, labels[[7, 2, 2, 9]])
    assert torch.equal(data[3][0], images[3])


def test_mismatched_images_and_labels_are_refused() -> None:
    images, labels = _examples(5)
    with pytest.raises(ValueError, match="5 images but 4 labels"):
        IndexedTensors(images, labels[:4])


def test_poisson_loader_yields_whole_and_empty_batches_with_the_right_shapes() -> None:
    images, labels = _examples(6)
    base = DataLoader(IndexedTensors(images, labels), batch_size=3, collate_fn=_collate_gathered)
    # A sampling rate this low makes most Poisson batches empty: they must still be batches
    # of shape (0, ...), which the DP optimizer turns into a noise-only step.
    loader = DPDataLoader.from_data_loader(base, generator=torch.Generator().manual_seed(1))
    loader.sample_rate = 1e-3
    loader.batch_sampler.sample_rate = 1e-3  # type: ignore[union-attr]

    shapes = {tuple(x.shape[1:]) for x, _ in loader}
    sizes = [len(y) for _, y in loader]

    assert shapes == {(1, 8, 8)}
    assert 0 in sizes


def test_dp_sgd_takes_the_planned_steps_and_changes_the_model() -> None:
    images, labels = _examples(40)
    model = create_model("mlp", 10, seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    settings = DPSGDSettings(
        local_epochs=2, batch_size=8, lr=0.5, momentum=0.0, noise_multiplier=1.0, max_grad_norm=1.0
    )

    outcome = train_dp_sgd(model, images, labels, settings)

    assert outcome.entry == (1.0, 8 / 40, steps_per_round(40, 8, 2))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
