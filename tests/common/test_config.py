from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from common.config import ACCOUNTANTS, KEYS, ConfigError, FedveilConfig


def refused(flat: dict[str, Any]) -> str:
    """Parse ``flat``, expect a ConfigError, and return its message."""
    with pytest.raises(ConfigError) as info:
        FedveilConfig.from_flat(flat)
    return str(info.value)


# ------------------------------------------------------------------------------------ defaults


def test_empty_config_takes_every_default() -> None:
    config = FedveilConfig.from_flat({})

    assert config.to_flat() == {key: spec.default for key, spec in KEYS.items()}


@pytest.mark.parametrize("key", sorted(KEYS))
def test_default_has_its_declared_kind_and_lies_in_its_domain(key: str) -> None:
    spec = KEYS[key]

    assert type(spec.default) is spec.kind
    assert spec.check(spec.default)


def test_field_names_are_the_snake_case_keys() -> None:
    fields = [f.name for f in dataclasses.fields(FedveilConfig)]

    assert sorted(fields) == sorted(k.replace(".", "_").replace("-", "_") for k in KEYS)
    assert sorted(fields) == sorted(spec.field for spec in KEYS.values())


def test_config_is_frozen() -> None:
    config = FedveilConfig.from_flat({})

    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 1  # type: ignore[misc]


def test_documented_defaults() -> None:
    # architecture.md: digits is the embedded default; the noise multiplier is calibrated from
    # the target unless given (0 means "calibrate").
    config = FedveilConfig.from_flat({})

    assert config.dataset == "digits"
    assert config.dp_noise_multiplier == 0.0
    assert config.dp_accountant in ACCOUNTANTS


# -------------------------------------------------------------------------------- strictness


def assert_one_line_naming(message: str, key: str) -> None:
    assert "\n" not in message
    assert f"`{key}`" in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("seed", True),
        ("seed", False),
        ("seed", "true"),
        ("num-server-rounds", 1.5),
        ("num-server-rounds", "2.5"),
        ("batch-size", "64.5"),
        ("lr", True),
        ("lr", math.nan),
        ("lr", math.inf),
        ("lr", -math.inf),
        ("lr", "nan"),
        ("lr", "inf"),
        ("dp.delta", math.nan),
        ("dp.target-epsilon", "inf"),
        ("dp.target-epsilon", "true"),
        ("dataset", 3),
        ("dataset", True),
        ("data-dir", 0),
        ("out-dir", 1.5),
    ],
)
def test_wrong_type_is_refused_naming_the_key(key: str, value: Any) -> None:
    message = refused({key: value})

    assert_one_line_naming(message, key)


WRONG_KIND: dict[type, list[Any]] = {
    int: [True, 1.5, math.nan, [1], None],
    float: [True, False, math.nan, math.inf, [1.0], None],
    bool: [1, 0, 1.0, [True], None],
    str: [1, 1.0, True, ["digits"], None],
}


@pytest.mark.parametrize("key", sorted(KEYS))
def test_every_key_refuses_every_wrong_kind(key: str) -> None:
    for value in WRONG_KIND[KEYS[key].kind]:
        message = refused({key: value})
        assert_one_line_naming(message, key)


# ---------------------------------------------------------------------------- domain checks


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("dp.target-epsilon", 0),
        ("dp.target-epsilon", 0.0),
        ("dp.target-epsilon", -1.0),
        ("dp.delta", 0),
        ("dp.delta", 0.0),
        ("dp.delta", 1),
        ("dp.delta", 1.0),
        ("dp.delta", -1e-5),
        ("dp.delta", 1.5),
        ("dp.budget", 0.0),
        ("dp.max-grad-norm", 0.0),
        ("dp.noise-multiplier", -0.1),
        ("dp.accountant", "gdp"),
        ("fraction-train", 0),
        ("fraction-train", 0.0),
        ("fraction-train", 1.5),
        ("test-fraction", 0.0),
        ("test-fraction", 1.0),
        ("dataset", "cifar10"),
        ("dataset", "MNIST"),
        ("dataset", ""),
        ("partitioning", "pathological"),
        ("model", "resnet"),
        ("seed", -1),
        ("seed", 2**32),
        ("num-server-rounds", 0),
        ("local-epochs", 0),
        ("batch-size", 0),
        ("momentum", 1.0),
        ("momentum", -0.5),
        ("lr", 0.0),
        ("dirichlet-alpha", 0.0),
        ("round-timeout", 0.0),
        ("min-train-clients", 0),
        ("sim.clients", 0),
        ("sim.cpus-per-client", 0.0),
        ("out-dir", ""),
        ("codec.mask", "rand-k"),
        ("robust.root-examples", -1),
        ("robust.root-examples", 100_001),
    ],
)
def test_out_of_domain_value_is_refused_naming_the_key(key: str, value: Any) -> None:
    message = refused({key: value})

    assert_one_line_naming(message, key)
    assert repr(value) in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("dp.delta", 1e-300),
        ("dp.delta", 0.999),
        ("fraction-train", 1.0),
        ("fraction-train", 1e-9),
        ("seed", 0),
        ("seed", 2**32 - 1),
        ("momentum", 0.0),
        ("dp.noise-multiplier", 0.0),
        ("num-server-rounds", 1),
    ],
)
def test_domain_boundaries_inside_are_accepted(key: str, value: Any) -> None:
    config = FedveilConfig.from_flat({key: value})

    assert config.to_flat()[key] == value


@pytest.mark.parametrize("key", ["num-rounds", "dp.target_epsilon", "DP.DELTA", "sim", ""])
def test_unknown_key_is_refused_naming_it(key: str) -> None:
    message = refused({key: 1})

    assert_one_line_naming(message, key)
    assert "unknown" in message


def test_unknown_key_is_refused_even_beside_valid_ones() -> None:
    message = refused({"seed": 1, "lr": 0.1, "num-rounds": 3})

    assert "`num-rounds`" in message


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist", "femnist"])
def test_file_datasets_without_a_data_dir_load_from_the_hub(dataset: str) -> None:
    config = FedveilConfig.from_flat({"dataset": dataset})

    assert (config.dataset, config.data_dir) == (dataset, "")


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist", "femnist"])
def test_file_datasets_accept_a_data_dir(dataset: str) -> None:
    config = FedveilConfig.from_flat({"dataset": dataset, "data-dir": "data/public"})

    assert (config.dataset, config.data_dir) == (dataset, "data/public")


@pytest.mark.parametrize("dataset", ["digits", "mnist", "fashion-mnist"])
def test_by_writer_needs_femnist(dataset: str) -> None:
    message = refused({"dataset": dataset, "data-dir": "d", "partitioning": "by-writer"})

    assert_one_line_naming(message, "partitioning")
    assert "femnist" in message


def test_by_writer_with_femnist_is_accepted() -> None:
    config = FedveilConfig.from_flat(
        {"dataset": "femnist", "data-dir": "d", "partitioning": "by-writer"}
    )

    assert config.partitioning == "by-writer"


# ---------------------------------------------------- known defects in common/config.py (reported)


@pytest.mark.parametrize("flat", [{"seed": "abc"}, {"lr": ""}, {"dp.delta": "small"}])
def test_non_literal_string_for_a_number_is_a_config_error(flat: dict[str, Any]) -> None:
    (key,) = flat
    message = refused(flat)

    assert_one_line_naming(message, key)


def test_huge_integer_for_a_float_key_is_a_config_error() -> None:
    message = refused({"lr": 10**400})

    assert_one_line_naming(message, "lr")


def test_by_writer_with_a_user_task_is_left_to_the_tasks_pool() -> None:
    config = FedveilConfig.from_flat({"task": "mypkg.task", "partitioning": "by-writer"})

    assert (config.task, config.partitioning) == ("mypkg.task", "by-writer")


def test_the_task_travels_to_clients() -> None:
    config = FedveilConfig.from_flat({"task": "mypkg.task"})

    assert config.to_client_flat()["task"] == "mypkg.task"
    assert FedveilConfig.from_flat({}).task == ""
