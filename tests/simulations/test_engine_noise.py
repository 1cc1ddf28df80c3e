from __future__ import annotations

import logging
import os

import pytest

from simulations.engine_noise import RAY_ACCELERATOR_OPT_IN, quiet_engine

DEPRECATION = (
    "DEPRECATED FEATURE: The `run_simulation` function is deprecated and will be removed\n\n"
    "            This is a deprecated feature."
)


def emitted(caplog: pytest.LogCaptureFixture, message: str) -> bool:
    caplog.clear()
    logging.getLogger("flwr").warning("%s", message)
    return any(r.getMessage() == message for r in caplog.records)


def test_drops_only_the_run_simulation_notice(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING), quiet_engine(verbose=False):
        assert not emitted(caplog, DEPRECATION)
        assert emitted(caplog, "DEPRECATED FEATURE: something else")
        assert emitted(caplog, "node 3 did not answer")


def test_verbose_keeps_the_notice(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING), quiet_engine(verbose=True):
        assert emitted(caplog, DEPRECATION)


def test_filter_is_removed_afterwards(caplog: pytest.LogCaptureFixture) -> None:
    with quiet_engine(verbose=False):
        pass

    with caplog.at_level(logging.WARNING):
        assert emitted(caplog, DEPRECATION)


def test_opts_in_to_rays_accelerator_behaviour_unless_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(RAY_ACCELERATOR_OPT_IN, raising=False)
    with quiet_engine(verbose=False):
        assert os.environ[RAY_ACCELERATOR_OPT_IN] == "0"

    monkeypatch.setenv(RAY_ACCELERATOR_OPT_IN, "1")
    with quiet_engine(verbose=False):
        assert os.environ[RAY_ACCELERATOR_OPT_IN] == "1"
