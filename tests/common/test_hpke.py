"""Tests of ``common.crypto.hpke``: the RFC 9180 known answers for our one suite."""

from __future__ import annotations

from typing import Any

import pytest
from pyhpke import KEMKey

from common.crypto import hpke
from common.crypto.aggregator_keys import AggregatorKeyPair
from common.crypto.hpke import SUITE_AEAD_ID, SUITE_KDF_ID, SUITE_KEM_ID
from tests.common.sealing_support import VECTORS, h


def test_the_vector_file_covers_exactly_our_suite() -> None:
    assert len(VECTORS) >= 1
    assert (SUITE_KEM_ID, SUITE_KDF_ID, SUITE_AEAD_ID) == (0x0020, 0x0001, 0x0002)
    # The suite object that seal_update/open_update use is the one the vectors test.
    suite = hpke.SUITE
    assert (suite.kem.id.value, suite.kdf.id.value, suite.aead.id.value) == (0x20, 0x01, 0x02)
    for v in VECTORS:
        assert {e["seq"] for e in v["encryptions"]} >= {0, 1}


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["enc"][:8])
def test_rfc9180_key_derivation(vector: dict[str, Any]) -> None:
    kem = hpke.SUITE.kem
    eph = kem.derive_key_pair(h(vector["ikmE"]))
    rec = kem.derive_key_pair(h(vector["ikmR"]))
    assert eph.private_key.to_private_bytes() == h(vector["skEm"])
    assert eph.public_key.to_public_bytes() == h(vector["pkEm"])
    assert rec.private_key.to_private_bytes() == h(vector["skRm"])
    assert rec.public_key.to_public_bytes() == h(vector["pkRm"])
    # And our key pair type agrees on the recipient's public key.
    assert AggregatorKeyPair.from_private_bytes(h(vector["skRm"])).public_bytes == h(vector["pkRm"])


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["enc"][:8])
def test_rfc9180_sender_reproduces_enc_ciphertexts_and_exports(vector: dict[str, Any]) -> None:
    suite = hpke.SUITE
    eph = suite.kem.derive_key_pair(h(vector["ikmE"]))
    pk_r = suite.kem.deserialize_public_key(h(vector["pkRm"]))
    enc, sender = suite.create_sender_context(pk_r, info=h(vector["info"]), eks=eph)
    assert enc == h(vector["enc"])
    by_seq = {e["seq"]: e for e in vector["encryptions"]}
    for seq in range(max(by_seq) + 1):
        if seq in by_seq:
            e = by_seq[seq]
            assert sender.seal(h(e["pt"]), aad=h(e["aad"])) == h(e["ct"]), f"seq {seq}"
        else:  # advance the nonce counter
            sender.seal(b"", aad=b"")
    for x in vector["exports"]:
        assert sender.export(h(x["exporter_context"]), x["L"]) == h(x["exported_value"])


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["enc"][:8])
def test_rfc9180_recipient_opens_the_vector_ciphertexts(vector: dict[str, Any]) -> None:
    # Independent of key derivation: the vector's own skRm and enc.
    suite = hpke.SUITE
    sk_r = KEMKey.from_pyca_cryptography_key(
        AggregatorKeyPair.from_private_bytes(h(vector["skRm"]))._private
    )
    first = vector["encryptions"][0]
    assert first["seq"] == 0
    fresh = suite.create_recipient_context(h(vector["enc"]), sk_r, info=h(vector["info"]))
    assert fresh.open(h(first["ct"]), aad=h(first["aad"])) == h(first["pt"])

    recipient = suite.create_recipient_context(h(vector["enc"]), sk_r, info=h(vector["info"]))
    contiguous = [e for i, e in enumerate(vector["encryptions"]) if e["seq"] == i]
    for e in contiguous:
        assert recipient.open(h(e["ct"]), aad=h(e["aad"])) == h(e["pt"])
    for x in vector["exports"]:
        assert recipient.export(h(x["exporter_context"]), x["L"]) == h(x["exported_value"])

    # The known answer can fail: a different info or aad does not open.
    other_info = suite.create_recipient_context(h(vector["enc"]), sk_r, info=b"other")
    with pytest.raises(Exception, match="Failed to open"):
        other_info.open(h(first["ct"]), aad=h(first["aad"]))
    other_aad = suite.create_recipient_context(h(vector["enc"]), sk_r, info=h(vector["info"]))
    with pytest.raises(Exception, match="Failed to open"):
        other_aad.open(h(first["ct"]), aad=b"Count-1")
