"""The report's content: the privacy statement, channels, limits, tables and figures.

The report states the guarantee in plain words first, then names every channel a client sends
and how it is protected, what the guarantee does not cover, and the numbers behind it. Content
is built as ``Section``s of ``Block``s from an ``Analysis``; ``report_render`` turns it into
HTML and Markdown.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from report import plots
from report.load import Analysis, ClientLedger

# Settings named in the report's closing paragraph, when config.json has them.
ABOUT_KEYS = (
    "dataset",
    "partitioning",
    "sim.clients",
    "fraction-train",
    "aggregation",
    "local-epochs",
    "batch-size",
    "lr",
    "seed",
)
ACCOUNTANT_NAMES = {
    "rdp": "Rényi-DP (RDP) accountant",
    "prv": "privacy-random-variable (PRV) accountant",
}


@dataclass(frozen=True)
class Para:
    """A paragraph; ``**bold**`` and ```code``` are the only markup."""

    text: str


@dataclass(frozen=True)
class Bullets:
    """A bulleted list."""

    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    """A table with a caption; ``warn`` holds the indices of rows to highlight."""

    caption: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    warn: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Plot:
    """A figure: written to ``plots/<name>.png`` and embedded in the HTML."""

    name: str
    png: bytes
    alt: str
    caption: str


Block = Para | Bullets | Table | Plot


@dataclass(frozen=True)
class Section:
    """A titled section of the report."""

    title: str
    anchor: str
    blocks: tuple[Block, ...]


def _eps(x: float) -> str:
    return f"{x:.3f}"


def _num(x: float) -> str:
    return f"{x:.4g}"


def _delta_words(delta: float) -> str:
    k = -math.log10(delta)
    if abs(k - round(k)) < 1e-9 and 1 <= round(k) <= 15:
        return f"one chance in {10 ** round(k):,}"
    return f"probability {delta:g}"


def _rate(q: float) -> str:
    inv = 1 / q
    return f"{q:.4g} (1/{round(inv)})" if abs(inv - round(inv)) < 1e-6 else f"{q:.4g}"


def _span(values: Iterable[float], fmt: Callable[[float], str]) -> str:
    distinct = sorted(set(values))
    if not distinct:
        return "-"
    if len(distinct) == 1:
        return fmt(distinct[0])
    return f"{fmt(distinct[0])} to {fmt(distinct[-1])}"


def _codec_words(config: Mapping[str, Any]) -> str:
    topk, bits, feedback = (
        config.get(k) for k in ("codec.topk", "codec.bits", "codec.error-feedback")
    )
    if topk is None or bits is None:
        return "compressed (codec settings not in config.json)"
    if topk >= 1 and bits == 32:
        return "not compressed (raw float32)"
    parts = [
        f"top-k sparsification keeping {topk:.0%} of coordinates" if topk < 1 else "no pruning"
    ]
    parts.append(f"{bits}-bit stochastic quantization" if bits < 32 else "raw float32 values")
    if feedback:
        parts.append("error feedback")
    return "compressed (" + ", ".join(parts) + ")"


def statement(a: Analysis) -> tuple[Block, ...]:
    """Return the plain-words privacy statement: unit, (ε, δ), accountants, mechanism, budget."""
    led = a.ledger
    trained = [c for c in led.clients if c.history]
    delta = f"{led.delta:g}"
    blocks: list[Block] = []
    if not trained:
        blocks.append(
            Para(
                f"**No client trained in this run, so no privacy was spent (ε = 0 at "
                f"δ = {delta}).** Nothing derived from any client's data left a client."
            )
        )
    else:
        eps = max(c.epsilon for c in led.clients)
        spread = ""
        if len({round(c.epsilon, 3) for c in led.clients}) > 1:
            spread = (
                f" ε is the largest any client spent; they range from "
                f"{_eps(min(c.epsilon for c in led.clients))} to {_eps(eps)} (table below)."
            )
        blocks.append(
            Para(
                f"**Unit of privacy: one training example.** Each of the {len(led.clients)} "
                f"clients trained on its own data with differentially private SGD (DP-SGD). For "
                f"every client, the model updates it sent in this run, and so every model the "
                f"server built from them, are **(ε = {_eps(eps)}, δ = {delta})-differentially "
                f"private** with respect to any one of that client's training examples: adding "
                f"or removing that example changes the probability of any result an observer "
                f"could see by at most a factor of e^ε ≈ {math.exp(eps):,.0f}, except with "
                f"{_delta_words(led.delta)} (δ).{spread}"
            )
        )
        other_max = max(a.other_epsilon.values())
        blocks.append(
            Para(
                f"**Accountant: {ACCOUNTANT_NAMES[led.accountant]}** (Opacus, `{led.accountant}`), "
                f"named in privacy.json and used to enforce the budget. It computes ε from each "
                f"client's exact noise multiplier, sampling rate and step count of every round "
                f"it trained. The {ACCOUNTANT_NAMES[a.other]} (`{a.other}`), recomputed from the "
                f"same histories for comparison, gives **ε = {_eps(other_max)}**. RDP gives a "
                f"guaranteed upper bound; PRV computes the privacy loss numerically (to within "
                f"0.01 of ε) and is usually tighter."
            )
        )
        blocks.append(Para(_mechanism(a, trained)))
    if led.central is not None:
        c = led.central
        noise = f"multiplier σ = {_num(c.noise_multiplier)}" if c.noise_multiplier else "noise"
        clip = f"L2 norm {_num(c.clip)}" if c.clip else "a fixed L2 norm"
        blocks.append(
            Para(
                f"**User level: a client's whole data set.** The server also clips each "
                f"client's update to {clip} and adds Gaussian {noise} to their aggregate, in "
                f"{len(c.history)} rounds: every global model it released is **(ε = "
                f"{_eps(c.epsilon)}, δ = {c.delta:g})-differentially private** with respect to "
                f"all of one client's data ({led.accountant.upper()}; {a.other.upper()} gives "
                f"ε = {_eps(a.central_other or 0.0)}). This protects against whoever receives the "
                f"models, not against the aggregator, which sees each update before the noise."
            )
        )
    if led.stopped_reason:
        blocks.append(Para(f"**The run ended early:** {led.stopped_reason.rstrip('.')}."))
    over = [c.cid for c in led.clients if a.status[c.cid].startswith("over budget")]
    if over:
        blocks.append(
            Para(
                f"**Warning: clients {', '.join(over)} spent more than their budget.** The "
                f"budget was not enforced for them; their ε in the table below is what they spent."
            )
        )
    differ = [c.cid for c in led.clients if c.mismatch]
    if differ:
        blocks.append(
            Para(
                f"**Clients {', '.join(differ)} reported an ε that differs from the ledger's.** "
                f"The ledger's ε, computed by the server from the DP facts sealed in each update, "
                f"is the one stated here."
            )
        )
    blocks.append(
        Para(
            "**Covered:** the model updates, the only channel that carries what was learned from "
            "client data, and everything derived from them (aggregates, global models, this "
            "report). **Not covered:** the facts each client sends in the clear, "
            "hyper-parameter tuning, and the quality of the noise generator; and the aggregator "
            "sees each client's noised update on its own. The next two sections name every "
            "channel and every limit."
        )
    )
    return tuple(blocks)


def _mechanism(a: Analysis, trained: Sequence[ClientLedger]) -> str:
    entries = [e for c in trained for e in c.history]
    budgets = {c.budget for c in a.ledger.clients if c.budget is not None}
    ran = len(a.rounds)
    configured = a.config.get("num-server-rounds")
    of_rounds = f"{ran} rounds" if configured in (None, ran) else f"{ran} of {configured} rounds"
    max_steps = max(sum(n for _, _, n in c.history) for c in trained)
    max_rounds = max(len(c.rounds) for c in trained)
    text = (
        f"**Mechanism:** DP-SGD with Poisson sampling at rate q = "
        f"{_span((q for _, q, _ in entries), _rate)}, per-example gradients clipped to L2 norm "
        f"{_num(a.config['dp.max-grad-norm'])} (`dp.max-grad-norm`) and Gaussian noise of "
        f"multiplier σ = {_span((s for s, _, _ in entries), _num)} (noise std σ × clip norm), "
        f"{_span((float(n) for _, _, n in entries), lambda x: f'{x:.0f}')} steps per round. "
        f"Over the {of_rounds} that ran, a client trained in up to {max_rounds} rounds, "
        f"{max_steps} steps in all."
    )
    if budgets:
        text += (
            f" No client may spend more than ε = {_span(budgets, _num)} (`dp.budget`): a "
            f"client refuses any round that would take it past its budget."
        )
    else:
        text += " No per-client ε budget was set (`dp.budget`)."
    return text


def channels(a: Analysis) -> tuple[Block, ...]:
    """Return every channel a client sends on, and how it is protected."""
    batch = a.config["batch-size"]
    planning = (
        " Also sent once, before the first round, in reply to the server's planning query "
        "(q and steps per round), so the server can calibrate σ."
        if a.ledger.plan
        else ""
    )
    rows = (
        (
            "Model update (DP-SGD output)",
            "every round the client trains",
            "Differentially private (the guarantee above); "
            + _codec_words(a.config)
            + "; sealed with HPKE (RFC 9180: X25519, HKDF-SHA256, AES-256-GCM) to the "
            "aggregator's public key and bound to the run, the round and the sending node, so "
            "the relay can neither read nor alter it and it cannot be replayed or misrouted.",
        ),
        (
            "DP facts: σ, q, steps, ε",
            "every reply, in the clear (a copy sealed inside the update is what the ledger "
            "charges)",
            f"Not protected by DP. q = 1 / ceil(n / batch-size) reveals ceil(n / {batch}), "
            f"the client's number of examples to within {batch}; steps, σ and ε follow from q "
            f"and the configuration.{planning}",
        ),
        (
            "Partition id",
            "every reply, in the clear",
            "Not protected: it says which data partition (client) a reply comes from.",
        ),
        (
            "Status: trained or refused, with a one-line reason",
            "every reply, in the clear",
            "Not protected: it says that a client reached its budget, which its DP facts "
            "reveal anyway.",
        ),
        (
            "Example count",
            "never",
            "Not sent: every client's update is aggregated with the same weight.",
        ),
        (
            "Training metrics (loss, accuracy)",
            "never",
            "Not sent.",
        ),
        (
            "Federated evaluation",
            "never",
            "Off: clients do not evaluate the global model; the server evaluates it on its "
            "own test split, which no client trains on.",
        ),
    )
    return (
        Para(
            "Everything a client sends to the server (through the Flower relay), and how it is "
            "protected. Nothing else leaves a client."
        ),
        Table("What each client sends", ("channel", "when", "protection"), rows),
    )


def limits(a: Analysis) -> tuple[Block, ...]:
    """Return what the guarantee does not cover, and what costs no privacy."""
    items = [
        "**Hyper-parameter tuning.** Choosing settings (learning rate, σ, rounds, clip norm, "
        "...) by comparing runs on the same client data leaks information that no ledger "
        "counts: the ε above holds for this run with its settings fixed in advance.",
        "**The noise generator.** DP-SGD's Gaussian noise and Poisson sampling draw from "
        "PyTorch's default pseudo-random generator, seeded from OS entropy (never from the "
        "run's public seed). It is not a cryptographically secure generator: Opacus's "
        "`secure_mode` (torchcsprng) is unavailable, so the guarantee assumes that no one can "
        "predict or reconstruct the generator's output.",
        "**No secure aggregation.** The aggregator opens and sees each client's DP-noised "
        "update on its own; against the aggregator each client is protected by its own ε, "
        "with nothing gained from being averaged with others.",
        "**Facts sent in the clear.** σ, q, steps, ε, the partition id, the status, and in "
        "which rounds a client took part are not DP-protected; q reveals "
        f"ceil(n / {a.config['batch-size']}).",
    ]
    if a.ledger.central is None:
        items.append(
            "**Only single examples are protected.** Someone who contributed k examples to a "
            "client is protected at roughly k·ε (group privacy), and properties of a client's "
            "data set as a whole (its size, its label mix) are not hidden. User-level DP "
            "(`central-dp.noise-multiplier`) was off in this run."
        )
    root = a.config.get("robust.root-examples", 0)
    if isinstance(root, int) and root > 0:
        items.append(
            f"**Server-held data.** The server kept {root} examples of its own held-out split "
            "(`robust.root-examples`) as a clean root set: it scores the direction of every "
            "update against a few SGD steps on them (FLTrust) and, with the watermark on, holds "
            "the model's outputs on their images while it embeds (their labels unused). They "
            "are the server's data, never a client's, so this costs clients no privacy; the "
            "root examples themselves are not protected by any ε in this report, and accuracy "
            "is measured on the other held-out examples."
        )
    free = (
        "**Costs no privacy (post-processing).** Compression, sealing, aggregation, "
        "watermarking and the server's evaluation act only on outputs that are already "
        "differentially private, or on the server's own data; they are not charged."
    )
    return (Bullets((*items, free)),)


def client_table(a: Analysis) -> Table:
    """Per client: mechanism parameters, ε under both accountants, budget, status."""
    acc, other = a.ledger.accountant.upper(), a.other.upper()
    rows, warn = [], set()
    for i, c in enumerate(a.ledger.clients):
        status = a.status[c.cid]
        if status not in ("ok", "budget reached"):
            warn.add(i)
        rows.append(
            (
                c.cid,
                _span((s for s, _, _ in c.history), _num),
                _span((q for _, q, _ in c.history), _rate),
                str(len(c.rounds)),
                str(sum(n for _, _, n in c.history)),
                _eps(c.epsilon),
                _eps(a.other_epsilon[c.cid]),
                "-" if c.reported_epsilon is None else _eps(c.reported_epsilon),
                "none" if c.budget is None else _num(c.budget),
                status,
            )
        )
    return Table(
        f"Privacy spent per client (δ = {a.ledger.delta:g}). ε ({acc}) is the ledger's, with "
        f"the accountant named in privacy.json; ε ({other}) is recomputed from the same "
        f"history; the client's own ε is what it reported.",
        (
            "client",
            "σ",
            "q",
            "rounds trained",
            "steps",
            f"ε ({acc})",
            f"ε ({other})",
            "client's own ε",
            "budget",
            "status",
        ),
        tuple(rows),
        frozenset(warn),
    )


def _client_order(cid: str) -> tuple[int, str]:
    return (int(cid), "") if cid.isdigit() else (1 << 62, cid)


def plan_table(a: Analysis) -> Table:
    """Planned against spent, for every client with a plan."""
    spent = {c.cid: c for c in a.ledger.clients}
    rows = []
    for cid, p in sorted(a.ledger.plan.items(), key=lambda kv: _client_order(kv[0])):
        c = spent.get(cid)
        eps = 0.0 if c is None else c.epsilon
        share = f"{eps / p.planned_epsilon:.0%}" if p.planned_epsilon > 0 else "-"
        rows.append(
            (
                cid,
                _num(p.noise_multiplier),
                _rate(p.sample_rate),
                str(p.steps_per_round),
                str(p.planned_rounds),
                _eps(p.planned_epsilon),
                "0" if c is None else str(len(c.rounds)),
                _eps(eps),
                share,
            )
        )
    return Table(
        "Planned before the first round against spent: σ was calibrated so that a client "
        "training the planned number of rounds ends at the planned ε.",
        (
            "client",
            "planned σ",
            "q",
            "steps per round",
            "planned rounds",
            "planned ε",
            "rounds trained",
            "ε spent",
            "spent / planned",
        ),
        tuple(rows),
    )


def epsilon_table(a: Analysis) -> Table:
    """Cumulative ε after each round: smallest and largest over clients, and who was charged."""
    rows = []
    for line in a.rounds:
        latest = [
            max((e for r, e in points if r <= line.round), default=0.0)
            for points in a.series.values()
        ]
        charged = sum(1 for c in a.ledger.clients if line.round in c.rounds)
        rows.append(
            (
                str(line.round),
                str(charged),
                _eps(min(latest, default=0.0)),
                _eps(max(latest, default=0.0)),
            )
        )
    return Table(
        f"Cumulative ε after each round ({a.ledger.accountant.upper()}, δ = "
        f"{a.ledger.delta:g}), reconstructed from every client's history and the round each "
        f"entry was charged in.",
        ("round", "clients charged", "smallest ε", "largest ε"),
        tuple(rows),
    )


def training_table(a: Analysis) -> Table:
    """Per round: accuracy, loss, clients, traffic."""
    rows = tuple(
        (
            str(r.round),
            f"{r.accuracy:.4f}",
            f"{r.loss:.4f}",
            str(r.contributed),
            str(len(r.rejected)),
            str(r.flagged),
            str(r.refused),
            f"{r.bytes_sealed:,}",
            f"{r.bytes_dense:,}",
        )
        for r in a.rounds
    )
    return Table(
        "Per round: the global model on the server's test split, clients aggregated, "
        "rejected, flagged and refused, and bytes received.",
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
            contributed=[r.contributed for r in a.rounds],
            rejected=[len(r.rejected) for r in a.rounds],
            flagged=[r.flagged for r in a.rounds],
            refused=[r.refused for r in a.rounds],
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


def sections(a: Analysis, figs: Mapping[str, Plot]) -> tuple[Section, ...]:
    """Return the report in reading order: statement, channels, limits, numbers, plots."""
    led = a.ledger
    spent: list[Block] = [client_table(a)]
    if led.plan:
        spent.append(plan_table(a))
    over_time: list[Block] = [figs["epsilon"]] if "epsilon" in figs else []
    over_time.append(epsilon_table(a))
    training: list[Block] = [
        figs[k] for k in ("accuracy", "bytes", "clients", "watermark") if k in figs
    ]
    if not a.rounds:
        training.append(Para("No round finished, so there is nothing to plot."))
    else:
        training.append(training_table(a))
    rejected = tuple((str(r.round), *rej) for r in a.rounds for rej in r.rejected)
    if rejected:
        training.append(
            Table(
                "Rejected updates and why (nodes are Flower node ids; the privacy tables use "
                "partition ids).",
                ("round", "node", "reason", "detail"),
                rejected,
            )
        )
    about = Para(
        f"Run directory `{a.run_dir.resolve().name}`: {len(led.clients)} clients with privacy "
        f"accounts, {len(a.rounds)} rounds finished, a global model of {a.parameters:,} "
        f"parameters (model.safetensors). Settings from config.json: "
        + "; ".join(f"{k} {a.config[k]}" for k in ABOUT_KEYS if k in a.config)
        + "."
    )
    recompute = Para(
        "Every ε in this report can be recomputed from privacy.json: each client's `history` "
        "lists `[noise_multiplier, sample_rate, steps]` for every round it trained (with "
        "Opacus's meaning) and `rounds` the server round each entry was charged in; "
        "`common.accounting.epsilon_from_history(history, delta=δ, accountant=...)` gives ε."
    )
    return (
        Section("Privacy statement", "statement", statement(a)),
        Section("What each client sends", "channels", channels(a)),
        Section("What the guarantee does not cover", "limits", limits(a)),
        Section("Privacy spent per client", "clients", tuple(spent)),
        Section("Privacy spent over rounds", "over-time", tuple(over_time)),
        Section("Training", "training", tuple(training)),
        Section("About this run", "about", (about, recompute)),
    )
