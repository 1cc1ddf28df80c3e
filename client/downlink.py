"""The node's side of the signed downlink: check it, rebuild the global model, keep references.

:func:`receive_model` reads a train request's ``downlink`` record (``common.downlink``): the
signing key must match ``aggregator-signing-fingerprint`` when the node config pins one; the
blob's length, Ed25519 signature and context (run, round, this node, model size) are checked
before the payload is decoded; the base it names must be the all-zeros vector, the task's
seeded initial model (which the node builds) or one of the references this node keeps
(``client.state_store``, the last two); the rebuilt model must have the target digest. It
then keeps ``{target, base}`` (the server names one of them next round,
whether or not it got this round's reply) and returns the model. A request without a
``downlink`` record (an older server, a tool) is read from its dense ``arrays`` record, unless
the node pins a signing key. Every refusal is a ``DownlinkError`` (``cause`` ``downlink`` or
``downlink-base``) raised before any privacy is spent; ``read_model`` turns it into the
one-line ``refused`` reply. Caveat: without a pin, a relay that replaces the signing key is not
detected.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)

from client.local_data import client_id_of
from client.state_store import NodeState
from common import protocol, subspace
from common.codec import Float32Array
from common.config import FedveilConfig
from common.downlink import (
    DownlinkError,
    Expected,
    apply_change,
    digest,
    open_blob,
    zero_digest,
)
from common.sealing import fingerprint
from common.task import task_of
from common.weights import flatten, unflatten

log = logging.getLogger(__name__)

Shapes = dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class ReceivedModel:
    """The global model as the node rebuilt it, or the reply that refuses it.

    ``digest`` names the reference now held (``None`` for a dense request or a refusal);
    ``refusal`` is the ``refused`` reply (``cause`` ``downlink`` or ``downlink-base``), with
    empty ``arrays``.
    """

    arrays: ArrayRecord
    digest: bytes | None
    refusal: RecordDict | None = None


def read_model(
    msg: Message, context: Context, *, config: FedveilConfig, server_round: int
) -> ReceivedModel:
    """Return :func:`receive_model`'s model, or its refusal as a reply; this node's state."""
    client_id = client_id_of(context)
    node_state = NodeState.for_node(context, config.client_state_dir, client_id)
    try:
        return receive_model(
            msg, context, config=config, server_round=server_round, node_state=node_state
        )
    except DownlinkError as exc:
        return ReceivedModel(ArrayRecord(), None, refusal_reply(exc, context))


def signing_key(record: ConfigRecord, context: Context) -> bytes:
    """Return the request's signing key, checked against a pinned fingerprint.

    Raises:
        DownlinkError: ``downlink``: no 32-byte key, or not the pinned one.

    """
    key = record.get(protocol.SIGNING_KEY)
    if not isinstance(key, bytes) or len(key) != 32:
        raise DownlinkError(protocol.CAUSE_DOWNLINK, "the request carries no 32-byte signing key")
    pinned = str(context.node_config.get(protocol.PINNED_SIGNING_FINGERPRINT, "")).strip()
    if pinned and fingerprint(key) != pinned:
        raise DownlinkError(
            protocol.CAUSE_DOWNLINK,
            f"signing key {fingerprint(key)} does not match the pinned {pinned}",
        )
    return key


def model_layout(config: FedveilConfig) -> tuple[Shapes, dict[str, torch.Tensor]]:
    """Return the task model's flat layout and its seeded initial weights.

    The layout is the ``state_dict`` names and shapes, in order; the initial weights are a base
    the server may name without sending it.
    """
    state = task_of(config).build_model().state_dict()
    return {k: tuple(v.shape) for k, v in state.items()}, state


def receive_model(
    msg: Message,
    context: Context,
    *,
    config: FedveilConfig,
    server_round: int,
    node_state: NodeState,
) -> ReceivedModel:
    """Return the global model a train request carries, checked (module docstring).

    Args:
        msg: The train request.
        context: This node's context (node id, node config).
        config: The run config (its task gives the model's names and shapes).
        server_round: The request's round, already checked.
        node_state: Where this node keeps its references.

    Raises:
        DownlinkError: The downlink must be refused; its ``cause`` says why.

    """
    record = msg.content.config_records.get(protocol.DOWNLINK)
    if record is None:
        if str(context.node_config.get(protocol.PINNED_SIGNING_FINGERPRINT, "")).strip():
            raise DownlinkError(
                protocol.CAUSE_DOWNLINK,
                "the request's model is not signed and this node pins a signing key",
            )
        arrays = msg.content.array_records.get(protocol.ARRAYS)
        if arrays is None:
            raise DownlinkError(protocol.CAUSE_DOWNLINK, "the request carries no model")
        return ReceivedModel(arrays, None)
    key = signing_key(record, context)
    blob = record.get(protocol.DOWNLINK_BLOB)
    shapes, state = model_layout(config)
    size = sum(int(np.prod(s)) for s in shapes.values())
    expected = Expected(int(msg.metadata.run_id), server_round, int(context.node_id), size)
    header, payload = open_blob(blob if isinstance(blob, bytes) else b"", key, expected)
    base, fresh = _base_of(header.base, size, state, node_state)
    model = apply_change(base, payload, header.bits, subspace.fraction_of(config) or 1.0)
    if digest(model) != header.target:
        raise DownlinkError(protocol.CAUSE_DOWNLINK, "the rebuilt model does not match its digest")
    node_state.save_references([model] if fresh else [model, base])
    return ReceivedModel(
        ArrayRecord(
            {k: Array(np.ascontiguousarray(v)) for k, v in unflatten(model, shapes).items()}
        ),
        header.target,
    )


def _base_of(
    named: bytes, size: int, state: dict[str, torch.Tensor], node_state: NodeState
) -> tuple[Float32Array, bool]:
    """Return the base a blob names, and whether every node has it (zeros, the initial model).

    Held references are tried before the initial model, which is flattened and hashed only
    when a blob names a base the node keeps no copy of (its first request, or after a reset).

    Raises:
        DownlinkError: ``downlink-base``: the node has no such base.

    """
    if named == zero_digest(size):
        return np.zeros(size, dtype=np.float32), True
    for reference in node_state.load_references(size):
        if digest(reference) == named:
            return reference, False
    initial = flatten({k: v.detach().cpu().numpy() for k, v in state.items()})
    if digest(initial) == named:
        return initial, True
    raise DownlinkError(
        protocol.CAUSE_DOWNLINK_BASE,
        f"this node does not hold the reference {named.hex()[:16]} the model is based on; "
        f"the next model comes from the initial model",
    )


def refusal_reply(exc: DownlinkError, context: Context) -> RecordDict:
    """Return the ``refused`` reply to a downlink the node cannot use; nothing is spent."""
    reason = f"refused: {exc.detail}; nothing was spent"
    log.warning("node %d %s", context.node_id, reason)
    return RecordDict(
        {
            protocol.METRICS: MetricRecord({protocol.CLIENT_ID: float(client_id_of(context))}),
            protocol.STATUS: ConfigRecord(
                {"status": protocol.STATUS_REFUSED, "reason": reason, protocol.CAUSE: exc.cause}
            ),
        }
    )


def with_digest(digest_held: bytes | None, content: RecordDict) -> RecordDict:
    """Name in a reply the downlink reference this node now holds (``None``: a dense request)."""
    if digest_held is not None:
        content[protocol.DOWNLINK] = ConfigRecord({protocol.DOWNLINK_DIGEST: digest_held})
    return content
