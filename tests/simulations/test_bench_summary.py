"""The bench's figures, ratios and tables, from fabricated variant runs."""

from __future__ import annotations

from typing import Any

import pytest

from common.config import FedveilConfig
from simulations.bench_process import BenchError, VariantRun
from simulations.bench_render import fmt_bytes, render
from simulations.bench_summary import check_ratios, ratios, summarize


def _child(variant: str, seconds: list[float], uplink: int, seal: float) -> dict[str, Any]:
    # The baseline downloads what it uploads (the dense model); fedveil a quarter of dense.
    down = uplink if variant == "plain" else 10_000
    rounds = [
        {
            "round": i,
            "accuracy": 0.5 + i / 10,
            "seconds": s,
            "uplink_bytes": uplink,
            "downlink_bytes": down,
            "clients": 2,
        }
        for i, s in enumerate(seconds, start=1)
    ]
    phases = {"configure": 0.01, "send_and_receive": 0.1, "aggregate": 0.02, "after": 0.03}
    clients = [
        {"round": r, "node": n, "pid": 100 + n, "ray_node": "", "total": 0.2, "cpu": 0.1}
        | ({"seal": seal, "train": 0.15} if variant == "fedveil" else {})
        for r in range(1, len(seconds) + 1)
        for n in (1, 2)
    ]
    return {
        "variant": variant,
        "rounds": rounds,
        "import_seconds": 1.0,
        "simulation_seconds": sum(seconds),
        "server": {str(r): phases for r in range(1, len(seconds) + 1)},
        "plan_seconds": 2.0 if variant == "fedveil" else 0.0,
        "clients": clients,
    }


def _run(
    variant: str, seconds: list[float], uplink: int, rss: int, seal: float = 0.0
) -> VariantRun:
    child = _child(variant, seconds, uplink, seal)
    return VariantRun(variant, child, sum(seconds) + 5, rss, rss // 2, 4)


PLAIN = _run("plain", [5.0, 1.0, 1.0], 40_000, 1000)
FEDVEIL = _run("fedveil", [7.0, 2.0, 2.0], 2_000, 1500, seal=0.4)
STEPS = {
    "mlp": {"nonprivate": 0.001, "hooks": 0.004, "functorch": 0.003, "ew": 0.002, "ghost": 0.005}
}


def test_summary_uses_steady_rounds_and_means_per_round_and_call() -> None:
    summary = summarize(FEDVEIL, actors=2)

    assert summary["steady_round_seconds"] == 2.0  # round 1 starts the engine: left out
    assert summary["first_round_seconds"] == 7.0 + 2.0  # with the planning query
    assert summary["uplink_bytes_per_round"] == 2_000
    assert summary["downlink_bytes_per_round"] == 10_000
    assert summary["breakdown"]["server_aggregate"] == pytest.approx(0.02)
    assert summary["breakdown"]["client_seal"] == pytest.approx(0.4)
    assert summary["breakdown"]["client_cpu"] == pytest.approx(0.1)
    assert "client_node" not in summary["breakdown"]
    # Two steady rounds: 4 client seals of 0.4 s over 2 actors, 2 server aggregates of 0.02 s.
    assert summary["seal_open_share"] == pytest.approx((4 * 0.4 / 2 + 2 * 0.02) / 4.0)
    assert summary["actor_processes"] == 2
    assert summary["final_accuracy"] == pytest.approx(0.8)


def test_the_baseline_has_no_seal_share() -> None:
    assert summarize(PLAIN, actors=2)["seal_open_share"] is None


def test_a_variant_without_rounds_is_a_bench_error() -> None:
    empty = VariantRun("plain", {**_child("plain", [], 1, 0.0)}, 1.0, 1, 1, 1)

    with pytest.raises(BenchError, match="plain: no round finished"):
        summarize(empty, actors=1)


def test_ratios_are_fedveil_over_plain_and_dp_steps_over_nonprivate() -> None:
    plain, fed = summarize(PLAIN, actors=2), summarize(FEDVEIL, actors=2)

    r = ratios(plain, fed, STEPS)

    assert r["steady_round_time"] == pytest.approx(2.0)
    assert r["uplink_bytes_per_round"] == pytest.approx(0.05)
    assert r["downlink_bytes_per_round"] == pytest.approx(0.25)
    assert r["peak_tree_rss"] == pytest.approx(1.5)
    assert r["client_cpu_per_call"] == pytest.approx(1.0)
    assert r["dp_step"] == {
        "mlp": pytest.approx({"hooks": 4.0, "functorch": 3.0, "ew": 2.0, "ghost": 5.0})
    }
    assert check_ratios({"ratios": r}) == []


def test_without_the_baseline_only_the_seal_share_and_steps_remain() -> None:
    r = ratios(None, summarize(FEDVEIL, actors=2), {})

    assert set(r) == {"seal_open_share"}


@pytest.mark.parametrize(
    ("values", "bad"),
    [
        ({"a": 1.5, "b": {"x": 2.0}}, []),
        ({"a": 0.0, "b": {"x": float("nan")}, "c": None}, ["a", "b.x", "c"]),
        ({"a": float("inf"), "b": -1.0}, ["a", "b"]),
    ],
)
def test_check_ratios_names_every_bad_field(values: dict[str, Any], bad: list[str]) -> None:
    assert check_ratios({"ratios": values}) == bad


def _report(plain: dict[str, Any] | None) -> dict[str, Any]:
    fed = summarize(FEDVEIL, actors=2)
    return {
        "task": FedveilConfig.from_flat({"sim.clients": 2}).to_flat(),
        "device": "cpu",
        "torch": "2.x",
        "load": {"before": "0", "after": "0"},
        "actors": 2,
        "variants": {"fedveil": fed} | ({"plain": plain} if plain else {}),
        "ratios": ratios(plain, fed, STEPS),
        "steps": STEPS,
        "step_batch": 64,
        "client_round": {"examples": 100, "dp_seconds": 0.3, "plain_seconds": 0.1},
    }


def test_render_prints_the_table_ratios_steps_and_breakdowns() -> None:
    text = render(_report(summarize(PLAIN, actors=2)))

    assert "cpu, torch 2.x" in text
    steady = next(line for line in text.splitlines() if line.startswith("steady round (s)"))
    assert steady.split()[-3:] == ["1.000", "2.000", "2.00x"]
    assert "client CPU per train call (s)" in text
    assert "seal+open share of the steady round time: 21.00 %" in text
    assert "planning query before round 1: 2.00 s" in text
    assert "mlp  (non-private 1.00 ms): hooks 4.00x  functorch 3.00x  ew 2.00x  ghost 5.00x" in text
    assert "DP-SGD 300.0 ms vs plain 100.0 ms (3.0x)" in text
    assert "plain steady-round breakdown" in text and "fedveil steady-round breakdown" in text


def test_render_without_the_baseline_shows_dashes() -> None:
    text = render(_report(None))

    steady = next(line for line in text.splitlines() if line.startswith("steady round (s)"))
    assert steady.split()[-2:] == ["-", "2.000"]
    assert "plain steady-round breakdown" not in text


@pytest.mark.parametrize(("n", "shown"), [(512, "0.5 KiB"), (3 * 2**20, "3.0 MiB")])
def test_bytes_are_shown_in_kib_or_mib(n: int, shown: str) -> None:
    assert fmt_bytes(n) == shown
