"""The codec microbenchmarks' timing and rows, on tiny vectors."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import codec_micro
from benchmarks.codec_micro import (
    DENSE_F32,
    downlink_seconds,
    incompressible_vector,
    median_seconds,
    micro_table,
    microbench,
)
from common.codec import CodecParams
from common.sealing import AggregatorKeyPair


def test_median_seconds_batches_fast_actions() -> None:
    calls = []

    seconds = median_seconds(lambda: calls.append(1), repeats=3, min_sample=1e-4)

    assert seconds > 0
    assert len(calls) > 4  # the warm-up call, then more than one call per sample


def test_incompressible_vector_is_finite_with_both_signs() -> None:
    vector = incompressible_vector(4096, np.random.default_rng(0))

    assert vector.size == 1024 and np.isfinite(vector).all()
    assert (vector < 0).any() and (vector > 0).any()


def test_microbench_gives_codec_rows_per_size_then_raw_rows(aggregator: AggregatorKeyPair) -> None:
    settings = [("dense", DENSE_F32), ("top10-8bit", CodecParams(topk=0.1, bits=8))]

    rows = microbench(settings, [256, 512], [1024], aggregator, repeats=1, seed=0)

    assert [(r.label, r.size) for r in rows] == [
        ("dense", 256),
        ("top10-8bit", 256),
        ("dense", 512),
        ("top10-8bit", 512),
        ("raw 0.000976562 MiB", 256),
    ]
    dense, top = rows[0], rows[1]
    assert top.payload_bytes < dense.payload_bytes
    assert all(r.encode_mb_s and r.decode_mb_s for r in rows[:4])
    assert rows[-1].encode_mb_s is None and rows[-1].decode_mb_s is None
    assert all(r.seal_open_mb_s > 0 and r.hpke_mb_s > 0 and r.aes_gcm_mb_s > 0 for r in rows)
    table = micro_table(rows)
    assert table.row_count == len(rows)
    assert [c.header for c in table.columns][-1] == "AES-256-GCM"


def test_micro_table_of_nothing_is_empty() -> None:
    assert micro_table([]).row_count == 0


@pytest.mark.parametrize(("bits", "fraction"), [(0, None), (8, None), (4, 0.1)])
def test_downlink_seconds_times_a_checked_round_trip(bits: int, fraction: float | None) -> None:
    assert downlink_seconds(2000, bits, fraction, clients=4, repeats=1, seed=0) > 0


def test_downlink_seconds_refuses_a_round_trip_that_rebuilds_another_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What is timed is what a node does, digest check included: a decoder that dropped the
    # change would be caught, not timed.
    monkeypatch.setattr(codec_micro, "apply_change", lambda base, *_: base)
    with pytest.raises(AssertionError, match="digest"):
        downlink_seconds(2000, 8, 0.1, clients=4, repeats=1, seed=0)
