"""Detecting the watermark: two exact tests against chance and their joint p-value.

The binomial test counts the triggers a model labels as the key says; the score test takes the
key labels' summed log-probability, whose null law is computed exactly (:func:`score_p_value`).
Both are exact because each key label is uniform and independent of its image, so a model made
without the key cannot favour them, whatever it does. The decision uses their Bonferroni joint
p-value, ``min(1, 2 * min(binomial_p, score_p))``: a model made without the key is detected
with probability below the threshold (``DETECTION_P`` by default). The guarantee assumes the
key stayed secret: a model trained with the key's trigger set is "made with the key".
The model runs where it is (``common.device.model_device``); inputs move there.
See docs/watermark.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from common.device import model_device
from server.watermark_key import WatermarkError
from server.watermark_trigger import TriggerSet

DETECTION_P: Final = 1e-6
"""A model is said to carry the watermark when the joint p-value is below this."""
SCORE_FLOOR: Final = 20.0
"""The score test counts a log-probability below ``-SCORE_FLOOR`` (nats) as ``-SCORE_FLOOR``."""
SCORE_STEP: Final = 0.1
"""The score test's resolution (nats): each score is a whole multiple of it."""


@dataclass(frozen=True)
class WatermarkVerdict:
    """Trigger-set accuracy, the two tests' p-values, their joint p-value, and the decision.

    ``binomial_p`` tests the count of triggers labelled as the key says, ``score_p`` the key
    labels' summed log-probability (:func:`score_p_value`); ``p_value`` is their Bonferroni
    joint p-value ``min(1, 2 * min(binomial_p, score_p))``, so deciding on it keeps the
    false-detection rate at most the threshold; ``detected`` is ``p_value < threshold``.
    """

    accuracy: float
    p_value: float
    detected: bool
    correct: int
    total: int
    binomial_p: float
    score_p: float


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode and restore its previous mode after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def trigger_on(trigger: TriggerSet, device: torch.device) -> TriggerSet:
    """Return ``trigger`` with its tensors on ``device`` (``trigger`` itself if already there)."""
    if trigger.labels.device == device:
        return trigger
    return dataclasses.replace(
        trigger, images=trigger.images.to(device), labels=trigger.labels.to(device)
    )


@torch.no_grad()
def log_probs(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Return ``model``'s log-softmax on ``images``, in eval mode, on the model's device."""
    with eval_mode(model):
        return nn.functional.log_softmax(model(images.to(model_device(model))), dim=1)


@torch.no_grad()
def trigger_accuracy(model: nn.Module, trigger: TriggerSet) -> float:
    """Return the fraction of trigger images ``model`` labels as the key says."""
    trigger = trigger_on(trigger, model_device(model))
    with eval_mode(model):
        correct = int((model(trigger.images).argmax(dim=1) == trigger.labels).sum())
    return correct / len(trigger)


def binomial_p_value(correct: int, total: int, chance: float) -> float:
    """Return ``P[X >= correct]`` for ``X ~ Binomial(total, chance)``: one-sided and exact.

    The tail is summed in log space (``lgamma``), so p-values down to ~1e-300 are exact to
    float precision; equal to ``scipy.stats.binomtest(..., alternative="greater")``.
    """
    if type(total) is not int or type(correct) is not int or total < 1 or not 0 <= correct <= total:
        raise WatermarkError(f"no binomial test for {correct!r} of {total!r}")
    if not 0.0 < chance < 1.0:
        raise WatermarkError(f"`chance` must be in (0, 1), got {chance!r}")
    log_p, log_q = math.log(chance), math.log1p(-chance)
    log_n = math.lgamma(total + 1)
    terms = [
        log_n - math.lgamma(i + 1) - math.lgamma(total - i + 1) + i * log_p + (total - i) * log_q
        for i in range(correct, total + 1)
    ]
    peak = max(terms)
    return min(1.0, math.exp(peak) * math.fsum(math.exp(t - peak) for t in terms))


def score_p_value(log_probs: npt.NDArray[np.float64], labels: npt.NDArray[np.int64]) -> float:
    """Return the exact one-sided p-value of the key labels' summed log-probability.

    ``log_probs`` ``(n, C)`` is the model's log-softmax on each trigger image, ``labels``
    ``(n,)`` the key's labels. The statistic is ``S = sum_i s[i, labels[i]]`` with
    ``s = round(max(log_probs, -SCORE_FLOOR) / SCORE_STEP)`` (non-finite entries count as the
    floor). A model made without the key fixes ``s``, and each label is uniform on the C classes
    and independent of it, so under that null ``S`` is a sum of independent uniform draws, one
    from each row of ``s``: its law is their convolution, computed here in log space, so the
    p-value is exact to float precision down to ~1e-300. Why this statistic: against "the key
    labels follow the model's softmax at some temperature" the likelihood ratio grows with the
    summed log-probability, whatever the temperature, so a model that still leans towards the
    key labels is caught even where few of them are its first choice, which is all the binomial
    count sees.

    Raises:
        WatermarkError: shapes that do not match, or a label outside ``[0, C)``.

    """
    if log_probs.ndim != 2 or labels.shape != (log_probs.shape[0],) or log_probs.shape[0] < 1:
        raise WatermarkError(
            f"no score test for outputs {log_probs.shape} and labels {labels.shape}"
        )
    classes = log_probs.shape[1]
    if classes < 2 or labels.min() < 0 or labels.max() >= classes:
        raise WatermarkError(f"labels must be in [0, {classes}) with at least 2 classes")
    floored = np.where(np.isfinite(log_probs), np.maximum(log_probs, -SCORE_FLOOR), -SCORE_FLOOR)
    scores = np.rint(floored / SCORE_STEP).astype(np.int64)
    scores -= scores.min(axis=1, keepdims=True)  # shifts S by a constant: the test is unchanged
    observed = int(scores[np.arange(scores.shape[0]), labels].sum())
    log_law = np.zeros(1)  # log P[S = s] for s = 0, 1, ... over the rows so far
    for row in scores:
        values, counts = np.unique(row, return_counts=True)
        grown = np.full(log_law.size + int(values[-1]), -np.inf)
        for value, count in zip(values.tolist(), counts.tolist(), strict=True):
            segment = grown[value : value + log_law.size]
            np.logaddexp(segment, log_law + math.log(count / classes), out=segment)
        log_law = grown
    tail = log_law[observed:]
    peak = float(tail.max())
    return min(1.0, math.exp(peak) * math.fsum(np.exp(tail - peak).tolist()))


def verify_watermark(
    model: nn.Module, trigger: TriggerSet, *, threshold: float = DETECTION_P
) -> WatermarkVerdict:
    """Test ``model`` for the watermark of ``trigger``: detected iff the p-value < ``threshold``."""
    if not 0.0 < threshold < 1.0:
        raise WatermarkError(f"`threshold` must be in (0, 1), got {threshold!r}")
    outputs = log_probs(model, trigger.images).cpu()
    labels = trigger.labels.cpu().numpy()
    correct = int((outputs.argmax(dim=1).numpy() == labels).sum())
    binomial_p = binomial_p_value(correct, len(trigger), 1.0 / trigger.num_classes)
    score_p = score_p_value(outputs.double().numpy(), labels)
    p_value = min(1.0, 2.0 * min(binomial_p, score_p))
    return WatermarkVerdict(
        accuracy=correct / len(trigger),
        p_value=p_value,
        detected=p_value < threshold,
        correct=correct,
        total=len(trigger),
        binomial_p=binomial_p,
        score_p=score_p,
    )
