"""What travels between ServerApp and ClientApp in a train round: record names and metric keys.

Request ``RecordDict``:
    ``arrays``  ArrayRecord, the global model (``state_dict`` names, float32).
    ``config``  ConfigRecord, the run-config keys a client needs (flat, dotted;
                ``common.config.CLIENT_KEYS``, missing ones take their defaults) plus
                ``server-round`` and ``run-tag`` (fedveil's run id, stable across a resume).
    ``seal``    ConfigRecord, ``public-key``: the aggregator's raw X25519 key (32 bytes).
    ``dp``      ConfigRecord, ``noise-multiplier``: the σ the server's plan assigns this client.

A client reads these records and no others; a record it does not know changes nothing.

Query (planning) request: ``config`` only. Reply: ``metrics`` with ``client-id``,
``dp-sample-rate`` and ``dp-steps`` (steps per round); a node without usable data replies
``metrics`` with ``client-id`` only and ``status`` = ``refused`` with the reason.

Reply ``RecordDict``:
    ``metrics`` MetricRecord, the DP facts of this round (``REPLY_METRICS``).
    ``status``  ConfigRecord, ``status`` = ``trained`` or ``refused`` and a one-line ``reason``
                (a refusal for lack of usable data adds ``cause`` = ``no-data`` and carries
                ``client-id`` only in ``metrics``).
    ``update``  ConfigRecord, ``sealed``: the sealed update (``common.envelope``); only when
                ``status`` is ``trained``.

Nothing else leaves a client: no training loss, no example count (aggregation is uniform).
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
DP = "dp"
ASSIGNED_NOISE = "noise-multiplier"
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

# Metric keys of a train reply; "weight" is the aggregation weight (uniform, 1.0).
WEIGHT = "weight"
CLIENT_ID = "client-id"
EPSILON = "epsilon"
NOISE_MULTIPLIER = "dp-noise-multiplier"
SAMPLE_RATE = "dp-sample-rate"
STEPS = "dp-steps"
REPLY_METRICS = (WEIGHT, CLIENT_ID, EPSILON, NOISE_MULTIPLIER, SAMPLE_RATE, STEPS)


def run_config_of(record: ConfigRecord) -> dict[str, Any]:
    """Return the run-config keys of a request's config record (round bookkeeping removed)."""
    return {k: v for k, v in record.items() if k not in (SERVER_ROUND, RUN_TAG)}


def config_record(flat: Mapping[str, Any], server_round: int) -> ConfigRecord:
    """Build a request's config record from a flat run config and the round number."""
    return ConfigRecord({**flat, SERVER_ROUND: server_round})
