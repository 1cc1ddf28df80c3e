"""Where model work runs: the ``device`` setting, resolved to a ``torch.device`` that exists here.

Settings: ``auto`` (CUDA when this process sees a GPU, else Apple's MPS when PyTorch has it,
else the CPU), ``cpu``, ``cuda`` (the current CUDA device), ``cuda:N``, ``mps``. An explicit
device this machine cannot use is refused with ``ConfigError`` (one line naming the setting),
never replaced by the CPU behind the user's back. A SuperNode's node config key ``device``
overrides the run's (:func:`node_device`): the owner of a node decides where its data is
trained. Work follows the model: code handed a model runs on the model's device
(:func:`model_device`) and moves its own tensors there once.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Final

import torch
from torch import nn

from common.config import KEYS, ConfigError

NODE_KEY: Final = "device"
"""The node config key that overrides the run's ``device`` on one node."""

_CPU: Final = torch.device("cpu")
_SPEC: Final = KEYS["device"]


def is_device_setting(value: object) -> bool:
    """Return whether ``value`` is a well-formed ``device`` setting (available here or not)."""
    return isinstance(value, str) and bool(_SPEC.check(value))


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(setting: str, *, source: str = "config key `device`") -> torch.device:
    """Return the ``torch.device`` that ``setting`` names on this machine.

    Args:
        setting: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        source: how the error names the setting (a run config key, a node config key).

    Raises:
        ConfigError: ``setting`` is malformed, or names a device this machine does not have.

    """
    if not is_device_setting(setting):
        raise ConfigError(f"{source} must be {_SPEC.domain}, got {setting!r}")
    if setting == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else _CPU
    if setting == "cpu":
        return _CPU
    if setting == "mps":
        if not _mps_available():
            raise ConfigError(f"{source} is `mps` but this machine has no MPS; use `auto` or `cpu`")
        return torch.device("mps")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = torch.device(setting)
    index = device.index or 0
    if index >= count:
        have = "no CUDA device" if count == 0 else f"CUDA devices 0-{count - 1} only"
        raise ConfigError(
            f"{source} is `{setting}` but this machine has {have}; use `auto` or `cpu`"
        )
    return device


def node_device(run_setting: str, node_config: Mapping[str, object]) -> str:
    """Return the node's own ``device`` setting when its node config has one, else the run's.

    Raises:
        ConfigError: the node config's ``device`` is not a well-formed setting.

    """
    own = node_config.get(NODE_KEY)
    if own is None:
        return run_setting
    if not is_device_setting(own):
        raise ConfigError(f"node config key `{NODE_KEY}` must be {_SPEC.domain}, got {own!r}")
    return str(own)


def model_device(model: nn.Module) -> torch.device:
    """Return the device of ``model``'s first parameter or buffer; the CPU if it has none."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return _CPU if first is None else first.device


def device_name(device: torch.device) -> str:
    """Return a human name of ``device``: the GPU's model for CUDA, else the device's type."""
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    return device.type
