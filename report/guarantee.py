"""The report in words: the privacy statement, every channel a client sends on, and the limits.

The statement comes first and states the guarantee plainly: unit of privacy, (ε, δ) under the
ledger's accountant and the other one, the mechanism and the budget; then user-level DP, an early
stop, clients over budget, whose own ε differs or whose account is flagged, and what the server
verifies and cannot. The channels table and the limits say what the guarantee covers and what it
does not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from report.analysis import Analysis
from report.content import (
    Block,
    Bullets,
    Para,
    Table,
    delta_words,
    fmt_eps,
    fmt_num,
    fmt_rate,
    span,
)
from server.ledger_file import ClientEntry

ACCOUNTANT_NAMES = {
    "rdp": "Rényi-DP (RDP) accountant",
    "prv": "privacy-random-variable (PRV) accountant",
}


def _codec_words(config: Mapping[str, Any]) -> str:
    topk, bits, feedback = (
        config.get(k) for k in ("codec.topk", "codec.bits", "codec.error-feedback")
    )
    mask = config.get("codec.mask", "topk")
    quantizer = config.get("codec.quantizer", "auto")
    if topk is None or bits is None:
        return "compressed (codec settings not in config.json)"
    if topk >= 1 and bits == 32:
        return "not compressed (raw float32)"
    if topk >= 1:
        parts = ["every coordinate"]
    elif mask == "subspace":
        parts = [f"only the round's shared random subspace ({topk:.0%} of coordinates)"]
    elif mask == "random":
        parts = [f"a random {topk:.0%} of coordinates"]
    else:
        parts = [f"top-k sparsification keeping {topk:.0%} of coordinates"]
    if bits == 32:
        parts.append("raw float32 values")
    elif bits == 1 and quantizer in ("auto", "sign"):
        parts.append("1-bit scaled signs")
    else:
        parts.append(f"{bits}-bit stochastic quantization")
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
                f"{fmt_eps(min(c.epsilon for c in led.clients))} to {fmt_eps(eps)} (table below)."
            )
        blocks.append(
            Para(
                f"**Unit of privacy: one training example.** Each of the {len(led.clients)} "
                f"clients trained on its own data with differentially private SGD (DP-SGD). For "
                f"every client, the model updates it sent in this run, and so every model the "
                f"server built from them, are **(ε = {fmt_eps(eps)}, δ = {delta})-differentially "
                f"private** with respect to any one of that client's training examples: adding "
                f"or removing that example changes the probability of any result an observer "
                f"could see by at most a factor of e^ε ≈ {math.exp(eps):,.0f}, except with "
                f"{delta_words(led.delta)} (δ).{spread}"
            )
        )
        other_max = max(a.other_epsilon.values())
        blocks.append(
            Para(
                f"**Accountant: {ACCOUNTANT_NAMES[led.accountant]}** (Opacus, `{led.accountant}`), "
                f"named in privacy.json and used to enforce the budget. It computes ε from each "
                f"client's exact noise multiplier, sampling rate and step count of every round "
                f"it trained. The {ACCOUNTANT_NAMES[a.other]} (`{a.other}`), recomputed from the "
                f"same histories for comparison, gives **ε = {fmt_eps(other_max)}**. RDP gives a "
                f"guaranteed upper bound; PRV computes the privacy loss numerically (to within "
                f"0.01 of ε) and is usually tighter."
            )
        )
        blocks.append(Para(_mechanism(a, trained)))
    if led.central is not None:
        c = led.central
        noise = f"multiplier σ = {fmt_num(c.noise_multiplier)}" if c.noise_multiplier else "noise"
        clip = f"L2 norm {fmt_num(c.clip)}" if c.clip else "a fixed L2 norm"
        blocks.append(
            Para(
                f"**User level: a client's whole data set.** The server also clips each "
                f"client's update to {clip} and adds Gaussian {noise} to their aggregate, in "
                f"{len(c.history)} rounds: every global model it released is **(ε = "
                f"{fmt_eps(c.epsilon)}, δ = {c.delta:g})-differentially private** with respect to "
                f"all of one client's data ({led.accountant.upper()}; {a.other.upper()} gives "
                f"ε = {fmt_eps(a.central_other or 0.0)}). This protects against whoever receives "
                f"the models, not against the aggregator, which sees each update before the noise."
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
    differ = [c.cid for c in led.clients if c.cid in a.mismatched]
    if differ:
        blocks.append(
            Para(
                f"**Clients {', '.join(differ)} reported an ε that differs from the ledger's.** "
                f"The ledger's ε, computed by the server from the DP facts each client declared "
                f"and checked against its plan, is the one stated here."
            )
        )
    blocks.extend(_flagged(a))
    blocks.append(Para(VERIFIED))
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


VERIFIED = (
    "**What the server verifies, and what it cannot.** Each client supplies its own DP facts "
    "(σ, q, steps) with every update, sealed so that the relay can neither read nor alter them. "
    "The server accepts an update only when those facts equal the client's plan: the σ the "
    "server assigned and the q and steps the client reported when it was planned. It charges "
    "every client that trained, or may have (an update rejected, a failure after training), at "
    "the costliest of its plan and everything it declared, so a client cannot lower its own ε "
    "by declaring less. It cannot verify that a client really added that noise, clipped, or "
    "sampled as it says: nobody can check a client's noise from outside its device. An "
    "empirical privacy audit (canaries, when `privacy.audit` is on) gives a lower bound on ε "
    "from what the updates (white-box) or the final model (black-box) actually reveal; the "
    "accountant's ε is an upper bound that holds only "
    "if every client ran DP-SGD as declared."
)

_FLAG_TEXT = (
    (
        "dp-facts",
        "declared DP facts that differ from their plan: those updates were rejected and "
        "charged at the larger ε of what was declared and what was planned",
    ),
    (
        "unaccountable",
        "declared DP facts no accountant can compute (such as σ ≈ 0): their accounts were "
        "closed and their ε is only a lower bound; no finite ε holds for them",
    ),
    (
        "error-after-training",
        "failed after training: those rounds were charged from their plans",
    ),
    (
        "shared-label",
        "declared a label another node declares too: each node keeps an account of its own "
        "(nothing is merged), and both are flagged",
    ),
)


def _flagged(a: Analysis) -> list[Block]:
    """Return one warning paragraph per account flag that some account carries."""
    blocks: list[Block] = []
    for flag, text in _FLAG_TEXT:
        cids = [c.cid for c in a.ledger.clients if flag in c.flags]
        if cids:
            blocks.append(Para(f"**Warning: clients {', '.join(cids)} {text}.**"))
    return blocks


def _inside(a: Analysis) -> str:
    if a.config.get("codec.mask") != "subspace" or a.config.get("codec.topk", 1.0) >= 1:
        return ""
    return (
        " restricted to the round's shared random subspace (`codec.mask = subspace`: the noise is "
        "drawn there too, the mask is a public hash of run and round) and"
    )


def _mechanism(a: Analysis, trained: Sequence[ClientEntry]) -> str:
    entries = [e for c in trained for e in c.history]
    budgets = {c.budget for c in a.ledger.clients if c.budget is not None}
    ran = len(a.rounds)
    configured = a.config.get("num-server-rounds")
    of_rounds = f"{ran} rounds" if configured in (None, ran) else f"{ran} of {configured} rounds"
    max_steps = max(sum(n for _, _, n in c.history) for c in trained)
    max_rounds = max(len(c.rounds) for c in trained)
    text = (
        f"**Mechanism:** DP-SGD with Poisson sampling at rate q = "
        f"{span((q for _, q, _ in entries), fmt_rate)}, per-example gradients{_inside(a)} "
        f"clipped to L2 norm "
        f"{fmt_num(a.config['dp.max-grad-norm'])} (`dp.max-grad-norm`) and Gaussian noise of "
        f"multiplier σ = {span((s for s, _, _ in entries), fmt_num)} (noise std σ × clip norm), "
        f"{span((float(n) for _, _, n in entries), lambda x: f'{x:.0f}')} steps per round. "
        f"Over the {of_rounds} that ran, a client trained in up to {max_rounds} rounds, "
        f"{max_steps} steps in all."
    )
    if budgets:
        text += (
            f" No client may spend more than ε = {span(budgets, fmt_num)} (`dp.budget`): a "
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
            "Error report: a Flower error code and message",
            "when a client's app fails",
            "Not protected: it says that a client failed. The server keeps only the error "
            "code and the exception's type (no traceback, path or process id) in "
            "metrics.jsonl and this report.",
        ),
        (
            "The node's own limits (max ε, min σ, max rounds)",
            "in the planning reply and every reply, in the clear, when the node's owner set them",
            "Not protected: they say how much privacy the node's owner allows; the server plans "
            "around them and the node enforces them itself.",
        ),
        (
            "Downlink digest: which global model the node holds",
            "every reply, in the clear",
            "Not protected, and about nothing private: a SHA-256 digest of the model the server "
            "itself sent the node (signed by the aggregator, checked by the node), so the "
            "server knows what the next change is relative to.",
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
        "**Facts sent in the clear.** σ, q, steps, ε, the partition id, the status, an error "
        "report, the node's own limits, and in which rounds a client took part are not "
        f"DP-protected; q reveals ceil(n / {a.config['batch-size']}).",
        "**Client-supplied DP facts.** The ε rests on every client running DP-SGD with the σ, "
        "q and steps it declares. The server holds those facts to each client's plan and "
        "charges conservatively, but cannot observe a client's noise, clipping or sampling.",
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
