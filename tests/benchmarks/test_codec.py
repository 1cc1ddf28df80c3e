"""The codec benchmark's command line: plans, settings, reuse of runs, and its JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from benchmarks import codec
from benchmarks.codec import (
    CNN_SIZE,
    DENSE,
    SETTINGS,
    build_parser,
    build_plan,
    default_json,
    report_json,
    run_all,
    settings_table,
)
from benchmarks.codec_results import RunSummary, summarize_setting
from benchmarks.provenance import RESULTS_DIR, write_json
from common.config import ConfigError, FedveilConfig
from common.models import create_model


def _summary(setting: str, seed: int, accuracy: float, up: float) -> RunSummary:
    return RunSummary(setting, seed, 2, 100, up, 400.0, False, accuracy, 2.0, 2.0)


def test_cnn_size_constant_is_the_cnn() -> None:
    cnn = create_model("cnn", 10, seed=0)
    assert sum(t.numel() for t in cnn.state_dict().values()) == CNN_SIZE


def test_every_setting_is_a_valid_config_and_dense_comes_first() -> None:
    assert SETTINGS[0] == DENSE and (DENSE.topk, DENSE.bits) == (1.0, 32)
    assert FedveilConfig.from_flat(DENSE.overrides()).codec_downlink_bits == 0  # dense both ways
    assert len({s.name for s in SETTINGS}) == len(SETTINGS)
    assert {s.quantizer for s in SETTINGS} == {"stochastic", "sign"}
    for s in SETTINGS:
        config = FedveilConfig.from_flat(s.overrides())
        assert (config.codec_topk, config.codec_bits) == (s.topk, s.bits)
        assert config.codec_quantizer == s.params.quantizer == s.quantizer
        default_lr = FedveilConfig.from_flat({}).lr
        assert config.lr == (default_lr if s.lr is None else s.lr)
    assert any(s.lr is not None for s in SETTINGS)


def test_plan_runs_dense_and_the_chosen_settings_over_consecutive_seeds() -> None:
    args = build_parser().parse_args(
        [
            "--dataset",
            "digits",
            "--settings",
            "sign",
            "--seeds",
            "3",
            "--first-seed",
            "5",
            "--rounds",
            "4",
            "--set",
            "lr=0.1",
        ]
    )

    plan = build_plan(args)

    assert [s.name for s in plan.settings] == [DENSE.name, "sign"]
    assert plan.seeds == (5, 6, 7)
    assert plan.flat["num-server-rounds"] == 4 and str(plan.flat["lr"]) == "0.1"
    assert codec.run_keys(plan, plan.settings[1], 6)["seed"] == 6


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--dataset", "digits", "--settings", "sign,nope"], "nope"),
        (["--dataset", "digits", "--set", "seed=3"], "--seeds"),
        (["--dataset", "digits", "--set", "codec.quantizer=sign"], "codec.quantizer"),
        (["--dataset", "fashion-mnist"], "--data-dir"),
    ],
)
def test_plan_refuses_bad_options_naming_them(argv: list[str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        build_plan(build_parser().parse_args(argv))


def test_default_json_names_the_model_unless_it_is_mnists_cnn() -> None:
    parse = build_parser().parse_args
    assert default_json(parse([])) == RESULTS_DIR / "codec.json"
    assert default_json(parse(["--quick"])).name == "codec-quick.json"
    wide = parse(["--dataset", "fashion-mnist", "--model", "cnn-wide"])
    assert default_json(wide).name == "codec-fashion-mnist-cnn-wide.json"


def test_run_all_goes_seed_by_seed_and_reuses_kept_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = build_plan(
        build_parser().parse_args(["--dataset", "digits", "--settings", "sign", "--seeds", "2"])
    )
    calls: list[tuple[str, int]] = []

    def fake_simulation(
        flat: dict[str, object], out: Path, *, verbose: bool
    ) -> list[dict[str, object]]:
        calls.append((out.name, int(flat["seed"])))  # type: ignore[call-overload]
        up = 400 if flat["codec.bits"] == 32 else 13
        return [
            {
                "round": 1,
                "accuracy": 0.5,
                "clients": [1, 2],
                "rejected": [],
                "bytes_sealed": 2 * up,
                "bytes_dense": 800,
                "seconds": 1.0,
            }
        ]

    monkeypatch.setattr(codec, "run_simulation", fake_simulation)
    log = Console(file=None, quiet=True)

    first = run_all(plan, tmp_path, verbose=False, log=log)
    again = run_all(plan, tmp_path, verbose=False, log=log)

    assert [(s.setting, s.seed) for s in first] == [
        (DENSE.name, 0),
        ("sign", 0),
        (DENSE.name, 1),
        ("sign", 1),
    ]
    assert len(calls) == 4 and calls[1] == ("digits-auto-sign-seed0", 0)
    assert again == first  # nothing ran twice
    assert first[1].bytes_up == 13


def test_json_and_table_from_fabricated_runs(tmp_path: Path) -> None:
    plan = build_plan(build_parser().parse_args(["--quick"]))
    runs = [_summary(DENSE.name, 0, 0.9, 400.0), _summary("sign", 0, 0.88, 16.0)]
    dense = runs[:1]
    settings = [
        summarize_setting(runs[:1], dense, 0.001),
        summarize_setting(runs[1:], dense, 0.001),
    ]

    write_json(tmp_path / "codec.json", report_json(plan, runs, settings, [0.5, 0.4, 0.3]))

    doc = json.loads((tmp_path / "codec.json").read_text())
    assert {"date", "commit", "machine"} <= set(doc) and doc["machine"]["cpus"] >= 1
    assert doc["benchmark"] == "codec" and doc["plan"]["seeds"] == [0]
    assert doc["plan"]["keys"]["sim.clients"] == 3
    assert [s["name"] for s in doc["settings"]] == [DENSE.name, "sign"]
    assert doc["settings"][1]["keys"]["codec.quantizer"] == "sign"
    sign = doc["summary"][1]
    assert sign["up_ratio"] == pytest.approx(25.0)
    assert sign["total_ratio"] == pytest.approx(800 / 416)
    assert sign["diff_points"] == pytest.approx(-2.0)
    assert len(doc["runs"]) == 2 and doc["load_average_before"][0] == 0.5
    assert doc["verdict"]["default"] is None  # 2 points below dense
    assert settings_table(plan, settings).row_count == 2


def test_downlink_bits_are_the_settings_own_else_the_runs_default() -> None:
    plan = build_plan(build_parser().parse_args(["--dataset", "digits"]))
    default = FedveilConfig.from_flat({}).codec_downlink_bits

    assert codec.downlink_bits(plan, DENSE) == 0
    assert codec.downlink_bits(plan, codec.BY_NAME["sub5-4bit-down4"]) == 4
    assert codec.downlink_bits(plan, codec.BY_NAME["sub5-4bit"]) == default
