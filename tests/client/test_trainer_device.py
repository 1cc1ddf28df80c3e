"""Training on the configured device: the plumbing on the CPU, and real CUDA rounds (``gpu``).

The ``gpu`` tests train where CUDA exists and are skipped elsewhere with the reason; they fail
if training silently stays on the CPU (they record the parameters' device at every forward).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Message
from torch import nn

from client import training_round as steps
from client.app import app
from client.trainer import DPSGDSettings, RoundOutcome, train_dp_sgd
from common import protocol
from common.accounting import epsilon_from_history
from common.codec import CodecParams
from common.config import ConfigError, FedveilConfig
from common.envelope import open_client_update
from common.models import create_model
from common.sealing import AggregatorKeyPair, SealContext
from tests.conftest import NODE_ID, RUN_ID, client_context

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
CONFIG = FedveilConfig.from_flat({"num-server-rounds": 3, "sim.clients": 4})
SETTINGS = DPSGDSettings(
    local_epochs=1, batch_size=16, lr=0.1, momentum=0.0, noise_multiplier=1.0, max_grad_norm=1.0
)
SIZE = 4810  # DigitsMLP parameters


def _examples(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 8, 8, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def _train_recording_devices(device: torch.device) -> tuple[RoundOutcome, set[str], nn.Module]:
    """Train the digits MLP on ``device``; return the outcome and every device seen in forwards."""
    model = create_model("mlp", 10, seed=0)
    seen: set[str] = set()

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        seen.update(p.device.type for p in module.parameters())
        seen.update(x.device.type for x in inputs)

    model.register_forward_pre_hook(record)
    images, labels = _examples()
    outcome = train_dp_sgd(model, images, labels, SETTINGS, device=device)
    return outcome, seen, model


def _global() -> ArrayRecord:
    return ArrayRecord(create_model("mlp", 10, seed=0).state_dict())


def _no_accelerators(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def _spy_device(monkeypatch: pytest.MonkeyPatch) -> list[torch.device]:
    """Record the ``device`` each round hands the trainer (training itself runs as usual)."""
    devices: list[torch.device] = []

    def spy(*args: Any, device: torch.device, **kwargs: Any) -> RoundOutcome:
        devices.append(device)
        return train_dp_sgd(*args, device=device, **kwargs)

    monkeypatch.setattr(steps, "train_dp_sgd", spy)
    return devices


def test_training_on_the_cpu_stays_on_the_cpu() -> None:
    outcome, seen, model = _train_recording_devices(torch.device("cpu"))

    assert seen == {"cpu"}
    assert outcome.entry == (1.0, 16 / 64, 4)
    assert all(p.device.type == "cpu" for p in model.parameters())


@pytest.mark.parametrize(
    ("run_setting", "node"),
    [("cpu", {}), ("auto", {}), ("cuda", {"device": "cpu"})],
    ids=["cpu", "auto-without-cuda", "node-config-overrides-the-run"],
)
def test_a_round_trains_on_the_device_its_setting_resolves_to(
    train_request: Callable[..., Message],
    monkeypatch: pytest.MonkeyPatch,
    run_setting: str,
    node: dict[str, str],
) -> None:
    _no_accelerators(monkeypatch)
    devices = _spy_device(monkeypatch)

    reply = app(
        train_request(CONFIG.replace(device=run_setting), _global(), 1),
        client_context(1, 4, **node),
    )

    assert reply.content.config_records[protocol.STATUS]["status"] == protocol.STATUS_TRAINED
    assert devices == [torch.device("cpu")]


def test_a_device_the_node_lacks_is_refused_in_one_line_before_training(
    train_request: Callable[..., Message], monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_accelerators(monkeypatch)
    devices = _spy_device(monkeypatch)

    with pytest.raises(ConfigError) as info:
        app(train_request(CONFIG.replace(device="cuda"), _global(), 1), client_context(1, 4))

    assert devices == []
    assert "`cuda`" in str(info.value)
    assert "\n" not in str(info.value)


def test_a_malformed_node_device_is_refused_naming_the_node_key(
    train_request: Callable[..., Message],
) -> None:
    with pytest.raises(ConfigError, match=r"^node config key `device`"):
        app(train_request(CONFIG, _global(), 1), client_context(1, 4, device="gpu"))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_dp_sgd_trains_on_cuda_with_the_same_accounting(device: str) -> None:
    cuda, seen, model = _train_recording_devices(torch.device(device))
    cpu, _, _ = _train_recording_devices(torch.device("cpu"))

    assert seen == {"cuda"}  # parameters and batches, at every forward
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert cuda.entry == cpu.entry
    assert np.isfinite(cuda.mean_loss)


@pytest.mark.gpu
@needs_cuda
def test_a_cuda_round_seals_an_update_like_a_cpu_round(
    train_request: Callable[..., Message], aggregator: AggregatorKeyPair
) -> None:
    params = CodecParams(topk=CONFIG.codec_topk, bits=CONFIG.codec_bits)
    updates, facts = [], []
    for device in ("cuda", "cpu"):
        # The same node and round on each device, each with a fresh (in-memory) state.
        config = CONFIG.replace(device=device)
        reply = app(train_request(config, _global(), 1), client_context(1, 4))
        sealed = reply.content.config_records[protocol.UPDATE][protocol.SEALED]
        assert isinstance(sealed, bytes)
        fact, delta = open_client_update(
            sealed,
            keypair=aggregator,
            expected=SealContext(RUN_ID, 1, NODE_ID),
            params=params,
            size=SIZE,
        )
        updates.append(delta)
        facts.append(fact)

    cuda, cpu = facts
    assert (cuda.noise_multiplier, cuda.sample_rate, cuda.steps) == (
        cpu.noise_multiplier,
        cpu.sample_rate,
        cpu.steps,
    )
    assert cuda.epsilon == pytest.approx(cpu.epsilon)
    assert cuda.epsilon == pytest.approx(
        epsilon_from_history(
            [(cuda.noise_multiplier, cuda.sample_rate, cuda.steps)],
            delta=CONFIG.dp_delta,
            accountant=CONFIG.dp_accountant,
        )
    )
    kept = int(np.ceil(CONFIG.codec_topk * SIZE))
    assert [int(np.count_nonzero(u)) for u in updates] == [kept, kept]
    # Each step moves the weights by lr x (a mean of clipped gradients, norm about C at most,
    # + noise of std σC/B per coordinate); top-k only drops coordinates. The two updates differ
    # by at most twice the signal's bound plus a generous multiple of the noise's norm.
    lr, clip, steps_taken = CONFIG.lr, CONFIG.dp_max_grad_norm, cuda.steps
    noise = cuda.noise_multiplier * clip / CONFIG.batch_size * np.sqrt(2 * steps_taken * SIZE)
    bound = lr * (4 * clip * steps_taken + 6 * noise)
    assert np.all(np.isfinite(updates[0]))
    assert float(np.linalg.norm(updates[0] - updates[1])) < bound
