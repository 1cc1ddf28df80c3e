"""Tests of ``common.sealed_header``: the ``info`` context, header round trips, checks, errors."""

from __future__ import annotations

import math
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.sealed_header import (
    INFO_LABEL,
    REASONS,
    CodecHeader,
    SealContext,
    SealError,
    read_header,
)
from common.sealing import open_update, seal_update
from tests.common.sealing_support import TOPKS, fuzz_world, h


def test_info_is_label_and_fixed_width_context() -> None:
    info = SealContext(run_id=1, server_round=2, node_id=3).info()
    assert info == INFO_LABEL + h("0000000000000001000000020000000000000003")
    assert INFO_LABEL == b"fedveil/update/v1"
    top = SealContext(run_id=2**64 - 1, server_round=2**32 - 1, node_id=2**64 - 1).info()
    assert top == INFO_LABEL + b"\xff" * 20


@settings(max_examples=300, deadline=None, database=None)
@given(
    a=st.tuples(st.integers(0, 2**64 - 1), st.integers(1, 2**32 - 1), st.integers(0, 2**64 - 1)),
    b=st.tuples(st.integers(0, 2**64 - 1), st.integers(1, 2**32 - 1), st.integers(0, 2**64 - 1)),
)
def test_info_is_injective(a: tuple[int, int, int], b: tuple[int, int, int]) -> None:
    assert (SealContext(*a).info() == SealContext(*b).info()) == (a == b)


@settings(max_examples=150, deadline=None, database=None)
@given(
    topk=TOPKS,
    bits=st.integers(1, 32),
    size=st.integers(0, 2**32 - 1),
    run_id=st.integers(0, 2**64 - 1),
    server_round=st.integers(1, 2**32 - 1),
    node_id=st.integers(0, 2**64 - 1),
    payload=st.binary(max_size=64),
)
def test_header_round_trip(
    topk: float,
    bits: int,
    size: int,
    run_id: int,
    server_round: int,
    node_id: int,
    payload: bytes,
) -> None:
    keypair = fuzz_world().keypair
    ctx = SealContext(run_id=run_id, server_round=server_round, node_id=node_id)
    codec = CodecHeader(topk=topk, bits=bits, size=size)
    blob = seal_update(payload, public_key=keypair.public_bytes, context=ctx, codec=codec)
    header = read_header(blob, max_payload=len(payload))
    assert header.codec == codec
    assert header.codec.topk == topk  # bit-exact: float64 on the wire
    assert header.context == ctx
    assert header.payload_len == len(payload)
    opened_header, opened = open_update(
        blob, keypair=keypair, expected=ctx, max_payload=len(payload)
    )
    assert (opened_header, opened) == (header, payload)


def test_invalid_parameters_are_refused_at_construction() -> None:
    for topk in (0.0, -0.0, -0.5, 1.0000000000000002, math.nan, math.inf, True, "0.5"):
        with pytest.raises(ValueError, match="topk"):
            CodecHeader(topk=topk, bits=8, size=10)  # type: ignore[arg-type]
    for bits in (0, 33, -1, 8.0, True):
        with pytest.raises(ValueError, match="bits"):
            CodecHeader(topk=0.5, bits=bits, size=10)  # type: ignore[arg-type]
    for size in (-1, 2**32, 1.5):
        with pytest.raises(ValueError, match="size"):
            CodecHeader(topk=0.5, bits=8, size=size)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="server_round"):
        SealContext(run_id=1, server_round=0, node_id=1)
    with pytest.raises(ValueError, match="server_round"):
        SealContext(run_id=1, server_round=2**32, node_id=1)
    with pytest.raises(ValueError, match="run_id"):
        SealContext(run_id=-1, server_round=1, node_id=1)
    with pytest.raises(ValueError, match="node_id"):
        SealContext(run_id=1, server_round=1, node_id=2**64)


def test_seal_error_shape() -> None:
    assert REASONS == ("malformed", "version", "oversize", "replay", "misroute", "tamper")
    err = SealError("replay", "sealed for\nround 3")
    assert err.reason == "replay"
    assert "\n" not in str(err)
    assert "replay" in str(err)
    again = pickle.loads(pickle.dumps(err))  # noqa: S301 - our own bytes
    assert (again.reason, str(again)) == (err.reason, str(err))
    with pytest.raises(ValueError, match="reason"):
        SealError("bogus")
