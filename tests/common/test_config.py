from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from flwr.common.config import flatten_dict
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from common.config import (
    ACCOUNTANTS,
    DATASETS,
    KEYS,
    MODELS,
    PARTITIONINGS,
    ConfigError,
    FedveilConfig,
    flatten_toml,
    load_toml,
    parse_assignment,
)

CHOICES = (*DATASETS, *PARTITIONINGS, *ACCOUNTANTS, *MODELS)


def keys_of(kind: type) -> list[str]:
    return sorted(k for k, spec in KEYS.items() if spec.kind is kind)


def refused(flat: dict[str, Any]) -> str:
    """Parse ``flat``, expect a ConfigError, and return its message."""
    with pytest.raises(ConfigError) as info:
        FedveilConfig.from_flat(flat)
    return str(info.value)


def from_set(*assignments: str) -> FedveilConfig:
    """What ``fedveil simulate --set A --set B`` builds."""
    return FedveilConfig.from_flat(dict(parse_assignment(a) for a in assignments))


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


# ---------------------------------------------------------------------------- casting (--set)


@pytest.mark.parametrize(
    ("assignment", "field", "expected"),
    [
        ("num-server-rounds=3", "num_server_rounds", 3),
        ("seed=4294967295", "seed", 2**32 - 1),
        ("dp.delta=1e-5", "dp_delta", 1e-5),
        ("dp.target-epsilon=3", "dp_target_epsilon", 3.0),
        ("lr=0.05", "lr", 0.05),
        ('dataset="digits"', "dataset", "digits"),
        ("dataset=digits", "dataset", "digits"),
        ("partitioning=dirichlet", "partitioning", "dirichlet"),
        ("dp.accountant=prv", "dp_accountant", "prv"),
        ("out-dir=../runs/x", "out_dir", "../runs/x"),
        (" batch-size = 32 ", "batch_size", 32),
        ("codec.mask=random", "codec_mask", "random"),
        ("robust.root-examples=100", "robust_root_examples", 100),
    ],
)
def test_set_values_are_cast(assignment: str, field: str, expected: Any) -> None:
    config = from_set(assignment)

    value = getattr(config, field)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize("key", keys_of(bool))
@pytest.mark.parametrize(("text", "expected"), [("true", True), ("false", False)])
def test_set_bool_values_are_cast(key: str, text: str, expected: bool) -> None:
    config = from_set(f"{key}={text}")

    assert config.to_flat()[key] is expected


def int_valued_float_keys() -> list[tuple[str, int]]:
    cases = []
    for key in keys_of(float):
        for value in (1, 0, 2, 10):
            if KEYS[key].check(float(value)):
                cases.append((key, value))
                break
    return cases


@pytest.mark.parametrize(("key", "value"), int_valued_float_keys())
def test_int_given_for_a_float_key_becomes_float(key: str, value: int) -> None:
    result = FedveilConfig.from_flat({key: value}).to_flat()[key]

    assert type(result) is float
    assert result == value


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


# ---------------------------------------------------------------------------- round trips


def valid_value(key: str) -> st.SearchStrategy[Any]:
    spec = KEYS[key]
    base: st.SearchStrategy[Any]
    if spec.kind is bool:
        base = st.booleans()
    elif spec.kind is int:
        base = st.one_of(st.integers(-2, 40), st.integers(-5, 2**33))
    elif spec.kind is float:
        base = st.one_of(
            st.floats(0, 1), st.floats(-1, 1), st.floats(0, 1e6), st.sampled_from([0.0, 1.0])
        )
    else:
        printable = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12)
        base = st.one_of(st.sampled_from(CHOICES), printable)
    return base.filter(spec.check)


@st.composite
def valid_configs(draw: st.DrawFn) -> FedveilConfig:
    chosen = draw(st.lists(st.sampled_from(sorted(KEYS)), unique=True))
    flat = {key: draw(valid_value(key)) for key in chosen}
    try:
        return FedveilConfig.from_flat(flat)
    except ConfigError:
        reject()  # a valid value per key can still make an inconsistent whole


ROUND_TRIP = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)


@ROUND_TRIP
@given(valid_configs())
def test_flat_form_round_trips(config: FedveilConfig) -> None:
    flat = config.to_flat()

    assert list(flat) == list(KEYS)
    assert all(type(flat[k]) is KEYS[k].kind for k in flat)
    assert FedveilConfig.from_flat(flat) == config


@ROUND_TRIP
@given(valid_configs())
def test_config_json_round_trips(config: FedveilConfig) -> None:
    # config.json holds the flat form; reading it back must give the same run.
    text = json.dumps(config.to_flat())

    assert FedveilConfig.from_flat(json.loads(text)) == config


@ROUND_TRIP
@given(valid_configs())
def test_set_forms_round_trip(config: FedveilConfig) -> None:
    def literal(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str):
            return json.dumps(value)  # a TOML basic string for printable ASCII
        return repr(value)

    assignments = [f"{key}={literal(v)}" for key, v in config.to_flat().items()]

    assert from_set(*assignments) == config


@ROUND_TRIP
@given(valid_configs(), valid_configs())
def test_replace_changes_only_what_is_named(a: FedveilConfig, b: FedveilConfig) -> None:
    changes = {"seed": b.seed, "lr": b.lr}

    replaced = a.replace(**changes)

    assert (replaced.seed, replaced.lr) == (b.seed, b.lr)
    assert replaced.to_flat() == {**a.to_flat(), "seed": b.seed, "lr": b.lr}


def test_replace_validates_again() -> None:
    config = FedveilConfig.from_flat({})

    with pytest.raises(ConfigError, match=re.escape("`dp.delta`")):
        config.replace(dp_delta=0.0)
    with pytest.raises(ConfigError, match=re.escape("`partitioning`")):
        config.replace(partitioning="by-writer")


# ------------------------------------------------------------------------------ parse_assignment


@pytest.mark.parametrize("text", ["seed", "", "=3", " =3", "   ", "seed 3"])
def test_parse_assignment_refuses_malformed(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_assignment(text)

    assert "KEY=VALUE" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "field", "expected"),
    [
        ("seed=3", "seed", 3),
        ("dp.delta=1e-5", "dp_delta", 1e-5),
        ('dataset="digits"', "dataset", "digits"),
        ("codec.error-feedback=false", "codec_error_feedback", False),
        ("data-dir=", "data_dir", ""),
        ("data-dir=a=b", "data_dir", "a=b"),
    ],
)
def test_set_values_are_read_as_their_key_wants(text: str, field: str, expected: Any) -> None:
    value = getattr(from_set(text), field)

    assert value == expected
    assert type(value) is type(expected)


# ------------------------------------------------------------------------------------ load_toml


def test_load_toml_flattens_tables_like_flower(tmp_path: Path) -> None:
    path = tmp_path / "preset.toml"
    path.write_text('seed = 7\ndataset = "digits"\n[dp]\ndelta = 1e-6\n[sim]\nclients = 4\n')

    flat = load_toml(path)

    assert flat == {"seed": 7, "dataset": "digits", "dp.delta": 1e-6, "sim.clients": 4}
    assert flat == flatten_dict(tomllib.loads(path.read_text()))
    assert FedveilConfig.from_flat(flat).sim_clients == 4


def test_flatten_toml_matches_flower_on_deep_tables() -> None:
    table = {"a": 1, "b": {"c": 2.0, "d": {"e": "x", "f": True}}, "g": {}}

    assert flatten_toml(table) == flatten_dict(table)


def test_load_toml_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"

    with pytest.raises(ConfigError) as info:
        load_toml(path)

    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text", ["seed = ", "[dp\n", "a = 1\na = 2\n", "= 3"])
def test_load_toml_invalid_toml_names_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(text)

    with pytest.raises(ConfigError) as info:
        load_toml(path)

    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


# ---------------------------------------------------- known defects in common/config.py (reported)


@pytest.mark.parametrize("flat", [{"seed": "abc"}, {"lr": ""}, {"dp.delta": "small"}])
def test_non_literal_string_for_a_number_is_a_config_error(flat: dict[str, Any]) -> None:
    (key,) = flat
    message = refused(flat)

    assert_one_line_naming(message, key)


def test_huge_integer_for_a_float_key_is_a_config_error() -> None:
    message = refused({"lr": 10**400})

    assert_one_line_naming(message, "lr")


@pytest.mark.parametrize("kind", ["directory", "not-utf8"])
def test_load_toml_unreadable_file_is_a_config_error(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "preset.toml"
    if kind == "directory":
        path.mkdir()
    else:
        path.write_bytes(b'dataset = "\xff"\n')

    with pytest.raises(ConfigError, match=re.escape("preset.toml")):
        load_toml(path)


def test_numeric_looking_path_can_be_set() -> None:
    assert from_set("out-dir=2024").out_dir == "2024"


def test_by_writer_with_a_user_task_is_left_to_the_tasks_pool() -> None:
    config = FedveilConfig.from_flat({"task": "mypkg.task", "partitioning": "by-writer"})

    assert (config.task, config.partitioning) == ("mypkg.task", "by-writer")


def test_the_task_travels_to_clients() -> None:
    config = FedveilConfig.from_flat({"task": "mypkg.task"})

    assert config.to_client_flat()["task"] == "mypkg.task"
    assert FedveilConfig.from_flat({}).task == ""
