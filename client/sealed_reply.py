"""Turn a locally trained model into the sealed, compressed update the client sends.

delta = local - global (flattened in ``state_dict`` order) + error-feedback residual, encoded by
``common.codec`` and sealed with ``common.envelope`` to the aggregator's key for this run, round
and node. The error-feedback residual stays in the node's state across rounds
(``client.state_store``).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context

from client.state_store import NodeState
from common import protocol
from common.codec import CodecParams, ErrorFeedback, encode_update
from common.envelope import DPFacts, seal_client_update
from common.sealing import SealContext, fingerprint
from common.weights import flatten


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


def seal_trained_model(
    local: Mapping[str, np.ndarray],
    global_arrays: ArrayRecord,
    *,
    facts: DPFacts,
    config_params: CodecParams,
    error_feedback: bool,
    public_key: bytes,
    seal_context: SealContext,
    node_state: NodeState,
    mask_seed: bytes | None = None,
) -> bytes:
    """Encode ``local - global`` (with error feedback) and seal it for ``seal_context``.

    ``mask_seed`` is the round's subspace seed when ``config_params.mask`` is ``subspace``.
    """
    names = list(global_arrays.keys())
    delta = flatten({n: local[n] for n in names}) - flatten(
        {n: global_arrays[n].numpy() for n in names}
    )
    stored = node_state.load_residual(int(delta.shape[0])) if error_feedback else None
    feedback = ErrorFeedback(stored)
    compensated = feedback.compensate(delta.astype(np.float32))
    # Quantization noise is post-processing of a DP output; OS entropy keeps it unguessable.
    encoded = encode_update(
        compensated,
        config_params,
        np.random.default_rng(secrets.randbits(128)),
        mask_seed=mask_seed,
    )
    if error_feedback:
        feedback.update(compensated, encoded.decoded)
        residual = feedback.residual
        if residual is not None:
            node_state.save_residual(residual)
    sealed = seal_client_update(
        encoded.payload,
        facts=facts,
        params=config_params,
        size=int(delta.shape[0]),
        public_key=public_key,
        context=seal_context,
    )
    return sealed
