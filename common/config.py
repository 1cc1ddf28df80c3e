"""The run configuration: one frozen, validated object parsed once from flat kebab-case keys.

Flower flattens nested TOML tables into dotted keys (``dp.target-epsilon``), and the same names
are used in ``pyproject.toml``, in ``--config`` preset files and in ``--set KEY=VALUE``. Every key
has a type, a default and a domain; unknown keys and out-of-domain values raise ``ConfigError``
with one line naming the key and how to fix it.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ConfigValue = bool | int | float | str


class ConfigError(ValueError):
    """A configuration key is unknown, has the wrong type or lies outside its domain."""


DATASETS = ("digits", "mnist", "fashion-mnist", "femnist")
PARTITIONINGS = ("iid", "dirichlet", "by-writer")
ACCOUNTANTS = ("rdp", "prv")
MODELS = ("auto", "mlp", "cnn", "cnn-wide")
CODEC_MASKS = ("topk", "random", "subspace")
CODEC_QUANTIZERS = ("auto", "stochastic", "sign")
AGGREGATIONS = ("fedavg", "median", "trimmed-mean", "krum", "multikrum")
ATTACK_KINDS = ("sign-flip", "scale", "gaussian", "label-flip")
AUDIT_MODES = ("white-box", "black-box")


@dataclass(frozen=True)
class _Key:
    field: str
    kind: type
    default: ConfigValue
    check: Callable[[Any], bool]
    domain: str


def _positive(v: float) -> bool:
    return v > 0


def _non_negative(v: float) -> bool:
    return v >= 0


def _one_of(options: tuple[str, ...]) -> Callable[[Any], bool]:
    return lambda v: v in options


_ANY: Callable[[Any], bool] = lambda v: True  # noqa: E731

KEYS: dict[str, _Key] = {
    "num-server-rounds": _Key(
        "num_server_rounds", int, 15, lambda v: 1 <= v <= 100_000, "an integer in [1, 100000]"
    ),
    "seed": _Key("seed", int, 0, lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)"),
    "out-dir": _Key("out_dir", str, "runs", lambda v: v != "", "a non-empty folder path"),
    "run-dir": _Key(
        "run_dir", str, "", _ANY, "the run directory itself (empty = <out-dir>/<new run id>)"
    ),
    "resume": _Key(
        "resume", bool, False, _ANY, "true: continue the run in `run-dir` from its checkpoint"
    ),
    "fraction-train": _Key(
        "fraction_train", float, 1.0, lambda v: 0 < v <= 1, "a fraction in (0, 1]"
    ),
    "min-train-clients": _Key("min_train_clients", int, 2, lambda v: v >= 1, "an integer >= 1"),
    "round-timeout": _Key(
        "round_timeout", float, 600.0, _positive, "seconds > 0 to wait for a round's replies"
    ),
    "dataset": _Key("dataset", str, "digits", _one_of(DATASETS), f"one of {DATASETS}"),
    "data-dir": _Key("data_dir", str, "", _ANY, "a folder path"),
    "task": _Key(
        "task",
        str,
        "",
        _ANY,
        "a task module's dotted path (mypkg.task), or empty for the built-in task `dataset` names",
    ),
    "partitioning": _Key(
        "partitioning", str, "iid", _one_of(PARTITIONINGS), f"one of {PARTITIONINGS}"
    ),
    "dirichlet-alpha": _Key("dirichlet_alpha", float, 0.5, _positive, "a number > 0"),
    "test-fraction": _Key("test_fraction", float, 0.2, lambda v: 0 < v < 1, "a fraction in (0, 1)"),
    "model": _Key("model", str, "auto", _one_of(MODELS), f"one of {MODELS}"),
    "device": _Key(
        "device",
        str,
        "auto",
        lambda v: re.fullmatch(r"auto|cpu|cuda|cuda:\d{1,3}|mps", v) is not None,
        "one of auto, cpu, cuda, cuda:N (N a GPU index), mps",
    ),
    "local-epochs": _Key(
        "local_epochs", int, 2, lambda v: 1 <= v <= 1000, "an integer in [1, 1000]"
    ),
    "batch-size": _Key(
        "batch_size", int, 64, lambda v: 1 <= v <= 65536, "an integer in [1, 65536]"
    ),
    "lr": _Key("lr", float, 1.0, _positive, "a number > 0"),
    "momentum": _Key("momentum", float, 0.0, lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "dp.target-epsilon": _Key("dp_target_epsilon", float, 8.0, _positive, "a number > 0"),
    "dp.delta": _Key("dp_delta", float, 1e-5, lambda v: 0 < v < 1, "a number in (0, 1)"),
    "dp.max-grad-norm": _Key("dp_max_grad_norm", float, 1.0, _positive, "a number > 0"),
    "dp.noise-multiplier": _Key(
        "dp_noise_multiplier",
        float,
        0.0,
        _non_negative,
        "a number >= 0 (0 = calibrate from dp.target-epsilon)",
    ),
    "dp.accountant": _Key(
        "dp_accountant", str, "rdp", _one_of(ACCOUNTANTS), f"one of {ACCOUNTANTS}"
    ),
    "dp.budget": _Key("dp_budget", float, 8.0, _positive, "a number > 0"),
    "aggregation": _Key(
        "aggregation", str, "fedavg", _one_of(AGGREGATIONS), f"one of {AGGREGATIONS}"
    ),
    "robust.assumed-malicious": _Key(
        "robust_assumed_malicious",
        int,
        1,
        lambda v: v >= 0,
        "an integer >= 0 (Byzantine clients per round that krum/multikrum/trimmed-mean tolerate)",
    ),
    "robust.trim-beta": _Key(
        "robust_trim_beta", float, 0.2, lambda v: 0 <= v < 0.5, "a fraction in [0, 0.5)"
    ),
    "robust.norm-bound": _Key(
        "robust_norm_bound",
        float,
        0.0,
        _non_negative,
        "a number >= 0: L2 bound on each update (0 = none)",
    ),
    "robust.exclude-flagged": _Key(
        "robust_exclude_flagged", bool, False, _ANY, "true or false: drop flagged updates"
    ),
    "robust.root-examples": _Key(
        "robust_root_examples",
        int,
        0,
        lambda v: 0 <= v <= 100_000,
        "an integer in [0, 100000]: clean examples the server keeps from its held-out split to "
        "score update directions and to steady the watermark (0 = none)",
    ),
    "attack.fraction": _Key(
        "attack_fraction", float, 0.0, lambda v: 0 <= v <= 1, "a fraction in [0, 1]"
    ),
    "attack.kind": _Key(
        "attack_kind", str, "sign-flip", _one_of(ATTACK_KINDS), f"one of {ATTACK_KINDS}"
    ),
    "watermark.enabled": _Key("watermark_enabled", bool, False, _ANY, "true or false"),
    "central-dp.noise-multiplier": _Key(
        "central_dp_noise_multiplier",
        float,
        0.0,
        _non_negative,
        "a number >= 0 (0 = no user-level DP on the server)",
    ),
    "central-dp.clip": _Key(
        "central_dp_clip", float, 1.0, _positive, "a number > 0 (L2 bound on a client's update)"
    ),
    "client-state-dir": _Key(
        "client_state_dir",
        str,
        "",
        _ANY,
        "a folder where simulated clients keep their state (empty = memory only)",
    ),
    "codec.topk": _Key(
        "codec_topk", float, 0.25, lambda v: 0 < v <= 1, "a fraction in (0, 1] of coordinates kept"
    ),
    "codec.bits": _Key(
        "codec_bits", int, 4, lambda v: v in (*range(1, 9), 16, 32), "1-8, 16 or 32 (raw float32)"
    ),
    "codec.error-feedback": _Key("codec_error_feedback", bool, True, _ANY, "true or false"),
    "codec.downlink-bits": _Key(
        "codec_downlink_bits",
        int,
        8,
        lambda v: v in (0, *range(1, 9), 16),
        "0 (dense float32), 1-8 or 16: bits per value of the model sent to clients",
    ),
    "codec.mask": _Key(
        "codec_mask",
        str,
        "subspace",
        _one_of(CODEC_MASKS),
        f"one of {CODEC_MASKS}: keep the largest magnitudes, a seeded random mask, or "
        "train and send only the round's shared random subspace",
    ),
    "codec.quantizer": _Key(
        "codec_quantizer",
        str,
        "auto",
        _one_of(CODEC_QUANTIZERS),
        f"one of {CODEC_QUANTIZERS}: sign at 1 bit else stochastic, unbiased stochastic "
        "rounding, or 1-bit scaled sign",
    ),
    "seal.private-key": _Key(
        "seal_private_key", str, "", _ANY, "a path to the aggregator's private key, or empty"
    ),
    "faults.tamper": _Key(
        "faults_tamper", float, 0.0, lambda v: 0 <= v <= 1, "a fraction in [0, 1]"
    ),
    "faults.replay": _Key(
        "faults_replay", float, 0.0, lambda v: 0 <= v <= 1, "a fraction in [0, 1]"
    ),
    "faults.misroute": _Key(
        "faults_misroute", float, 0.0, lambda v: 0 <= v <= 1, "a fraction in [0, 1]"
    ),
    "faults.drop": _Key("faults_drop", float, 0.0, lambda v: 0 <= v <= 1, "a fraction in [0, 1]"),
    "sim.clients": _Key(
        "sim_clients", int, 10, lambda v: 1 <= v <= 100_000, "an integer in [1, 100000]"
    ),
    "sim.cpus-per-client": _Key("sim_cpus_per_client", float, 1.0, _positive, "a number > 0"),
    "privacy.audit": _Key(
        "privacy_audit", bool, False, _ANY, "true or false: one-run empirical audit with canaries"
    ),
    "privacy.audit-mode": _Key(
        "privacy_audit_mode", str, "white-box", _one_of(AUDIT_MODES), f"one of {AUDIT_MODES}"
    ),
    "privacy.audit-canaries": _Key(
        "privacy_audit_canaries",
        int,
        0,
        lambda v: 0 <= v <= 100_000,
        "an integer in [0, 100000]: canaries per audited client (0 = white-box: one per "
        "trainable parameter, at most 10000; black-box: a tenth of the client's examples)",
    ),
    "sim.gpus-per-client": _Key(
        "sim_gpus_per_client",
        float,
        0.0,
        lambda v: 0 <= v <= 64,
        "a number in [0, 64]: the GPU share of each simulated client (0.25 = four per GPU)",
    ),
}


class CliValue(str):
    """A value typed on the command line (``--set``), read as the key's type wants it."""

    __slots__ = ()


def _cast(key: str, spec: _Key, raw: Any) -> ConfigValue:
    """Cast ``raw`` to the key's type, strictly: bools are not numbers, floats not ints."""
    if isinstance(raw, CliValue):
        parsed = _parse_literal(raw)
        if spec.kind is str:
            # A path such as `2024` stays text; a quoted TOML string loses its quotes.
            return parsed if isinstance(parsed, str) else str(raw)
        if isinstance(parsed, str):
            raise ConfigError(f"config key `{key}` must be {spec.domain}, got {str(raw)!r}")
        raw = parsed
    if spec.kind is bool:
        if type(raw) is bool:
            return raw
    elif spec.kind is int:
        if type(raw) is int:
            return raw
        if type(raw) is float and raw.is_integer():
            return int(raw)
    elif spec.kind is float:
        if type(raw) in (int, float):
            try:
                value = float(raw)
            except OverflowError:
                value = math.inf
            if math.isfinite(value):
                return value
    elif spec.kind is str and type(raw) is str:
        return raw
    raise ConfigError(f"config key `{key}` must be {spec.domain}, got {raw!r}")


def _parse_literal(text: str) -> Any:
    """Read a ``--set`` value as TOML would (``true``, ``3``, ``1e-5``, ``"x"``), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return str(text)


CLIENT_KEYS: tuple[str, ...] = (
    "num-server-rounds",
    "seed",
    "dataset",
    "data-dir",
    "task",
    "partitioning",
    "dirichlet-alpha",
    "test-fraction",
    "model",
    "local-epochs",
    "batch-size",
    "lr",
    "momentum",
    "dp.target-epsilon",
    "dp.delta",
    "dp.max-grad-norm",
    "dp.noise-multiplier",
    "dp.accountant",
    "dp.budget",
    "client-state-dir",
    "codec.topk",
    "codec.bits",
    "codec.error-feedback",
    "codec.mask",
    "codec.quantizer",
    "device",
)
"""The run-config keys a train request carries to clients (``FedveilConfig.to_client_flat``)."""


@dataclass(frozen=True)
class FedveilConfig:
    """Every run knob, validated. Field names are the snake_case forms of the config keys."""

    num_server_rounds: int
    seed: int
    out_dir: str
    run_dir: str
    resume: bool
    fraction_train: float
    min_train_clients: int
    round_timeout: float
    dataset: str
    data_dir: str
    task: str
    partitioning: str
    dirichlet_alpha: float
    test_fraction: float
    model: str
    device: str
    local_epochs: int
    batch_size: int
    lr: float
    momentum: float
    dp_target_epsilon: float
    dp_delta: float
    dp_max_grad_norm: float
    dp_noise_multiplier: float
    dp_accountant: str
    dp_budget: float
    aggregation: str
    robust_assumed_malicious: int
    robust_trim_beta: float
    robust_norm_bound: float
    robust_exclude_flagged: bool
    robust_root_examples: int
    attack_fraction: float
    attack_kind: str
    watermark_enabled: bool
    central_dp_noise_multiplier: float
    central_dp_clip: float
    client_state_dir: str
    codec_topk: float
    codec_bits: int
    codec_error_feedback: bool
    codec_downlink_bits: int
    codec_mask: str
    codec_quantizer: str
    seal_private_key: str
    faults_tamper: float
    faults_replay: float
    faults_misroute: float
    faults_drop: float
    sim_clients: int
    sim_cpus_per_client: float
    privacy_audit: bool
    privacy_audit_mode: str
    privacy_audit_canaries: int
    sim_gpus_per_client: float

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any]) -> FedveilConfig:
        """Build from flat dotted keys (Flower's ``run_config``); missing keys take defaults."""
        values: dict[str, ConfigValue] = {}
        for key, raw in flat.items():
            spec = KEYS.get(key)
            if spec is None:
                raise ConfigError(
                    f"unknown config key `{key}`; valid keys are listed in README.md "
                    f"(`fedveil simulate --help`)"
                )
            value = _cast(key, spec, raw)
            if not spec.check(value):
                raise ConfigError(f"config key `{key}` must be {spec.domain}, got {raw!r}")
            values[spec.field] = value
        for spec in KEYS.values():
            values.setdefault(spec.field, spec.default)
        config = cls(**values)  # type: ignore[arg-type]
        config._check_consistency()
        return config

    def _check_consistency(self) -> None:
        if self.codec_quantizer == "sign" and self.codec_bits != 1:
            raise ConfigError(
                f"config key `codec.quantizer` = `sign` sends 1 bit per value: set "
                f"`codec.bits` = 1 (got {self.codec_bits}) or `codec.quantizer` = `stochastic`"
            )
        if self.faults_tamper + self.faults_replay + self.faults_misroute + self.faults_drop > 1:
            raise ConfigError(
                "config keys `faults.tamper` + `faults.replay` + `faults.misroute` + `faults.drop` "
                "add up to more than 1; each sampled client gets at most one fault"
            )
        if self.central_dp_noise_multiplier > 0 and self.aggregation != "fedavg":
            raise ConfigError(
                f"config key `central-dp.noise-multiplier` needs `aggregation` = `fedavg` "
                f"(its noise is calibrated to a mean), got `{self.aggregation}`"
            )
        if self.partitioning == "by-writer" and not self.task and self.dataset != "femnist":
            raise ConfigError(
                "config key `partitioning` = `by-writer` needs `dataset` = `femnist` "
                "(the only built-in set with writers) or a `task` whose pool has writers; "
                "use `iid` or `dirichlet`"
            )

    def to_flat(self) -> dict[str, ConfigValue]:
        """Return the flat dotted-key form, every key present (for ``config.json`` and messages)."""
        return {key: getattr(self, spec.field) for key, spec in KEYS.items()}

    def to_client_flat(self) -> dict[str, ConfigValue]:
        """Return only the keys a client needs (``CLIENT_KEYS``): what a train request carries.

        Server-only keys (key paths, aggregation, watermark, attacks, faults, run directory)
        never leave the server.
        """
        return {key: getattr(self, KEYS[key].field) for key in CLIENT_KEYS}

    def replace(self, **changes: Any) -> FedveilConfig:
        """Return a copy with some fields changed, validated again."""
        flat = self.to_flat()
        by_field = {spec.field: key for key, spec in KEYS.items()}
        for field_name, value in changes.items():
            if field_name not in by_field:
                raise ConfigError(f"unknown config field `{field_name}`")
            flat[by_field[field_name]] = value
        return FedveilConfig.from_flat(flat)


def flatten_toml(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested TOML tables into dotted keys, as Flower does for ``run_config``."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_toml(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def load_toml(path: Path) -> dict[str, Any]:
    """Read a preset file into flat keys; an unreadable file raises ``ConfigError``."""
    try:
        with path.open("rb") as fh:
            return flatten_toml(tomllib.load(fh))
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist; give an existing TOML file"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML ({exc}); fix its syntax") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc}); give a TOML file") from None


def parse_assignment(text: str) -> tuple[str, Any]:
    """Split one ``KEY=VALUE`` from the command line."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects KEY=VALUE, got {text!r}; e.g. --set num-server-rounds=3")
    return key.strip(), CliValue(value.strip())
