"""CompressedDownlink with real client steps: round trips, lost replies, restarts, a bad relay."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message

from common import protocol
from common.crypto.signing import SigningKey
from common.downlink import (
    DENSE_BITS,
    HEADER_LEN,
    OVERHEAD,
    digest,
    signed_message,
    zero_digest,
)
from common.weights import flatten
from tests.server.strategy.downlink_federation import (
    SHAPES,
    SIZE,
    Federation,
    model_at,
    node_context,
)

NODES = [11, 12, 13]


def _federation(tmp_path: Path, **kwargs: object) -> Federation:
    contexts = {n: node_context(n, tmp_path / f"node-{n}") for n in NODES}
    return Federation(contexts, **kwargs)  # type: ignore[arg-type]


def _blob(request: Message) -> bytes:
    value = request.content.config_records[protocol.DOWNLINK][protocol.DOWNLINK_BLOB]
    assert isinstance(value, bytes)
    return value


def _base(request: Message) -> bytes:
    return _blob(request)[30:62]  # after magic, version, bits, size, run, round, node


def _global(server_round: int) -> np.ndarray:
    arrays = model_at(server_round)
    return flatten({k: arrays[k].numpy() for k in SHAPES})


def _rejected(fed: Federation) -> dict[int, str]:
    return {r.node: r.reason for r in fed.book.outcome.rejected}


def test_requests_carry_a_signed_change_not_the_dense_model(tmp_path: Path) -> None:
    fed = _federation(tmp_path)

    requests = fed.round(1, NODES)

    for request in requests:
        assert protocol.ARRAYS not in request.content.array_records
        record = request.content.config_records[protocol.DOWNLINK]
        assert record[protocol.SIGNING_KEY] == fed.signer.public_bytes
    # One payload for the nodes that hold the same base; each blob signed for its node.
    assert len({_blob(r)[HEADER_LEN:-64] for r in requests}) == 1
    assert len({_blob(r) for r in requests}) == len(NODES)
    assert fed.book.outcome.bytes_down == sum(len(_blob(r)) + 32 for r in requests)
    assert fed.book.outcome.bytes_down < len(NODES) * 4 * SIZE / 3  # 8 bits: about a quarter


def test_nodes_rebuild_the_servers_reference_bit_for_bit_and_track_the_global_model(
    tmp_path: Path,
) -> None:
    fed = _federation(tmp_path)
    errors = []

    for server_round in range(1, 6):
        requests = fed.round(server_round, NODES)
        assert not fed.book.outcome.rejected
        bases = {_base(r) for r in requests}
        assert bases == {zero_digest(SIZE)} if server_round == 1 else zero_digest(SIZE) not in bases
        for node in NODES:
            held = fed.server.held[node]
            assert digest(fed.rebuilt[node]) == held
            np.testing.assert_array_equal(fed.rebuilt[node], fed.server._references[held])
        errors.append(float(np.abs(fed.rebuilt[NODES[0]] - _global(server_round)).max()))

    # 8-bit steps of the change, not of the model: later rounds are closer than the first.
    assert errors[-1] < errors[0] / 5


def test_a_node_that_skips_rounds_gets_its_change_from_the_reference_it_holds(
    tmp_path: Path,
) -> None:
    fed = _federation(tmp_path)
    fed.round(1, NODES)
    held_after_one = fed.server.held[13]

    fed.round(2, [11, 12])
    fed.round(3, [11, 12])
    (request,) = fed.round(4, [13])

    assert _base(request) == held_after_one
    assert not fed.book.outcome.rejected
    assert digest(fed.rebuilt[13]) == fed.server.held[13]


def test_lost_replies_do_not_desynchronize_a_node(tmp_path: Path) -> None:
    fed = _federation(tmp_path)
    fed.round(1, NODES)
    believed = fed.server.held[11]
    fed.lose = {11}

    fed.round(2, NODES)  # node 11 applied it; the server never heard
    fed.round(3, NODES)  # and again: the server still names the round-1 reference
    fed.lose = set()
    (request,) = [r for r in fed.round(4, NODES) if r.metadata.dst_node_id == 11]

    assert fed.server.held[11] != believed
    assert not fed.book.outcome.rejected
    assert digest(fed.rebuilt[11]) == fed.server.held[11]
    assert _base(request) == believed


def test_a_restarted_node_that_lost_its_references_is_refused_once_then_resent_from_zeros(
    tmp_path: Path,
) -> None:
    contexts = {n: node_context(n) for n in NODES}  # memory only
    fed = Federation(contexts)
    fed.round(1, NODES)
    fed.contexts[12] = node_context(12)  # the node restarted: its memory is gone

    fed.round(2, NODES)

    assert _rejected(fed) == {12: protocol.CAUSE_DOWNLINK_BASE}
    assert "\n" not in fed.book.outcome.rejected[0].detail
    assert 12 not in fed.server.held
    assert sorted(m.metadata.src_node_id for m in fed.inner.aggregated) == [11, 13]
    (request,) = [r for r in fed.round(3, NODES) if r.metadata.dst_node_id == 12]
    assert _base(request) == zero_digest(SIZE)
    assert not fed.book.outcome.rejected


def test_a_node_restarted_with_its_state_dir_keeps_its_references(tmp_path: Path) -> None:
    fed = _federation(tmp_path)
    fed.round(1, NODES)
    fed.contexts[12] = node_context(12, tmp_path / "node-12")

    fed.round(2, NODES)

    assert not fed.book.outcome.rejected
    files = list((tmp_path / "node-12").iterdir())
    assert [f.name for f in files] == ["downlink.safetensors"]
    assert files[0].stat().st_mode & 0o777 == 0o600


def test_a_restarted_server_sends_from_zeros_and_nodes_follow(tmp_path: Path) -> None:
    fed = _federation(tmp_path)
    fed.round(1, NODES)
    fed.round(2, NODES)
    fed.restart_server()

    requests = fed.round(3, NODES)

    assert {_base(r) for r in requests} == {zero_digest(SIZE)}
    assert not fed.book.outcome.rejected
    assert all(digest(fed.rebuilt[n]) == fed.server.held[n] for n in NODES)


def test_dense_mode_sends_the_exact_model_signed(tmp_path: Path) -> None:
    fed = _federation(tmp_path, bits=0)

    fed.round(1, NODES)
    requests = fed.round(2, NODES)

    assert {_base(r) for r in requests} == {zero_digest(SIZE)}
    assert {_blob(r)[5] for r in requests} == {DENSE_BITS}
    for node in NODES:
        np.testing.assert_array_equal(fed.rebuilt[node], _global(2))
    assert fed.book.outcome.bytes_down <= len(NODES) * (4 * SIZE + 17 + OVERHEAD + 32)


def _flip_payload_byte(request: Message) -> None:
    blob = bytearray(_blob(request))
    blob[HEADER_LEN + 20] ^= 0x01
    _set_blob(request, bytes(blob))


def _truncate(request: Message) -> None:
    _set_blob(request, _blob(request)[:-10])


def _set_blob(request: Message, blob: bytes) -> None:
    record = request.content.config_records[protocol.DOWNLINK]
    request.content[protocol.DOWNLINK] = ConfigRecord({**dict(record.items()), "blob": blob})


@pytest.mark.parametrize("alter", [_flip_payload_byte, _truncate], ids=["tamper", "truncate"])
def test_an_altered_downlink_is_refused_with_one_line_and_the_round_goes_on(
    tmp_path: Path, alter: object
) -> None:
    fed = _federation(tmp_path)
    fed.round(1, NODES)
    held = dict(fed.server.held)
    fed.relay = lambda m: alter(m) if m.metadata.dst_node_id == 12 else None  # type: ignore[operator]

    fed.round(2, NODES)

    assert _rejected(fed) == {12: protocol.CAUSE_DOWNLINK}
    reason = str(fed.replies[12].config_records[protocol.STATUS]["reason"])
    assert "\n" not in reason and "Traceback" not in reason
    assert fed.server.held[12] == held[12]  # it holds what it held
    fed.relay = None
    fed.round(3, NODES)
    assert not fed.book.outcome.rejected


def test_a_relay_giving_a_node_another_nodes_downlink_is_refused(tmp_path: Path) -> None:
    fed = _federation(tmp_path)
    fed.round(1, NODES)
    fed.round(2, NODES)  # bases now differ per node only by node id in the signed header
    blobs: dict[int, bytes] = {}

    def swap(request: Message) -> None:
        node = int(request.metadata.dst_node_id)
        blobs[node] = _blob(request)
        if node == 12:  # requests go out 13, 12, 11
            _set_blob(request, blobs[13])

    fed.relay = swap
    fed.round(3, NODES)

    assert _rejected(fed) == {12: protocol.CAUSE_DOWNLINK}
    assert "node 13" in str(fed.replies[12].config_records[protocol.STATUS]["reason"])


def test_a_relay_that_re_signs_with_its_own_key_is_refused_by_a_pinning_node(
    tmp_path: Path,
) -> None:
    fed = _federation(tmp_path)
    fed.contexts[13] = node_context(
        13,
        tmp_path / "node-13",
        **{protocol.PINNED_SIGNING_FINGERPRINT: fed.signer.fingerprint()},
    )
    forger = SigningKey.from_seed(b"\x07" * 32)

    def resign(request: Message) -> None:
        blob = _blob(request)
        payload = blob[HEADER_LEN:-64]
        signature = forger.sign(signed_message(blob[:HEADER_LEN], hashlib.sha256(payload).digest()))
        request.content[protocol.DOWNLINK] = ConfigRecord(
            {"blob": blob[:-64] + signature, protocol.SIGNING_KEY: forger.public_bytes}
        )

    fed.relay = resign
    fed.round(1, NODES)

    # Nodes without a pin cannot tell; the pinning node refuses.
    assert _rejected(fed) == {13: protocol.CAUSE_DOWNLINK}
    assert "pinned" in str(fed.replies[13].config_records[protocol.STATUS]["reason"])
