"""UpdateOpener under a shared subspace: an update that moves other coordinates is rejected."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from common import subspace
from common.codec import CodecParams, encode_update
from common.envelope import DPFacts, UpdateRejected, seal_client_update
from common.sealing import AggregatorKeyPair, SealContext
from server.opening import UpdateOpener

SHAPES = {"w": (40, 50), "b": (50,)}
SIZE = 2_050
RUN_ID = 9
PARAMS = CodecParams(topk=0.1, bits=8, mask="subspace")
FACTS = DPFacts(noise_multiplier=1.1, sample_rate=0.05, steps=40, epsilon=0.7)
GLOBAL = ArrayRecord({k: Array(np.zeros(s, np.float32)) for k, s in SHAPES.items()})
KEYPAIR = AggregatorKeyPair.generate()


def _sealed(trained_in: int, *, server_round: int = 3) -> bytes:
    mask = subspace.round_mask(RUN_ID, trained_in, SIZE, PARAMS.topk)
    delta = np.where(mask, np.random.default_rng(0).standard_normal(SIZE), 0).astype(np.float32)
    encoded = encode_update(
        delta, PARAMS, np.random.default_rng(1), mask_seed=subspace.round_seed(RUN_ID, trained_in)
    )
    return seal_client_update(
        encoded.payload,
        facts=FACTS,
        params=PARAMS,
        size=SIZE,
        public_key=KEYPAIR.public_bytes,
        context=SealContext(RUN_ID, server_round, 5),
    )


def _open(sealed: bytes) -> dict[str, np.ndarray]:
    opener = UpdateOpener(KEYPAIR, run_id=RUN_ID, params=PARAMS, shapes=SHAPES)
    _, weights = opener.open(sealed, node=5, server_round=3, global_arrays=GLOBAL)
    return weights


def test_an_update_inside_the_rounds_subspace_opens_there() -> None:
    weights = _open(_sealed(trained_in=3))

    moved = np.concatenate([weights["w"].ravel(), weights["b"]]) != 0
    np.testing.assert_array_equal(moved, subspace.round_mask(RUN_ID, 3, SIZE, PARAMS.topk))


def test_an_update_in_another_rounds_subspace_is_rejected() -> None:
    with pytest.raises(UpdateRejected) as rejected:
        _open(_sealed(trained_in=2))

    assert rejected.value.reason == "malformed"
    assert "outside round 3's subspace" in rejected.value.detail
