from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from opacus import PrivacyEngine
from opacus.grad_sample import GradSampleModule
from opacus.validators import ModuleValidator
from torch import nn

from common.models import (
    IMAGE_SIDES,
    MODELS,
    DigitsMLP,
    SmallCNN,
    WideCNN,
    create_model,
    max_pool_2x2_stride1,
    model_for,
)

INPUTS = {name: (1, side, side) for name, side in IMAGE_SIDES.items()}


@pytest.fixture(autouse=True)
def keep_global_rng() -> Iterator[None]:
    """These tests seed torch's global generator; leave it as other tests found it."""
    state = torch.random.get_rng_state()
    yield
    torch.random.set_rng_state(state)


def test_registry_names() -> None:
    assert {"mlp": DigitsMLP, "cnn": SmallCNN, "cnn-wide": WideCNN} == MODELS
    assert IMAGE_SIDES.keys() == MODELS.keys()


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("num_classes", [10, 62])
@pytest.mark.parametrize("batch", [1, 5])
def test_forward_shape(name: str, num_classes: int, batch: int) -> None:
    model = create_model(name, num_classes, seed=0)
    x = torch.randn(batch, *INPUTS[name])

    logits = model(x)

    assert logits.shape == (batch, num_classes)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_cnn_parameter_count() -> None:
    # By hand: conv1 1*16*8*8+16, conv2 16*32*4*4+32, fc1 512*32+32, fc2 32*10+10.
    expected = (1 * 16 * 64 + 16) + (16 * 32 * 16 + 32) + (512 * 32 + 32) + (32 * 10 + 10)

    model = create_model("cnn", 10, seed=0)

    assert sum(p.numel() for p in model.parameters()) == expected == 26010


@pytest.mark.parametrize("num_classes", [10, 62])
def test_wide_cnn_has_a_million_parameters(num_classes: int) -> None:
    # conv1 1*32*9+32, norm1 2*32, conv2 32*64*9+64, norm2 2*64, fc1 3136*320+320, fc2.
    body = (32 * 9 + 32) + 64 + (32 * 64 * 9 + 64) + 128 + (3136 * 320 + 320)
    expected = body + 320 * num_classes + num_classes

    model = create_model("cnn-wide", num_classes, seed=0)

    assert sum(p.numel() for p in model.parameters()) == expected >= 1_000_000


def test_wide_cnn_takes_one_dp_sgd_step_on_cpu() -> None:
    model = create_model("cnn-wide", 10, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, torch.arange(32) % 10), batch_size=16
    )
    engine = PrivacyEngine(accountant="rdp")
    private, optimizer, private_loader = engine.make_private(
        module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=loader,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        poisson_sampling=False,
    )

    inputs, labels = next(iter(private_loader))
    nn.functional.cross_entropy(private(inputs), labels).backward()
    optimizer.step()

    after = model.state_dict()
    assert all(torch.isfinite(after[k]).all() for k in after)
    assert all(not torch.equal(before[k], after[k]) for k in before)
    assert engine.accountant.history == [(1.0, 0.5, 1)]


def test_mlp_parameter_count() -> None:
    expected = (64 * 64 + 64) + (64 * 10 + 10)

    model = create_model("mlp", 10, seed=0)

    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("name", sorted(MODELS))
def test_opacus_validator_accepts_model(name: str) -> None:
    model = create_model(name, 10, seed=0)

    ModuleValidator.validate(model, strict=True)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("name", sorted(MODELS))
def test_per_sample_gradients_match_one_example_at_a_time(name: str) -> None:
    # Differential test: Opacus's per-sample gradients against a plain loop over examples.
    model = create_model(name, 10, seed=0)
    x = torch.randn(4, *INPUTS[name], generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 3, 9, 3])
    criterion = nn.CrossEntropyLoss(reduction="sum")

    wrapped = GradSampleModule(model, loss_reduction="sum")
    criterion(wrapped(x), y).backward()
    per_sample = {n: p.grad_sample.clone() for n, p in wrapped.named_parameters()}
    wrapped._close()

    for i in range(len(y)):
        model.zero_grad()
        criterion(model(x[i : i + 1]), y[i : i + 1]).backward()
        for pname, param in model.named_parameters():
            assert torch.allclose(per_sample[f"_module.{pname}"][i], param.grad, atol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_same_seed_same_weights(name: str) -> None:
    a = create_model(name, 10, seed=7).state_dict()
    b = create_model(name, 10, seed=7).state_dict()

    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_other_seed_other_weights(name: str) -> None:
    a = create_model(name, 10, seed=7).state_dict()
    b = create_model(name, 10, seed=8).state_dict()
    # GroupNorm starts at weight 1 and bias 0 whatever the seed: only drawn tensors differ.
    drawn = [k for k in a if a[k].unique().numel() > 1]

    assert len(drawn) >= len(a) - 4
    assert all(not torch.equal(a[k], b[k]) for k in drawn)


def test_weights_do_not_depend_on_the_global_stream() -> None:
    torch.manual_seed(1)
    a = create_model("mlp", 10, seed=7).state_dict()
    torch.manual_seed(2)
    torch.rand(100)
    b = create_model("mlp", 10, seed=7).state_dict()

    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_create_model_leaves_the_global_stream_alone(name: str) -> None:
    torch.manual_seed(123)
    control_before = torch.rand(4)
    control_after = torch.rand(4)

    torch.manual_seed(123)
    before = torch.rand(4)
    create_model(name, 10, seed=0)
    after = torch.rand(4)

    assert torch.equal(before, control_before)
    assert torch.equal(after, control_after)


def test_create_model_restores_the_stream_even_when_construction_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(num_classes: int) -> nn.Module:
        torch.rand(10)
        raise RuntimeError("boom")

    monkeypatch.setitem(MODELS, "broken", broken)
    torch.manual_seed(5)
    control = torch.rand(3)
    torch.manual_seed(5)

    with pytest.raises(RuntimeError, match="boom"):
        create_model("broken", 10, seed=0)

    assert torch.equal(torch.rand(3), control)


@pytest.mark.parametrize("name", ["resnet", "", "MLP", "auto"])
def test_unknown_model_lists_registered_names(name: str) -> None:
    with pytest.raises(ValueError) as info:
        create_model(name, 10, seed=0)

    message = str(info.value)
    assert repr(name) in message
    assert all(registered in message for registered in MODELS)


@pytest.mark.parametrize(
    ("name", "shape", "expected"),
    [
        ("auto", (1, 8, 8), "mlp"),
        ("auto", (1, 28, 28), "cnn"),
        ("mlp", (1, 28, 28), "mlp"),
        ("cnn", (1, 8, 8), "cnn"),
        ("cnn-wide", (1, 28, 28), "cnn-wide"),
    ],
)
def test_model_for(name: str, shape: tuple[int, int, int], expected: str) -> None:
    assert model_for(name, shape) == expected


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28)])
def test_auto_model_accepts_its_images(shape: tuple[int, int, int]) -> None:
    model = create_model(model_for("auto", shape), 10, seed=0)

    assert model(torch.zeros(2, *shape)).shape == (2, 10)


@pytest.mark.parametrize("shape", [(4, 16, 14, 14), (3, 32, 5, 5), (1, 1, 2, 2)])
def test_channels_last_pooling_matches_torch_max_pool(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    # Continuous random inputs have no ties, so the argmax (and the gradient) is unique.
    x = torch.randn(*shape, requires_grad=True)
    reference = torch.max_pool2d(x, 2, 1)
    weights = torch.randn(reference.shape)
    (grad_ref,) = torch.autograd.grad((reference * weights).sum(), x)

    pooled = max_pool_2x2_stride1(x)
    (grad,) = torch.autograd.grad((pooled * weights).sum(), x)

    assert pooled.shape == reference.shape
    assert torch.equal(pooled, reference)
    assert torch.equal(grad, grad_ref)
    assert torch.equal(pooled.flatten(1), reference.flatten(1))  # logical order kept
