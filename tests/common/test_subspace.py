"""The round's shared subspace (``common.subspace``) and how the codec and downlink carry it."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from common import subspace
from common.codec import CodecParams, decode_update, encode_update
from common.codec_params import kept_count
from common.downlink import DownlinkError, Subspace, apply_change, encode_change

SIZE = 5_000
FRACTION = 0.1
SUBSPACE = CodecParams(topk=FRACTION, bits=8, mask="subspace")


def test_the_seed_is_a_hash_of_the_documented_domain_run_and_round() -> None:
    material = b"fedveil/subspace/v1" + (7).to_bytes(8, "big") + (3).to_bytes(8, "big")
    assert subspace.round_seed(7, 3) == hashlib.sha256(material).digest()[:16]


def test_every_run_and_round_draws_its_own_mask_of_k_coordinates() -> None:
    masks = [subspace.round_mask(run, r, SIZE, FRACTION) for run in (1, 2) for r in (1, 2, 3)]

    assert {int(m.sum()) for m in masks} == {kept_count(SIZE, FRACTION)}
    for i, a in enumerate(masks):
        for b in masks[i + 1 :]:
            # Independent 10 % masks share about 1 % of the coordinates, not all of them.
            assert int((a & b).sum()) < 3 * SIZE * FRACTION**2
    np.testing.assert_array_equal(masks[0], subspace.round_mask(1, 1, SIZE, FRACTION))


def test_rounds_and_runs_outside_the_domain_have_no_subspace() -> None:
    with pytest.raises(ValueError, match="no subspace"):
        subspace.round_seed(1, 0)
    with pytest.raises(ValueError, match="no subspace"):
        subspace.round_seed(-1, 1)


def test_an_update_in_the_subspace_is_sent_as_its_values_and_decodes_there() -> None:
    mask = subspace.round_mask(4, 2, SIZE, FRACTION)
    vector = np.where(mask, np.random.default_rng(0).standard_normal(SIZE), 0).astype(np.float32)

    encoded = encode_update(
        vector, SUBSPACE, np.random.default_rng(1), mask_seed=subspace.round_seed(4, 2)
    )

    decoded = decode_update(encoded.payload, size=SIZE, params=SUBSPACE)
    np.testing.assert_array_equal(decoded, encoded.decoded)
    assert not decoded[~mask].any()
    assert float(np.abs(decoded - vector).max()) < float(np.abs(vector).max()) / 100
    # 8 bits a kept value, its scales and a 16-byte seed; no index bytes.
    assert len(encoded.payload) < kept_count(SIZE, FRACTION) * 1.1 + 40


def test_the_subspace_mask_needs_its_seed_and_no_other_mask_takes_one() -> None:
    vector = np.ones(SIZE, dtype=np.float32)
    with pytest.raises(ValueError, match="mask_seed"):
        encode_update(vector, SUBSPACE, np.random.default_rng(0))
    with pytest.raises(ValueError, match="mask_seed"):
        encode_update(vector, CodecParams(0.1, 8), np.random.default_rng(0), mask_seed=b"0" * 16)
    with pytest.raises(ValueError, match="16 bytes"):
        encode_update(vector, SUBSPACE, np.random.default_rng(0), mask_seed=b"short")


def test_a_sparse_downlink_change_rebuilds_bit_for_bit_only_with_the_runs_fraction() -> None:
    rng = np.random.default_rng(2)
    base = rng.standard_normal(SIZE).astype(np.float32)
    mask = subspace.round_mask(4, 2, SIZE, FRACTION)
    target = np.where(mask, base + rng.standard_normal(SIZE), base).astype(np.float32)
    sparse = Subspace(subspace.round_seed(4, 2), FRACTION)

    payload, rebuilt = encode_change(target, base, 8, rng, sparse)

    np.testing.assert_array_equal(apply_change(base, payload, 8, FRACTION), rebuilt)
    np.testing.assert_array_equal(rebuilt[~mask], base[~mask])
    for wrong in (1.0, 0.2):
        with pytest.raises(DownlinkError) as refused:
            apply_change(base, payload, 8, wrong)
        assert refused.value.cause == "downlink"
