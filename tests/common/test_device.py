"""The ``device`` setting: well-formed values, what ``auto`` picks, refusals, node overrides."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from common.config import ConfigError, FedveilConfig
from common.device import (
    device_name,
    is_device_setting,
    model_device,
    node_device,
    resolve_device,
)


@pytest.mark.parametrize("value", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_well_formed_settings_are_accepted_by_the_config(value: str) -> None:
    assert is_device_setting(value)
    assert FedveilConfig.from_flat({"device": value}).device == value


@pytest.mark.parametrize("value", ["", "gpu", "CUDA", "cuda:", "cuda:x", "cuda:-1", "cpu ", "tpu"])
def test_malformed_settings_are_refused_in_one_line_naming_the_key(value: str) -> None:
    assert not is_device_setting(value)
    with pytest.raises(ConfigError) as info:
        FedveilConfig.from_flat({"device": value})
    message = str(info.value)
    assert "`device`" in message
    assert "\n" not in message


def test_default_is_auto_and_clients_receive_it() -> None:
    config = FedveilConfig.from_flat({})
    assert config.device == "auto"
    assert config.to_client_flat()["device"] == "auto"
    assert FedveilConfig.from_flat({"device": "cpu"}).to_client_flat()["device"] == "cpu"


def test_cpu_resolves_to_the_cpu() -> None:
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_without_accelerators_is_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


def test_auto_prefers_cuda_then_mps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("mps")


@pytest.mark.parametrize("setting", ["cuda", "cuda:0", "cuda:3", "mps"])
def test_an_absent_device_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError) as info:
        resolve_device(setting)
    message = str(info.value)
    assert f"`{setting}`" in message
    assert "`device`" in message
    assert "\n" not in message


def test_a_cuda_index_past_the_last_gpu_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match="0-1 only"):
        resolve_device("cuda:2")


def test_resolve_refuses_a_malformed_setting_naming_its_source() -> None:
    with pytest.raises(ConfigError, match=r"^--device must be"):
        resolve_device("gpu", source="--device")


def test_the_node_config_overrides_the_run() -> None:
    assert node_device("cuda", {"device": "cpu"}) == "cpu"
    assert node_device("cpu", {"partition-id": 0}) == "cpu"


@pytest.mark.parametrize("value", ["gpu", 1, True, ""])
def test_a_malformed_node_setting_is_refused_naming_the_node_key(value: object) -> None:
    with pytest.raises(ConfigError, match=r"^node config key `device`"):
        node_device("auto", {"device": value})


def test_model_device_follows_the_parameters() -> None:
    assert model_device(nn.Linear(2, 2)) == torch.device("cpu")
    assert model_device(nn.ReLU()) == torch.device("cpu")
    assert device_name(torch.device("cpu")) == "cpu"
