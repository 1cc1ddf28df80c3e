"""The round's shared random subspace: the coordinates every client trains and sends.

With ``codec.mask = "subspace"`` each round trains only ``k = kept_count(size, codec.topk)``
coordinates of the flat model (``state_dict`` order), the same ones on every client: DP-SGD
clips each example's gradient inside them and adds noise only there (``client.trainer``), the
update is those ``k`` values with no index bytes (the codec's seeded mask), and the model's
change in a round lies in them, so the downlink can be as small (``server.strategy.downlink``).
The subspace is redrawn every round, so over the rounds every coordinate trains. Idea: training
in a random subspace (Li et al., "Measuring the Intrinsic Dimension of Objective Landscapes",
https://arxiv.org/abs/1804.08838), where DP noise lands only in the kept dimensions.

The seed is public on purpose: it is a hash of the run id and the round, which both ends know
before training. The mask is independent of every client's data, so choosing it costs no
privacy; being shared is what lets the server average, and send, only ``k`` numbers.
"""

from __future__ import annotations

import hashlib
from typing import Final

import numpy as np
import numpy.typing as npt

from common.codec_index import SEED_BYTES, IntArray, seeded_indices, seeded_mask
from common.codec_params import kept_count
from common.config import FedveilConfig

MODE: Final = "subspace"
"""The ``codec.mask`` value that turns the shared subspace on."""
_DOMAIN: Final = b"fedveil/subspace/v1"


def round_seed(run_id: int, server_round: int) -> bytes:
    """Return the 16-byte seed of round ``server_round``'s subspace in run ``run_id``."""
    if run_id < 0 or server_round < 1:
        raise ValueError(f"no subspace for run {run_id}, round {server_round}")
    material = _DOMAIN + run_id.to_bytes(8, "big") + server_round.to_bytes(8, "big")
    return hashlib.sha256(material).digest()[:SEED_BYTES]


def round_mask(run_id: int, server_round: int, size: int, fraction: float) -> npt.NDArray[np.bool_]:
    """Return the ``(size,)`` mask of round ``server_round``'s subspace (``fraction`` kept).

    Drawn once and shared by everyone in the process who asks for it that round (the trainer,
    the encoder, the opener, the decoder, the downlink, the auditor), so it is read-only.
    """
    return seeded_mask(round_seed(run_id, server_round), size, kept_count(size, fraction))


def round_indices(run_id: int, server_round: int, size: int, fraction: float) -> IntArray:
    """Return the increasing coordinates of :func:`round_mask`, read-only and shared alike."""
    return seeded_indices(round_seed(run_id, server_round), size, kept_count(size, fraction))


def fraction_of(config: FedveilConfig) -> float | None:
    """Return the share of coordinates a round trains under a subspace, else ``None``."""
    return config.codec_topk if config.codec_mask == MODE else None


def run_seed(config: FedveilConfig, run_id: int, server_round: int) -> bytes | None:
    """Return the round's seed if ``config`` trains in a subspace, else ``None``."""
    return None if fraction_of(config) is None else round_seed(run_id, server_round)


def run_mask(
    config: FedveilConfig, run_id: int, server_round: int, size: int
) -> npt.NDArray[np.bool_] | None:
    """Return the round's mask if ``config`` trains in a subspace, else ``None``."""
    fraction = fraction_of(config)
    return None if fraction is None else round_mask(run_id, server_round, size, fraction)
