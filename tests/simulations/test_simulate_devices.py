"""``fedveil simulate``'s devices: Ray's GPU share per client, and refusals before Ray starts."""

from __future__ import annotations

import pytest
import torch

from common.config import ConfigError, FedveilConfig
from simulations.simulate import backend_config, check_devices


def _no_accelerators(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.mark.parametrize("share", [0.0, 0.25, 1.0])
def test_each_client_asks_ray_for_its_gpu_share(share: float) -> None:
    config = FedveilConfig.from_flat({"sim.gpus-per-client": share, "sim.cpus-per-client": 0.5})

    resources = backend_config(config, verbose=False)["client_resources"]

    assert resources == {"num_cpus": 0.5, "num_gpus": share}


def test_the_default_asks_for_no_gpu() -> None:
    assert (
        backend_config(FedveilConfig.from_flat({}), verbose=False)["client_resources"]["num_gpus"]
        == 0.0
    )


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_cpu_and_auto_pass_on_a_machine_without_accelerators(
    monkeypatch: pytest.MonkeyPatch, device: str
) -> None:
    _no_accelerators(monkeypatch)
    check_devices(FedveilConfig.from_flat({"device": device}))


@pytest.mark.parametrize(
    ("flat", "key"),
    [
        ({"device": "cuda"}, "`device`"),
        ({"device": "mps"}, "`device`"),
        ({"sim.gpus-per-client": 0.5}, "`sim.gpus-per-client`"),
    ],
)
def test_a_gpu_the_machine_lacks_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, flat: dict[str, object], key: str
) -> None:
    _no_accelerators(monkeypatch)

    with pytest.raises(ConfigError) as info:
        check_devices(FedveilConfig.from_flat(flat))

    assert key in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("share", [-0.5, 65.0])
def test_an_out_of_domain_gpu_share_is_refused(share: float) -> None:
    with pytest.raises(ConfigError, match=r"`sim\.gpus-per-client`"):
        FedveilConfig.from_flat({"sim.gpus-per-client": share})
