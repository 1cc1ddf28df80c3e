"""Fuzz tests of ``common.sealing``: random, forged and mutated updates raise SealError only."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.crypto.hpke import ENC_LEN, SUITE_AEAD_ID, SUITE_KDF_ID, SUITE_KEM_ID, TAG_LEN
from common.sealed_header import FORMAT_VERSION, MAGIC, REASONS, SealError
from common.sealing import open_update
from tests.common.sealing_support import CTX, TOPKS, fuzz_world

RANDOM_BUDGET, FORGED_BUDGET, MUTATED_BUDGET = 3000, 3000, 5000
FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _must_refuse(blob: bytes) -> None:
    """Feed ``blob`` to open_update: it must raise SealError, and nothing else."""
    world = fuzz_world()
    try:
        open_update(blob, keypair=world.keypair, expected=CTX, max_payload=4096)
    except SealError as err:
        assert err.reason in REASONS
        return
    raise AssertionError(f"accepted a forged update: {blob.hex()}")


def _run_counted(budget: int, strategy: st.SearchStrategy[Any], body: Callable[[Any], None]) -> int:
    calls = 0

    @settings(FUZZ, max_examples=budget)
    @given(strategy)
    def run(example: Any) -> None:
        nonlocal calls
        calls += 1
        body(example)

    run()
    return calls


def test_fuzz_random_bytes_are_refused() -> None:
    blobs = st.one_of(
        st.binary(max_size=400),
        st.binary(max_size=200).map(lambda b: MAGIC + b),
        st.binary(max_size=200).map(lambda b: MAGIC + bytes([FORMAT_VERSION]) + b),
    )
    calls = _run_counted(RANDOM_BUDGET, blobs, _must_refuse)
    assert calls >= 0.95 * RANDOM_BUDGET


@st.composite
def _forged_updates(draw: st.DrawFn) -> bytes:
    """Well-formed headers naming the expected context over random enc and ciphertext."""
    length = draw(st.integers(0, 128))
    header = struct.pack(
        ">4sBHHHdBIQIQI",
        MAGIC,
        FORMAT_VERSION,
        SUITE_KEM_ID,
        SUITE_KDF_ID,
        SUITE_AEAD_ID,
        draw(TOPKS),
        draw(st.integers(1, 32)),
        draw(st.integers(0, 2**32 - 1)),
        CTX.run_id,
        CTX.server_round,
        CTX.node_id,
        length,
    )
    body = draw(st.binary(min_size=ENC_LEN + length + TAG_LEN, max_size=ENC_LEN + length + TAG_LEN))
    return header + body


def test_fuzz_well_formed_forgeries_are_tamper() -> None:
    def check(blob: bytes) -> None:
        world = fuzz_world()
        with pytest.raises(SealError) as info:
            open_update(blob, keypair=world.keypair, expected=CTX, max_payload=4096)
        assert info.value.reason == "tamper"

    calls = _run_counted(FORGED_BUDGET, _forged_updates(), check)
    assert calls >= 0.95 * FORGED_BUDGET


def _mutate(blob: bytes, ops: list[tuple[str, int, int, bytes]]) -> bytes:
    out = bytearray(blob)
    for kind, pos, arg, data in ops:
        where = pos % (len(out) + 1)
        if kind == "xor" and out:
            out[where % len(out)] ^= arg or 1
        elif kind == "set" and out:
            out[where % len(out)] = arg
        elif kind == "insert":
            out[where:where] = data
        elif kind == "delete":
            del out[where : where + 1 + arg % 64]
        elif kind == "truncate":
            del out[where:]
        elif kind == "append":
            out += data
        elif kind == "duplicate":
            out[where:where] = out[where : where + 1 + arg % 64]
    return bytes(out)


MUTATIONS = st.tuples(
    st.integers(0, 2),  # which original
    st.lists(
        st.tuples(
            st.sampled_from(["xor", "set", "insert", "delete", "truncate", "append", "duplicate"]),
            st.integers(0, 10_000),
            st.integers(0, 255),
            st.binary(min_size=1, max_size=16),
        ),
        min_size=0,
        max_size=4,
    ),
)


def test_fuzz_mutated_updates_never_open() -> None:
    opened_identities = 0

    def check(example: tuple[int, list[tuple[str, int, int, bytes]]]) -> None:
        nonlocal opened_identities
        which, ops = example
        world = fuzz_world()
        original, payload = world.originals[which]
        mutated = _mutate(original, ops)
        if mutated == original:
            _, opened = open_update(mutated, keypair=world.keypair, expected=CTX, max_payload=4096)
            assert opened == payload
            opened_identities += 1
        else:
            _must_refuse(mutated)

    calls = _run_counted(MUTATED_BUDGET, MUTATIONS, check)
    assert calls >= 0.95 * MUTATED_BUDGET
    assert opened_identities >= 1  # the empty mutation list is always tried


def test_fuzz_budget_is_at_least_ten_thousand() -> None:
    assert 0.95 * (RANDOM_BUDGET + FORGED_BUDGET + MUTATED_BUDGET) >= 10_000
