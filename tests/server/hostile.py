"""Hostile nodes for the server's tests: replies that lie about DP facts, fail or spoof labels.

``Behaviour`` says what one node does with one train request; ``train_reply`` builds the reply
(sealed with the real envelope, so it opens when the seal is honest); ``plan_reply`` answers a
planning query. ``SPENT`` are the kinds after which the node may have trained: the server must
charge each of them; a refusal or silence spends nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode

from common import protocol
from common.codec import CodecParams, encode_update
from common.envelope import DPFacts, seal_client_update
from common.sealing import SealContext
from tests.server.strategy.fakes import reply_from

KINDS = (
    "honest",
    "declares",
    "clear-differs",
    "error",
    "spoof",
    "garbage",
    "already",
    "refuse",
    "silent",
)
SPENT = frozenset(KINDS) - {"refuse", "silent"}
HONEST_EPSILON = 0.5
# What a Ray worker's error reason looks like: a traceback with paths and process ids.
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/home/alice/fedveil/client/trainer.py", line 150, in step\n'
    "    loss.backward()\n"
    "(pid=4242, ip=10.0.0.7) FloatingPointError: loss is nan at /tmp/ray/session_1/worker.log"
)


@dataclass(frozen=True)
class Behaviour:
    """What a node does with one train request.

    ``facts`` are the ``(σ, q, steps)`` it declares when it lies (``declares``, the clear copy of
    ``clear-differs``, ``already``); ``sealed_steps`` the steps it seals (u32); ``epsilon`` the ε
    it reports; ``label`` the label a ``spoof`` claims.
    """

    kind: str
    facts: tuple[float, float, float] = (1.0, 0.05, 40.0)
    sealed_steps: int = 40
    epsilon: float = 0.5
    label: float = 999.0


@dataclass(frozen=True)
class Sealing:
    """What a node needs to seal an update the server can open."""

    run_id: int
    params: CodecParams
    size: int
    public_key: bytes


def plan_reply(node: int, label: int, rate: float, steps: int, *, to: str = "") -> Message:
    """A node's answer to the planning query."""
    metrics = {
        protocol.CLIENT_ID: float(label),
        protocol.SAMPLE_RATE: rate,
        protocol.STEPS: float(steps),
    }
    return reply_from(node, RecordDict({protocol.METRICS: MetricRecord(metrics)}), to=to)  # type: ignore[arg-type]


def _content(
    label: float,
    clear: tuple[float, float, float],
    epsilon: float,
    status: str,
    sealed: bytes | None,
) -> RecordDict:
    metrics = {
        protocol.WEIGHT: 1.0,
        protocol.CLIENT_ID: label,
        protocol.NOISE_MULTIPLIER: clear[0],
        protocol.SAMPLE_RATE: clear[1],
        protocol.STEPS: clear[2],
        protocol.EPSILON: epsilon,
    }
    records: dict[str, object] = {
        protocol.METRICS: MetricRecord(metrics),  # type: ignore[arg-type]
        protocol.STATUS: ConfigRecord({"status": status, "reason": ""}),
    }
    if sealed is not None:
        records[protocol.UPDATE] = ConfigRecord({protocol.SEALED: sealed})
    return RecordDict(records)  # type: ignore[arg-type]


def train_reply(
    node: int,
    behaviour: Behaviour,
    *,
    label: int,
    planned: tuple[float, float, int],
    server_round: int,
    sealing: Sealing,
    to: str = "",
) -> Message | None:
    """The reply ``node`` sends to a train request, acting as ``behaviour`` says."""
    kind = behaviour.kind
    if kind == "silent":
        return None
    if kind == "error":
        return reply_from(
            node, error=Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, TRACEBACK), to=to
        )
    if kind == "garbage":
        return reply_from(node, RecordDict({protocol.METRICS: MetricRecord({"x": 1.0})}), to=to)
    if kind == "refuse":
        body = RecordDict(
            {
                protocol.METRICS: MetricRecord({protocol.CLIENT_ID: float(label)}),
                protocol.STATUS: ConfigRecord(
                    {"status": protocol.STATUS_REFUSED, "reason": "budget"}
                ),
            }
        )
        return reply_from(node, body, to=to)
    honest = (planned[0], planned[1], float(planned[2]))
    sealed_facts = honest if kind in ("honest", "spoof") else behaviour.facts
    clear = behaviour.facts if kind in ("declares", "clear-differs", "already") else honest
    if kind == "already":
        content = _content(
            float(label), clear, behaviour.epsilon, protocol.STATUS_ALREADY_TRAINED, None
        )
        return reply_from(node, content, to=to)
    steps = planned[2] if kind in ("honest", "spoof") else behaviour.sealed_steps
    delta = np.zeros(sealing.size, np.float32)
    encoded = encode_update(delta, sealing.params, np.random.default_rng(0))
    sealed = seal_client_update(
        encoded.payload,
        facts=DPFacts(
            sealed_facts[0],
            sealed_facts[1],
            steps,
            HONEST_EPSILON if kind in ("honest", "spoof") else behaviour.epsilon,
        ),
        params=sealing.params,
        size=sealing.size,
        public_key=sealing.public_key,
        context=SealContext(sealing.run_id, server_round, node),
    )
    if kind == "declares":
        clear = (sealed_facts[0], sealed_facts[1], float(steps))
    claimed = float(label)
    if kind == "spoof":  # always another label than its own
        claimed = behaviour.label if behaviour.label != label else label + 1.0
    # An honest (or merely spoofing) node reports a plausible ε; a liar reports anything.
    epsilon = HONEST_EPSILON if kind in ("honest", "spoof") else behaviour.epsilon
    content = _content(claimed, clear, epsilon, protocol.STATUS_TRAINED, sealed)
    return reply_from(node, content, to=to)
