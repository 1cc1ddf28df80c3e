"""The report's figures, drawn with matplotlib's object API and returned as PNG bytes.

Figures are built on ``matplotlib.figure.Figure`` directly: no pyplot, no global backend, no
window, so drawing works on a headless server and never touches another caller's figures.
Every function takes plain data and returns the PNG file's bytes; ``report.training`` decides
what to draw and ``report.write`` writes the files.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

# 8 x 3.6 inches at 110 dpi: 880 x 396 pixels, legible in a browser and in a Markdown viewer.
SIZE = (8.0, 3.6)
DPI = 110
# Above this many clients a legend would hide the curves; the caption says what is drawn.
LEGEND_MAX = 12

EpsilonSeries = Sequence[tuple[int, float]]


def _new_figure() -> Figure:
    return Figure(figsize=SIZE, dpi=DPI, layout="constrained")


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    # No "Software" chunk: the same run directory gives byte-identical plots.
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _legend_outside(ax: Axes) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)


def _round_axis(ax: Axes, last_round: int) -> None:
    ax.set_xlabel("server round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.5 if last_round > 0 else 0, max(last_round, 1) + 0.5)
    ax.grid(True, alpha=0.3)


def epsilon_plot(
    series: Mapping[str, EpsilonSeries],
    *,
    budgets: Sequence[float],
    last_round: int,
    accountant: str,
) -> bytes:
    """ε per client after every round (a step curve per client) with the budget lines.

    ``series`` maps a client id to ``(round, cumulative ε)`` points, one per round trained;
    each curve starts at 0 before round 1 and holds its value through rounds not trained.
    """
    fig = _new_figure()
    ax = fig.add_subplot()
    labelled = len(series) <= LEGEND_MAX
    end = max(last_round, 1) + 0.5
    for cid, points in series.items():
        xs = [0, *(r for r, _ in points), end]
        ys = [0.0, *(e for _, e in points)]
        ys.append(ys[-1])
        (line,) = ax.step(
            xs, ys, where="post", linewidth=1.4, label=f"client {cid}" if labelled else None
        )
        # A dot where the client was charged: the value after that round.
        ax.plot(xs[1:-1], ys[1:-1], "o", markersize=3, color=line.get_color())
    for i, budget in enumerate(sorted(set(budgets))):
        ax.axhline(
            budget,
            color="crimson",
            linestyle="--",
            linewidth=1.2,
            label="budget" if i == 0 else None,
        )
    ax.set_ylabel(f"ε spent ({accountant.upper()})")
    top = max([*budgets, *(e for points in series.values() for _, e in points), 1.0])
    ax.set_ylim(0, top * 1.08)
    _round_axis(ax, last_round)
    ax.set_xlim(0, end)
    if labelled or budgets:
        _legend_outside(ax)
    ax.set_title("Privacy spent per client")
    return _png(fig)


def accuracy_plot(rounds: Sequence[int], accuracy: Sequence[float], loss: Sequence[float]) -> bytes:
    """Test accuracy (left axis) and test loss (right axis) of the global model per round."""
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.plot(rounds, accuracy, marker="o", color="tab:blue", label="accuracy")
    ax.set_ylabel("test accuracy", color="tab:blue")
    ax.set_ylim(0, 1)
    _round_axis(ax, max(rounds, default=0))
    loss_ax = ax.twinx()
    loss_ax.plot(rounds, loss, marker="s", color="tab:orange", linestyle=":", label="loss")
    loss_ax.set_ylabel("test loss", color="tab:orange")
    loss_ax.set_ylim(bottom=0)
    ax.set_title("Global model on the server's test split")
    return _png(fig)


def bytes_plot(rounds: Sequence[int], sealed: Sequence[int], dense: Sequence[int]) -> bytes:
    """Bytes received per round: sealed (compressed) updates beside their dense float32 size."""
    fig = _new_figure()
    ax = fig.add_subplot()
    width = 0.4
    ax.bar([r - width / 2 for r in rounds], dense, width, label="dense float32", color="0.7")
    ax.bar([r + width / 2 for r in rounds], sealed, width, label="sealed", color="tab:green")
    positive = [v for v in (*sealed, *dense) if v > 0]
    if positive:
        ax.set_yscale("log")
        ax.set_ylim(min(positive) / 2, max(positive) * 2)
    ax.set_ylabel("bytes per round")
    _round_axis(ax, max(rounds, default=0))
    _legend_outside(ax)
    ax.set_title("Update traffic")
    return _png(fig)


def clients_plot(
    rounds: Sequence[int],
    *,
    contributed: Sequence[int],
    rejected: Sequence[int],
    flagged: Sequence[int],
    refused: Sequence[int],
) -> bytes:
    """Per round: clients whose update was aggregated (line) and rejected/flagged/refused (bars)."""
    fig = _new_figure()
    ax = fig.add_subplot()
    width = 0.27
    bars = (("rejected", rejected, "crimson"), ("flagged", flagged, "darkorange"))
    for i, (label, counts, color) in enumerate((*bars, ("refused (budget)", refused, "0.5"))):
        ax.bar([r + (i - 1) * width for r in rounds], counts, width, label=label, color=color)
    ax.plot(rounds, contributed, marker="o", color="tab:blue", label="aggregated")
    if not any((*rejected, *flagged, *refused)):
        ax.text(
            0.5,
            0.5,
            "no client rejected, flagged or refused in any round",
            transform=ax.transAxes,
            ha="center",
            color="0.35",
        )
    ax.set_ylabel("clients")
    ax.set_ylim(0, max((*contributed, *rejected, *flagged, *refused, 1)) + 1)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    _round_axis(ax, max(rounds, default=0))
    _legend_outside(ax)
    ax.set_title("Clients per round")
    return _png(fig)


def watermark_plot(rounds: Sequence[int], accuracy: Sequence[float | None]) -> bytes:
    """Accuracy of the global model on the secret trigger set, per round it was measured."""
    fig = _new_figure()
    ax = fig.add_subplot()
    points = [(r, a) for r, a in zip(rounds, accuracy, strict=True) if a is not None]
    ax.plot([r for r, _ in points], [a for _, a in points], marker="o", color="tab:purple")
    ax.set_ylabel("trigger-set accuracy")
    ax.set_ylim(0, 1)
    _round_axis(ax, max(rounds, default=0))
    ax.set_title("Watermark")
    return _png(fig)
