"""Turn a locally trained model into the sealed, compressed update the client sends.

delta = local - global (flattened in ``state_dict`` order) + error-feedback residual, encoded by
``common.codec`` and sealed with ``common.envelope`` to the aggregator's key for this run, round
and node. The residual and the last sealed update stay in the node's state across rounds.
"""

from __future__ import annotations

import secrets

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context

from common import protocol
from common.codec import CodecParams, ErrorFeedback, encode_update
from common.envelope import DPFacts, seal_client_update
from common.sealing import SealContext, fingerprint
from common.weights import flatten

RESIDUAL_KEY = "fedveil.residual"
LAST_SEALED_KEY = "fedveil.last-sealed"


class AggregatorKeyMismatch(ValueError):  # noqa: N818 (a refusal, named for what it protects)
    """The aggregator's public key does not match the fingerprint this node pins."""


def aggregator_key(request: ConfigRecord, context: Context) -> bytes:
    """Return the aggregator's public key from a request, checked against a pinned fingerprint."""
    key = request.get(protocol.PUBLIC_KEY)
    if not isinstance(key, bytes) or len(key) != 32:
        raise AggregatorKeyMismatch("the request carries no 32-byte aggregator public key")
    pinned = str(context.node_config.get(protocol.PINNED_FINGERPRINT, "")).strip()
    if pinned and fingerprint(key) != pinned:
        raise AggregatorKeyMismatch(
            f"aggregator key {fingerprint(key)} does not match the pinned {pinned}; "
            f"refusing to send an update to it"
        )
    return key


def _residual(context: Context, size: int) -> ErrorFeedback:
    record = context.state.array_records.get(RESIDUAL_KEY)
    if record is None:
        return ErrorFeedback()
    residual = record["residual"].numpy().astype(np.float32)
    return ErrorFeedback(residual if residual.shape == (size,) else None)


def seal_trained_model(
    local: dict[str, np.ndarray],
    global_arrays: ArrayRecord,
    *,
    facts: DPFacts,
    config_params: CodecParams,
    error_feedback: bool,
    public_key: bytes,
    seal_context: SealContext,
    context: Context,
) -> bytes:
    """Encode ``local - global`` (with error feedback) and seal it for ``seal_context``."""
    names = list(global_arrays.keys())
    delta = flatten({n: local[n] for n in names}) - flatten(
        {n: global_arrays[n].numpy() for n in names}
    )
    feedback = _residual(context, delta.shape[0]) if error_feedback else ErrorFeedback()
    compensated = feedback.compensate(delta.astype(np.float32))
    # Quantization noise is post-processing of a DP output; OS entropy keeps it unguessable.
    encoded = encode_update(
        compensated, config_params, np.random.default_rng(secrets.randbits(128))
    )
    if error_feedback:
        feedback.update(compensated, encoded.decoded)
        residual = feedback.residual
        if residual is not None:
            context.state[RESIDUAL_KEY] = ArrayRecord({"residual": Array(residual)})
    sealed = seal_client_update(
        encoded.payload,
        facts=facts,
        params=config_params,
        size=int(delta.shape[0]),
        public_key=public_key,
        context=seal_context,
    )
    return sealed


def remember_sealed(context: Context, sealed: bytes) -> bytes | None:
    """Keep this round's sealed update; return the previous one (for replay fault injection)."""
    previous = context.state.config_records.get(LAST_SEALED_KEY)
    context.state[LAST_SEALED_KEY] = ConfigRecord({"sealed": sealed})
    if previous is None:
        return None
    value = previous.get("sealed")
    return value if isinstance(value, bytes) else None
