"""The report's training part: the per-round table and every figure the run's data supports."""

from __future__ import annotations

from report import plots
from report.analysis import Analysis
from report.content import Plot, Table


def training_table(a: Analysis) -> Table:
    """Per round: accuracy, loss, clients, traffic."""
    rows = tuple(
        (
            str(r.round),
            f"{r.accuracy:.4f}",
            f"{r.loss:.4f}",
            str(len(r.clients)),
            str(len(r.rejected)),
            str(len(r.flagged)),
            str(len(r.refused)),
            f"{r.bytes_sealed:,}",
            f"{r.bytes_dense:,}",
            f"{r.bytes_down:,}",
        )
        for r in a.rounds
    )
    return Table(
        "Per round: the global model on the server's test split, clients aggregated, "
        "rejected, flagged and refused, bytes received (sealed updates, and what they weigh as "
        "dense float32) and bytes sent (the signed model changes to the round's clients; 0 in "
        "runs made before the downlink was counted).",
        (
            "round",
            "accuracy",
            "loss",
            "aggregated",
            "rejected",
            "flagged",
            "refused",
            "bytes sealed",
            "bytes dense",
            "bytes down",
        ),
        rows,
    )


def figures(a: Analysis) -> dict[str, Plot]:
    """Draw every plot the run's data supports."""
    if not a.rounds:
        return {}
    rounds = [r.round for r in a.rounds]
    led = a.ledger
    acc = led.accountant.upper()
    out = {
        "epsilon": Plot(
            "epsilon",
            plots.epsilon_plot(
                a.series,
                budgets=[c.budget for c in led.clients if c.budget is not None],
                last_round=rounds[-1],
                accountant=led.accountant,
            ),
            "ε spent per client over rounds, with the budget",
            f"ε spent by each client after every round ({acc} accountant, δ = {led.delta:g}). "
            f"Dashed red: the per-client budget. A curve is flat through rounds its client did "
            f"not train in; curves of clients with the same history coincide.",
        ),
        "accuracy": Plot(
            "accuracy",
            plots.accuracy_plot(rounds, [r.accuracy for r in a.rounds], [r.loss for r in a.rounds]),
            "test accuracy and loss of the global model per round",
            "Accuracy (blue, left axis) and loss (orange, right axis) of the global model on the "
            "server's test split after every round; no client trains on that split.",
        ),
    }
    sealed = sum(r.bytes_sealed for r in a.rounds)
    dense = sum(r.bytes_dense for r in a.rounds)
    ratio = (
        f" Over the run the sealed updates weigh {sealed / dense:.1%} of dense." if dense else ""
    )
    down = sum(r.bytes_down for r in a.rounds)
    if down:
        ratio += f" The server sent {down:,} bytes of signed model changes to its clients."
    out["bytes"] = Plot(
        "bytes",
        plots.bytes_plot(
            rounds, [r.bytes_sealed for r in a.rounds], [r.bytes_dense for r in a.rounds]
        ),
        "bytes received per round, sealed and dense",
        "Bytes of the updates the server received per round: sealed (compressed and encrypted) "
        f"beside what the same updates weigh as dense float32 (log scale).{ratio}",
    )
    out["clients"] = Plot(
        "clients",
        plots.clients_plot(
            rounds,
            contributed=[len(r.clients) for r in a.rounds],
            rejected=[len(r.rejected) for r in a.rounds],
            flagged=[len(r.flagged) for r in a.rounds],
            refused=[len(r.refused) for r in a.rounds],
        ),
        "clients aggregated, rejected, flagged and refused per round",
        "Per round: clients whose update was aggregated (line); clients whose update was "
        "rejected (it failed to open or to validate), flagged as an outlier, or who refused to "
        "train because the round would pass their budget (bars).",
    )
    if any(r.watermark_accuracy is not None for r in a.rounds):
        out["watermark"] = Plot(
            "watermark",
            plots.watermark_plot(rounds, [r.watermark_accuracy for r in a.rounds]),
            "watermark trigger-set accuracy per round",
            "Accuracy of the global model on the server's secret watermark trigger set, after "
            "every round it was measured. Watermarking is post-processing: it costs no privacy.",
        )
    return out
