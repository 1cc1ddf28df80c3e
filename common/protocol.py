"""What travels between ServerApp and ClientApp in a train round: record names and metric keys.

Request ``RecordDict``:
    ``downlink`` ConfigRecord, ``blob``: the global model as a signed change from a reference
                the node holds (``common.downlink``), and ``signing-key``: the aggregator's raw
                Ed25519 key (32 bytes), checked against ``aggregator-signing-fingerprint``.
    ``arrays``  ArrayRecord, the global model (``state_dict`` names, float32), only in requests
                without ``downlink`` (older servers, tools); a node pinning a signing key
                refuses them.
    ``config``  ConfigRecord, the run-config keys a client needs (flat, dotted;
                ``common.config.CLIENT_KEYS``, missing ones take their defaults) plus
                ``server-round`` and ``run-tag`` (fedveil's run id, stable across a resume).
    ``seal``    ConfigRecord, ``public-key``: the aggregator's raw X25519 key (32 bytes).
    ``dp``      ConfigRecord, ``noise-multiplier``: the σ the server's plan assigns this client.
    ``audit``   ConfigRecord (only with ``privacy.audit``): ``mode`` (``white-box``, also when
                absent, or ``black-box``), ``bits-seed`` and ``canaries``; white-box adds
                ``directions-seed`` (``common.audit_canaries``), black-box ``inputs-seed``,
                ``input-low`` and ``input-high`` (``common.audit_inputs``).

A client reads these records and no others; a record it does not know changes nothing.

Query (planning) request: ``config`` only. Reply: ``metrics`` with ``client-id``,
``dp-sample-rate`` and ``dp-steps`` (steps per round), plus the node's own limits
(``NODE_LIMIT_METRICS``, each only when set); a node without usable data, or with an unusable
limit in its node config, replies ``metrics`` with ``client-id`` only and ``status`` =
``refused`` with the reason.

Reply ``RecordDict``:
    ``metrics`` MetricRecord, the DP facts of this round (``REPLY_METRICS``) and the node's
                own limits (``NODE_LIMIT_METRICS``, each only when set).
    ``status``  ConfigRecord, ``status`` = ``trained`` or ``refused`` and a one-line ``reason``
                (a refusal for lack of usable data adds ``cause`` = ``no-data`` and carries
                ``client-id`` only in ``metrics``; one by the node's own limit adds ``cause`` =
                ``node-limit`` and ``limit`` = the node-config key; an unusable limit value adds
                ``cause`` = ``node-config``, ``limit`` and ``client-id`` only in ``metrics``; a
                downlink the node cannot use adds ``cause`` = ``downlink`` (corrupt, truncated,
                altered, misaddressed, or a signing key other than the pinned one) or
                ``downlink-base`` (it lacks the reference named as base); nothing is spent).
    ``update``  ConfigRecord, ``sealed``: the sealed update (``common.envelope``); only when
                ``status`` is ``trained``.
    ``downlink`` ConfigRecord, ``digest``: the reference the node now holds (SHA-256, 32
                bytes), in every reply to a request whose downlink it applied.

Nothing else leaves a client: no training loss, no example count (aggregation is uniform);
the node's own limits travel in the clear, so the server can plan around them. The downlink
digest is in the clear too: it names a reference the server itself built from the global model.
The metrics repeat the DP facts in the clear for refusals and logs; the ledger charges the
copy inside the seal, which the relay can neither read nor alter.
The sample rate reveals ``ceil(n / batch_size)``; the privacy report names that channel.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.app import ConfigRecord

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
STATUS = "status"

SERVER_ROUND = "server-round"
RUN_TAG = "run-tag"
SEAL = "seal"
PUBLIC_KEY = "public-key"
SEALED = "sealed"
UPDATE = "update"
PINNED_FINGERPRINT = "aggregator-fingerprint"
# The signed downlink (``common.downlink``): request record with the blob and the signing key;
# the reply record of the same name carries the digest of the reference the node now holds.
DOWNLINK = "downlink"
DOWNLINK_BLOB = "blob"
SIGNING_KEY = "signing-key"
DOWNLINK_DIGEST = "digest"
PINNED_SIGNING_FINGERPRINT = "aggregator-signing-fingerprint"
DP = "dp"
ASSIGNED_NOISE = "noise-multiplier"
# The audit's record, only in audited clients' requests: white-box canaries to add to DP-SGD
# (``common.audit_canaries``) or black-box input canaries to put in the client's data
# (``common.audit_inputs``), derived from seeds; a client without it adds none.
AUDIT = "audit"
AUDIT_MODE = "mode"
AUDIT_DIRECTIONS_SEED = "directions-seed"
AUDIT_INPUTS_SEED = "inputs-seed"
AUDIT_INPUT_LOW = "input-low"
AUDIT_INPUT_HIGH = "input-high"
AUDIT_BITS_SEED = "bits-seed"
AUDIT_CANARIES = "canaries"
STATUS_TRAINED = "trained"
STATUS_REFUSED = "refused"
# The node trained this round before a restart lost the reply; it reports the round's DP facts
# (so the ledger can charge it once) and does not train it twice.
STATUS_ALREADY_TRAINED = "already-trained"
# A refusal's cause, in the ``status`` record beside ``reason`` (absent: the budget): a node with
# no usable data refuses with ``CAUSE_NO_DATA``; the server rejects that reply as ``no-data``
# rather than counting it as a budget refusal, so the node is not taken for exhausted.
CAUSE = "cause"
CAUSE_NO_DATA = "no-data"
# The device owner's own limit (node config) stops this round; ``LIMIT`` names the key
# (``max-epsilon`` / ``max-rounds``: the node can train no more in this run;
# ``min-noise-multiplier``: the σ asked for is below the node's floor). Nothing is spent.
CAUSE_NODE_LIMIT = "node-limit"
# A limit in the node config is unusable (not a number, NaN, <= 0); ``LIMIT`` names the key. The
# node trains nothing until its owner fixes it. Nothing is spent.
CAUSE_NODE_CONFIG = "node-config"
LIMIT = "limit"
# The request's downlink cannot be used: corrupt, truncated, altered, misaddressed or signed by
# a key other than the pinned one (``CAUSE_DOWNLINK``), or based on a reference the node does
# not hold (``CAUSE_DOWNLINK_BASE``: the server then sends the next one from zeros). Nothing is
# spent.
CAUSE_DOWNLINK = "downlink"
CAUSE_DOWNLINK_BASE = "downlink-base"

# Metric keys of a train reply; "weight" is the aggregation weight (uniform, 1.0).
WEIGHT = "weight"
CLIENT_ID = "client-id"
EPSILON = "epsilon"
NOISE_MULTIPLIER = "dp-noise-multiplier"
SAMPLE_RATE = "dp-sample-rate"
STEPS = "dp-steps"
REPLY_METRICS = (WEIGHT, CLIENT_ID, EPSILON, NOISE_MULTIPLIER, SAMPLE_RATE, STEPS)
# The node's own limits (``client.node_limits``), in planning and train replies; absent when unset.
NODE_MAX_EPSILON = "node-max-epsilon"
NODE_MIN_NOISE = "node-min-noise-multiplier"
NODE_MAX_ROUNDS = "node-max-rounds"
NODE_LIMIT_METRICS = (NODE_MAX_EPSILON, NODE_MIN_NOISE, NODE_MAX_ROUNDS)


def run_config_of(record: ConfigRecord) -> dict[str, Any]:
    """Return the run-config keys of a request's config record (round bookkeeping removed)."""
    return {k: v for k, v in record.items() if k not in (SERVER_ROUND, RUN_TAG)}


def config_record(flat: Mapping[str, Any], server_round: int) -> ConfigRecord:
    """Build a request's config record from a flat run config and the round number."""
    return ConfigRecord({**flat, SERVER_ROUND: server_round})
