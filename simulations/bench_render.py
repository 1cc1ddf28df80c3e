"""The bench report as text: the side-by-side table, the ratios, the step and round breakdowns."""

from __future__ import annotations

from typing import Any

ROWS = (
    ("steady round (s)", "steady_round_seconds", "steady_round_time", "{:.3f}"),
    ("plan + first round (s)", "first_round_seconds", None, "{:.2f}"),
    ("whole run wall (s)", "wall_seconds", "wall_time", "{:.1f}"),
    ("uplink bytes / round", "uplink_bytes_per_round", "uplink_bytes_per_round", "bytes"),
    ("downlink bytes / round", "downlink_bytes_per_round", "downlink_bytes_per_round", "bytes"),
    ("peak tree RSS", "peak_tree_rss", "peak_tree_rss", "bytes"),
    ("peak tree PSS", "peak_tree_pss", "peak_tree_pss", "bytes"),
    ("final accuracy", "final_accuracy", None, "{:.4f}"),
)
"""Table rows: label, summary field, ratio key (or none), format ("bytes": KiB/MiB)."""


def fmt_bytes(n: float) -> str:
    """Return ``n`` bytes in MiB from 1 MiB up, else in KiB."""
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n / 1024:,.1f} KiB"


def _cell(summary: dict[str, Any] | None, field: str, fmt: str) -> str:
    if summary is None:
        return "-"
    return fmt_bytes(summary[field]) if fmt == "bytes" else fmt.format(summary[field])


def table(report: dict[str, Any]) -> list[str]:
    """Return the side-by-side table of the variants' figures and their ratios."""
    plain, fed = report["variants"].get("plain"), report["variants"]["fedveil"]
    r = report["ratios"]
    lines = [f"{'figure':28s} {'plain':>14s} {'fedveil':>14s} {'ratio':>8s}"]
    for label, field, ratio_key, fmt in ROWS:
        ratio = f"{r[ratio_key]:.2f}x" if ratio_key and ratio_key in r else ""
        lines.append(
            f"{label:28s} {_cell(plain, field, fmt):>14s} {_cell(fed, field, fmt):>14s} {ratio:>8s}"
        )
    if plain is not None and "client_cpu_per_call" in r:
        lines.append(
            f"{'client CPU per train call (s)':28s} {plain['breakdown']['client_cpu']:>14.3f} "
            f"{fed['breakdown']['client_cpu']:>14.3f} {r['client_cpu_per_call']:>7.2f}x"
        )
    return lines


def steps(report: dict[str, Any]) -> list[str]:
    """Return the DP-SGD step ratios per model and mode, and one client's local training."""
    r = report["ratios"]
    lines: list[str] = []
    if "dp_step" in r:
        lines.append(f"DP-SGD step / non-private step (1 thread, batch {report['step_batch']}):")
        for model, modes in r["dp_step"].items():
            base = report["steps"][model]["nonprivate"] * 1e3
            cells = "  ".join(f"{m} {x:.2f}x" for m, x in modes.items())
            lines.append(f"  {model:4s} (non-private {base:.2f} ms): {cells}")
    cr = report.get("client_round")
    if cr:
        lines.append(
            f"one client's local training ({cr['examples']} examples): DP-SGD "
            f"{cr['dp_seconds'] * 1e3:.1f} ms vs plain {cr['plain_seconds'] * 1e3:.1f} ms "
            f"({cr['dp_seconds'] / cr['plain_seconds']:.1f}x)"
        )
    return lines


def render(report: dict[str, Any]) -> str:
    """Return the human-readable tables of a benchmark report."""
    task = report["task"]
    fed = report["variants"]["fedveil"]
    share = report["ratios"]["seal_open_share"]
    lines = [
        f"task: {task['dataset']}, {task['sim.clients']} clients, "
        f"{task['num-server-rounds']} rounds, fraction-train {task['fraction-train']}, "
        f"{task['partitioning']}, seed {task['seed']}; "
        f"{report.get('device_name', report['device'])}, torch {report['torch']}; "
        f"load {report['load']}",
        *table(report),
    ]
    if share is not None:
        lines.append(
            f"seal+open share of the steady round time: {100 * share:.2f} % (seal step per "
            f"client / {report['actors']} actors + server aggregate_train: open, screen, "
            f"aggregate)"
        )
    if fed["plan_seconds"]:
        lines.append(f"planning query before round 1: {fed['plan_seconds']:.2f} s")
    lines += steps(report)
    for name in ("plain", "fedveil"):
        summary = report["variants"].get(name)
        if summary is None:
            continue
        parts = "  ".join(f"{k} {1e3 * x:.1f}" for k, x in summary["breakdown"].items())
        lines.append(f"{name} steady-round breakdown (ms; client_* per client call): {parts}")
    return "\n".join(lines)
