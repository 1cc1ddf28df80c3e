"""``fedveil bench``: its config, its refusals, step timing, and one tiny run end to end."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from common.config import FedveilConfig
from simulations.bench import build_config, build_parser, main
from simulations.bench_process import BenchError, TreeSampler, run_variant
from simulations.bench_steps import MODES, step_times
from tests.integration.cli import fedveil


def _config(*argv: str) -> FedveilConfig:
    return build_config(build_parser().parse_args(list(argv)))


def test_the_full_task_then_quick_then_config_file_then_set(tmp_path: Path) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text('num-server-rounds = 4\nsim.clients = 5\npartitioning = "dirichlet"\n')

    full, quick = _config(), _config("--quick")
    layered = _config("--quick", "--config", str(scenario), "--set", "sim.clients=3")

    assert (full.dataset, full.sim_clients, full.num_server_rounds) == ("digits", 10, 6)
    assert quick.num_server_rounds == 3
    assert (layered.num_server_rounds, layered.sim_clients) == (4, 3)
    assert layered.partitioning == "dirichlet"


def test_bad_config_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--set", "dp.delta=2", "--no-steps"]) == 2
    assert "dp.delta" in capsys.readouterr().err


def test_step_times_cover_every_opacus_mode() -> None:
    times = step_times("mlp", (1, 8, 8), batch_size=16, blocks=1, steps_per_block=2)

    assert set(times) == {"nonprivate", *MODES}
    assert all(math.isfinite(t) and t >= 0 for t in times.values())


def test_the_tree_sampler_sees_this_process() -> None:
    sampler = TreeSampler(root=os.getpid(), every=1.0)

    sampler.sample()

    assert sampler.peak_rss > 0 and sampler.peak_processes >= 1 and sampler.samples == 1


def test_a_failing_variant_is_a_bench_error_with_its_log(tmp_path: Path) -> None:
    config = _config("--set", "sim.clients=2")

    with pytest.raises(BenchError, match="the nope variant failed"):
        run_variant("nope", config, tmp_path, ray_address="", sample_every=1.0)


@pytest.mark.slow
def test_a_tiny_fedveil_run_writes_its_figures(tmp_path: Path) -> None:
    # The smallest run the CLI allows (2 clients, 2 rounds, one actor, no step bench); the
    # baseline's hooks are run by tests/simulations/test_plain_flower.py.
    out = tmp_path / "bench"
    sets = ("sim.clients=2", "num-server-rounds=2", "sim.cpus-per-client=2")
    flags = [arg for key in sets for arg in ("--set", key)]

    done = fedveil(
        "bench", "--only", "fedveil", "--no-steps", *flags, "--out", str(out), timeout=180
    )

    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "bench.json").read_text())
    assert (report["device"], report["torch"]) == ("cpu", torch.__version__)
    fed = report["variants"]["fedveil"]
    assert fed["rounds"] == 2 and fed["uplink_bytes_per_round"] > 0
    assert 0 < report["ratios"]["seal_open_share"] < 1
    assert fed["plan_seconds"] > 0
    # Server phases from the timing wrapper and the round observer; client steps from replies.
    breakdown = fed["breakdown"]
    for key in ("server_configure", "server_send_and_receive", "server_aggregate"):
        assert breakdown[key] > 0, key
    for key in ("client_train", "client_seal", "client_cpu"):
        assert breakdown[key] > 0, key
    assert breakdown["server_round_total"] >= breakdown["server_send_and_receive"]
    assert "steady round" in done.stdout
