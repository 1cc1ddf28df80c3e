"""The server's ownership watermark: a secret trigger set (WAFFLE, Tekgul et al. 2021).

A 32-byte key (``watermark.key``, mode 0600) regenerates a trigger set of random patterns with
uniformly random labels. The server embeds it into the initial model before round 1 and again
after each aggregation (a bounded fine-tune, :mod:`server.watermark_embedding`); ``fedveil
watermark verify`` tests a model file with two exact tests against chance and decides on their
joint p-value (:mod:`server.watermark_detection`). Ordering contract: aggregate, then embed,
then evaluate and save. Privacy: post-processing of the DP model with the server's own data
(key, root set): it costs no privacy and changes nothing in the ledger. Caveat: the
false-detection bound holds only while the key stays secret.
Design, measurements and what was tried: docs/watermark.md.

This module is the round loop's handle (:class:`Watermarker`) and re-exports the pieces.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

import torch
from torch import nn

from server.watermark_detection import (
    DETECTION_P,
    SCORE_FLOOR,
    SCORE_STEP,
    WatermarkVerdict,
    binomial_p_value,
    score_p_value,
    trigger_accuracy,
    verify_watermark,
)
from server.watermark_embedding import (
    ANCHOR_COPIES,
    ANCHOR_WEIGHT,
    EMBED_LR,
    FLATNESS,
    INITIAL_STEPS,
    MAX_STEPS,
    TARGET_ACCURACY,
    anchor_set,
    embed_watermark,
)
from server.watermark_key import (
    KEY_BYTES,
    KEY_FILE,
    WatermarkError,
    generate_key,
    new_key,
    read_key,
    write_key,
)
from server.watermark_model_file import (
    INPUT_SHAPES,
    MAX_CLASSES,
    identify_model,
    load_state,
    state_of,
    verify_model_file,
)
from server.watermark_trigger import PATTERN_AMPLITUDE, TRIGGER_SIZE, TriggerSet

__all__ = [
    "ANCHOR_COPIES",
    "ANCHOR_WEIGHT",
    "DETECTION_P",
    "EMBED_LR",
    "FLATNESS",
    "INITIAL_STEPS",
    "INPUT_SHAPES",
    "KEY_BYTES",
    "KEY_FILE",
    "MAX_CLASSES",
    "MAX_STEPS",
    "PATTERN_AMPLITUDE",
    "SCORE_FLOOR",
    "SCORE_STEP",
    "TARGET_ACCURACY",
    "TRIGGER_SIZE",
    "EmbedBudget",
    "TriggerSet",
    "WatermarkError",
    "WatermarkVerdict",
    "Watermarker",
    "anchor_set",
    "binomial_p_value",
    "embed_watermark",
    "generate_key",
    "identify_model",
    "load_state",
    "new_key",
    "read_key",
    "score_p_value",
    "state_of",
    "trigger_accuracy",
    "verify_model_file",
    "verify_watermark",
    "write_key",
]

_EMBEDDING_DOMAIN: Final = b"fedveil/watermark/embedding/v1"


@dataclass(frozen=True)
class EmbedBudget:
    """How hard the server embeds: steps on the initial model and per round, target, lr, noise."""

    initial_steps: int = INITIAL_STEPS
    max_steps: int = MAX_STEPS
    target_accuracy: float = TARGET_ACCURACY
    lr: float = EMBED_LR
    flatness: float = FLATNESS


class Watermarker:
    """The round loop's handle on the watermark: one key, its trigger set, the embedding budget.

    Use: ``Watermarker(new_key(run_dir / KEY_FILE), image_shape, num_classes)`` for a new run
    (``read_key`` instead of ``new_key`` to resume); ``embed_initial(model)`` once on the initial
    global model before round 1 (WAFFLE's pre-training on the trigger set, so the clients learn
    the task on top of it rather than the server forcing it into a trained model); then, each
    round, after aggregation and before evaluation, ``embed(model, server_round)``, whose return
    value is the round's ``watermark_accuracy``. Each embedding draws its weight noise and shifts
    from a generator seeded by the key and the round, so a resumed run embeds as the
    uninterrupted one would have.
    """

    def __init__(
        self,
        key: bytes,
        image_shape: tuple[int, ...],
        num_classes: int,
        budget: EmbedBudget | None = None,
        *,
        anchor: torch.Tensor | None = None,
    ) -> None:
        self.trigger = TriggerSet.from_key(key, image_shape, num_classes)
        self._key = key
        self.budget = budget or EmbedBudget()
        self.anchor = anchor

    def embed_initial(self, model: nn.Module) -> float:
        """Embed into the initial model (``initial_steps``); return its trigger accuracy."""
        return self._embed(model, self.budget.initial_steps, 0)

    def embed(self, model: nn.Module, server_round: int) -> float:
        """Re-embed after round ``server_round``'s aggregation; return the trigger accuracy."""
        return self._embed(model, self.budget.max_steps, server_round)

    def _embed(self, model: nn.Module, steps: int, server_round: int) -> float:
        return embed_watermark(
            model,
            self.trigger,
            max_steps=steps,
            target_accuracy=self.budget.target_accuracy,
            lr=self.budget.lr,
            anchor=self.anchor,
            flatness=self.budget.flatness,
            seed=_embedding_seed(self._key, server_round),
        )

    def verify(self, model: nn.Module, *, threshold: float = DETECTION_P) -> WatermarkVerdict:
        """Test ``model`` for this watermark."""
        return verify_watermark(model, self.trigger, threshold=threshold)


def _embedding_seed(key: bytes, server_round: int) -> int:
    """Seed of round ``server_round``'s embedding noise and shifts: a hash of key and round."""
    digest = hashlib.sha256(_EMBEDDING_DOMAIN + key + server_round.to_bytes(8, "big")).digest()
    return int.from_bytes(digest[:8], "big")
