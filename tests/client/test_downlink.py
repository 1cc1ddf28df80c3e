"""The node's side of the signed downlink: the ClientApp refuses what it cannot trust, unspent."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from client.app import app
from client.privacy_state import STATE_KEY
from client.state_store import REFERENCES_FILE, StateStore
from common import protocol
from common.config import FedveilConfig
from common.crypto.signing import SigningKey, derive_signing_key
from common.downlink import DownlinkHeader, digest, encode_change, signed_message
from common.models import create_model
from common.sealing import AggregatorKeyPair
from common.weights import flatten
from tests.conftest import NODE_ID, RUN_ID, client_context

CONFIG = FedveilConfig.from_flat({"num-server-rounds": 3, "sim.clients": 4})
MODEL = flatten(dict(create_model("mlp", 10, seed=0).state_dict()))
SIZE = MODEL.size


def _request(
    aggregator: AggregatorKeyPair,
    server_round: int = 1,
    *,
    base: np.ndarray | None = None,
    signer: SigningKey | None = None,
    alter: int | None = None,
) -> Message:
    """A train request whose model travels as a signed change from ``base`` (zeros)."""
    signer = signer or derive_signing_key(aggregator)
    start = np.zeros(SIZE, np.float32) if base is None else base
    payload, target = encode_change(MODEL, start, 8, np.random.default_rng(0))
    header = DownlinkHeader(
        8, SIZE, RUN_ID, server_round, NODE_ID, digest(start), digest(target), len(payload)
    ).pack()
    blob = bytearray(
        header + payload + signer.sign(signed_message(header, hashlib.sha256(payload).digest()))
    )
    if alter is not None:
        blob[alter] ^= 0x01
    content = RecordDict(
        {
            protocol.DOWNLINK: ConfigRecord(
                {protocol.DOWNLINK_BLOB: bytes(blob), protocol.SIGNING_KEY: signer.public_bytes}
            ),
            protocol.CONFIG: protocol.config_record(CONFIG.to_flat(), server_round),
            protocol.SEAL: ConfigRecord({protocol.PUBLIC_KEY: aggregator.public_bytes}),
        }
    )
    return Message(content=content, dst_node_id=NODE_ID, message_type=MessageType.TRAIN)


def _status(reply: Message) -> ConfigRecord:
    return reply.content.config_records[protocol.STATUS]


def _assert_refused_spending_nothing(reply: Message, ctx: Context, cause: str) -> str:
    status = _status(reply)
    assert status["status"] == protocol.STATUS_REFUSED
    assert status[protocol.CAUSE] == cause
    reason = str(status["reason"])
    assert "\n" not in reason and "Traceback" not in reason
    assert STATE_KEY not in ctx.state.config_records  # no privacy state: nothing was spent
    assert protocol.UPDATE not in reply.content.config_records
    return reason


def test_a_signed_model_trains_and_the_reply_names_the_reference_held(
    task_identity: None, aggregator: AggregatorKeyPair, tmp_path: Path
) -> None:
    pin = derive_signing_key(aggregator).fingerprint()
    ctx = client_context(
        1, 4, **{"state-dir": str(tmp_path), protocol.PINNED_SIGNING_FINGERPRINT: pin}
    )

    reply = app(_request(aggregator), ctx)

    assert _status(reply)["status"] == protocol.STATUS_TRAINED
    held = reply.content.config_records[protocol.DOWNLINK][protocol.DOWNLINK_DIGEST]
    (kept,) = StateStore(tmp_path).load_references(SIZE)
    assert held == digest(kept)
    mode = (tmp_path / REFERENCES_FILE).stat().st_mode
    assert stat.S_IMODE(mode) == 0o600


@pytest.mark.parametrize(
    "where", [8, 25, 70, 120, -1], ids=["size", "node", "target", "payload", "signature"]
)
def test_an_altered_downlink_is_refused_with_one_line(
    task_identity: None, aggregator: AggregatorKeyPair, where: int
) -> None:
    ctx = client_context(1, 4)

    reply = app(_request(aggregator, alter=where), ctx)

    _assert_refused_spending_nothing(reply, ctx, protocol.CAUSE_DOWNLINK)


def test_a_signing_key_other_than_the_pinned_one_is_refused(
    task_identity: None, aggregator: AggregatorKeyPair
) -> None:
    ctx = client_context(
        1, 4, **{protocol.PINNED_SIGNING_FINGERPRINT: derive_signing_key(aggregator).fingerprint()}
    )
    forger = SigningKey.from_seed(b"\x09" * 32)

    reply = app(_request(aggregator, signer=forger), ctx)

    reason = _assert_refused_spending_nothing(reply, ctx, protocol.CAUSE_DOWNLINK)
    assert forger.fingerprint() in reason and "pinned" in reason


def test_a_dense_unsigned_model_is_refused_by_a_pinning_node(
    task_identity: None, aggregator: AggregatorKeyPair
) -> None:
    request = _request(aggregator)
    content = RecordDict({k: v for k, v in request.content.items() if k != protocol.DOWNLINK})
    content[protocol.ARRAYS] = ArrayRecord(create_model("mlp", 10, seed=0).state_dict())
    unsigned = Message(content=content, dst_node_id=NODE_ID, message_type=MessageType.TRAIN)
    ctx = client_context(
        1, 4, **{protocol.PINNED_SIGNING_FINGERPRINT: derive_signing_key(aggregator).fingerprint()}
    )

    reply = app(unsigned, ctx)

    assert "not signed" in _assert_refused_spending_nothing(reply, ctx, protocol.CAUSE_DOWNLINK)


def test_a_base_the_node_does_not_hold_is_refused_as_downlink_base(
    task_identity: None, aggregator: AggregatorKeyPair, tmp_path: Path
) -> None:
    ctx = client_context(1, 4, **{"state-dir": str(tmp_path)})
    (tmp_path / REFERENCES_FILE).write_bytes(b"not safetensors")  # a damaged file is dropped

    reply = app(_request(aggregator, base=np.ones(SIZE, np.float32)), ctx)

    _assert_refused_spending_nothing(reply, ctx, protocol.CAUSE_DOWNLINK_BASE)
