from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.codec_params import MAX_SIZE, CodecParams, dense_nbytes, kept_count
from tests.common.codec_support import ALL_BITS

# ------------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("topk", [0.0, -0.1, 1.5, 1.0000001, math.nan, math.inf, True, "0.5"])
def test_params_reject_bad_topk(topk: Any) -> None:
    with pytest.raises(ValueError, match="`topk`"):
        CodecParams(topk=topk, bits=8)


@pytest.mark.parametrize("bits", [0, 9, 12, 15, 17, 31, 33, -1, 8.0, True])
def test_params_reject_bad_bits(bits: Any) -> None:
    with pytest.raises(ValueError, match=r"`bits` must be 1-8, 16 or 32, got"):
        CodecParams(topk=0.5, bits=bits)


def test_params_error_message_names_value() -> None:
    with pytest.raises(ValueError, match=r"^`bits` must be 1-8, 16 or 32, got 12$"):
        CodecParams(topk=0.5, bits=12)


@pytest.mark.parametrize("bits", ALL_BITS)
def test_params_accept_valid(bits: int) -> None:
    assert CodecParams(topk=1, bits=bits).bits == bits
    assert CodecParams(topk=1e-9, bits=bits).topk == 1e-9


def test_params_accept_numpy_scalars_and_store_python_numbers() -> None:
    params = CodecParams(topk=np.float32(0.5), bits=np.int64(4))
    assert type(params.topk) is float
    assert type(params.bits) is int
    assert params == CodecParams(0.5, 4)


@pytest.mark.parametrize(
    ("size", "topk", "k"),
    [(30, 0.1, 3), (1000, 0.001, 1), (10, 0.01, 1), (7, 1.0, 7), (3, 0.5, 2), (1, 1e-9, 1),
     (1_000_000, 0.01, 10_000), (1001, 0.01, 11), (100, 0.07, 7), (10, 0.3, 3)],
)  # fmt: skip
def test_kept_count_examples(size: int, topk: float, k: int) -> None:
    assert kept_count(size, topk) == k


@given(size=st.integers(1, MAX_SIZE), permille=st.integers(1, 1000))
@settings(max_examples=300, database=None)
def test_kept_count_matches_exact_rational_ceiling(size: int, permille: int) -> None:
    # topk = permille/1000 is not exact in binary; k must still be the exact rational ceiling.
    assert kept_count(size, permille / 1000) == max(1, -(-permille * size // 1000))


@pytest.mark.parametrize(("size", "topk"), [(0, 0.5), (-1, 0.5), (MAX_SIZE + 1, 0.5), (10, 0.0)])
def test_kept_count_rejects_bad_arguments(size: int, topk: float) -> None:
    with pytest.raises(ValueError):
        kept_count(size, topk)


def test_dense_nbytes() -> None:
    assert dense_nbytes(0) == 0
    assert dense_nbytes(1_000_000) == 4_000_000
    with pytest.raises(ValueError):
        dense_nbytes(-1)


def test_params_reject_bad_mask() -> None:
    for mask in ("top-k", "", None, 1):
        with pytest.raises(ValueError, match="`mask`"):
            CodecParams(0.1, 8, mask)  # type: ignore[arg-type]
