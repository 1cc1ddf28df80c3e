"""The 1-bit scaled-sign quantizer: payload, round trip, hostile headers, error feedback."""

from __future__ import annotations

import numpy as np
import pytest

from common.codec import (
    CHUNK,
    CodecError,
    CodecParams,
    ErrorFeedback,
    decode_update,
    encode_update,
)
from common.codec_quantize import sign_quantize
from common.config import ConfigError, FedveilConfig
from tests.common.codec_support import FLAG_ZSTD, HEADER, bitwise_equal, gaussian, pack, unpack

FLAG_SIGN = 0b1000
SIGN = CodecParams(topk=1.0, bits=1, quantizer="sign")
# The receiver does not know the sender's quantizer: it reads it from the payload.
RECEIVER = CodecParams(topk=1.0, bits=1)


def test_dense_sign_sends_each_chunks_mean_magnitude_with_the_sign() -> None:
    vector = gaussian(CHUNK + 100, seed=1)
    vector[5] = 0.0  # zero counts as positive

    encoded = encode_update(vector, SIGN, np.random.default_rng(0))

    chunks = [vector[:CHUNK], vector[CHUNK:]]
    scales = np.repeat([np.abs(c.astype(np.float64)).mean() for c in chunks], [CHUNK, 100])
    expected = np.where(vector >= 0, scales, -scales).astype(np.float32)
    np.testing.assert_allclose(encoded.decoded, expected, rtol=1e-6)
    fields, _ = unpack(encoded.payload)
    assert fields[2] & FLAG_SIGN and fields[3] == 1
    # Header, two float32 scales and one bit per coordinate (zstd cannot shrink random signs).
    assert len(encoded.payload) <= HEADER.size + 2 * 4 + -(-vector.size // 8)


@pytest.mark.parametrize(
    "params",
    [
        SIGN,
        CodecParams(topk=0.1, bits=1, quantizer="sign"),
        CodecParams(topk=0.25, bits=1, mask="random", quantizer="sign"),
    ],
)
def test_round_trip_gives_the_encoders_vector(params: CodecParams) -> None:
    vector = gaussian(10_000, seed=2)

    encoded = encode_update(vector, params, np.random.default_rng(3))
    receiver = CodecParams(topk=params.topk, bits=1)
    decoded = decode_update(encoded.payload, size=vector.size, params=receiver)

    assert bitwise_equal(decoded, encoded.decoded)
    sent = decoded != 0
    assert np.array_equal(np.sign(decoded[sent]), np.where(vector[sent] >= 0, 1.0, -1.0))


def test_sign_is_deterministic_and_does_not_draw_from_the_rng() -> None:
    vector = gaussian(1000, seed=4)
    rng = np.random.default_rng(5)

    first = encode_update(vector, SIGN, rng)
    state = rng.bit_generator.state
    second = encode_update(vector, SIGN, rng)

    assert first.payload == second.payload and rng.bit_generator.state == state


def test_auto_is_sign_at_one_bit_and_stochastic_above() -> None:
    assert RECEIVER.quantizer == "sign"
    assert CodecParams(topk=0.1, bits=2).quantizer == "stochastic"
    assert CodecParams(topk=1.0, bits=32, quantizer="auto").quantizer == "stochastic"


def test_stochastic_one_bit_payloads_have_no_sign_flag() -> None:
    params = CodecParams(topk=1.0, bits=1, quantizer="stochastic")
    encoded = encode_update(gaussian(1000), params, np.random.default_rng(0))

    fields, _ = unpack(encoded.payload)
    assert not fields[2] & FLAG_SIGN


def test_sign_needs_one_bit_and_a_known_quantizer() -> None:
    with pytest.raises(ValueError, match="`bits` must be 1"):
        CodecParams(topk=1.0, bits=8, quantizer="sign")
    with pytest.raises(ValueError, match="`quantizer` must be one of"):
        CodecParams(topk=1.0, bits=1, quantizer="signum")


def test_sign_flag_with_more_bits_or_unknown_flags_is_refused() -> None:
    two_bit = encode_update(gaussian(1000), CodecParams(1.0, 2), np.random.default_rng(0))
    fields, body = unpack(two_bit.payload)
    fields[2] |= FLAG_SIGN
    with pytest.raises(CodecError, match="must be 1"):
        decode_update(pack(fields, body), size=1000, params=CodecParams(1.0, 2))

    signed = encode_update(gaussian(1000), SIGN, np.random.default_rng(0))
    fields, body = unpack(signed.payload)
    assert decode_update(pack(fields, body), size=1000, params=RECEIVER) is not None
    for unknown in (0x10, 0x20, 0x40, 0x80):
        bad = list(fields)
        bad[2] |= unknown
        with pytest.raises(CodecError, match="unknown flags"):
            decode_update(pack(bad, body), size=1000, params=RECEIVER)


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_or_padded_sign_payloads_are_refused(compress: bool) -> None:
    signed = encode_update(gaussian(1001), SIGN, np.random.default_rng(0))
    fields, body = unpack(signed.payload)
    assert not fields[2] & FLAG_ZSTD
    cases = {
        "truncated": body[:-1],
        "trailing": body + b"\x00",
        # 1001 codes leave 7 padding bits in the last byte: they must be zero.
        "padding": body[:-1] + bytes([body[-1] | 0x80]),
        "negative scale": np.float32(-1.0).tobytes() + body[4:],
    }
    for name, bad in cases.items():
        with pytest.raises(CodecError):
            decode_update(pack(fields, bad, compress=compress), size=1001, params=RECEIVER)
        assert name


def test_error_feedback_with_sign_delivers_the_sum_of_the_inputs() -> None:
    # A fixed update sent round after round: what the server sums approaches what was meant,
    # because the residual (what sign did not send) stays bounded. Gaussian, like a DP-SGD
    # update (mostly noise); heavy tails slow this down (the scale is a mean magnitude).
    target = gaussian(3000, seed=6) * np.float32(0.01)
    feedback = ErrorFeedback()
    sent = np.zeros_like(target, dtype=np.float64)
    rounds = 200
    errors = []
    for t in range(1, rounds + 1):
        compensated = feedback.compensate(target)
        encoded = encode_update(compensated, SIGN, np.random.default_rng(t))
        feedback.update(compensated, encoded.decoded)
        sent += encoded.decoded
        errors.append(np.linalg.norm(sent - t * target) / np.linalg.norm(t * target))

    # Measured: 0.60 after 1 round, 0.24 after 10, 0.057 after 200 (about 1/sqrt(rounds)).
    assert errors[-1] < 0.1
    assert errors[-1] < errors[9] / 3
    residual = feedback.residual
    assert residual is not None
    assert np.allclose(sent + residual, rounds * target.astype(np.float64), atol=1e-3)


def test_without_error_feedback_sign_stays_biased() -> None:
    # The reason the quantizer needs error feedback: its error does not average out.
    target = gaussian(3000, seed=6) * np.float32(0.01)
    decoded = encode_update(target, SIGN, np.random.default_rng(0)).decoded

    assert np.linalg.norm(decoded - target) / np.linalg.norm(target) > 0.3


def test_sign_quantize_of_zeros_is_zero_scale() -> None:
    scales, codes = sign_quantize(np.zeros(10, dtype=np.float32))

    assert scales.tolist() == [0.0] and codes.tolist() == [1] * 10


def test_config_key_selects_the_quantizer_and_reaches_the_clients() -> None:
    config = FedveilConfig.from_flat({"codec.quantizer": "sign", "codec.bits": 1})

    assert config.to_client_flat()["codec.quantizer"] == "sign"
    with pytest.raises(ConfigError, match=r"`codec\.quantizer` = `sign`.*`codec\.bits` = 1"):
        FedveilConfig.from_flat({"codec.quantizer": "sign", "codec.bits": 8})
    with pytest.raises(ConfigError, match=r"codec\.quantizer"):
        FedveilConfig.from_flat({"codec.quantizer": "signum"})
