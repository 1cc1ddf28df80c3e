"""Embedding the watermark: a bounded fine-tune of the global model on its trigger set.

Full-batch SGD on the trigger set's cross-entropy, at most ``max_steps`` steps, stopping once
the trigger accuracy reaches the target. Each step takes the trigger loss at randomly perturbed
weights (a flat minimum, which a thief's fine-tuning moves less) and, given ``anchor`` images
(the server's root set, never client data), holds the model's outputs on them and on shifted
copies to what they were before the embedding (a label-free KL anchor).
Privacy: post-processing of the DP global model with the server's own data, so it costs no
privacy. Ordering contract: aggregate, then embed, then evaluate and save. The fine-tune runs
on the model's device; its random draws come from a CPU generator, so a key embeds the same
way on every device.
See docs/watermark.md for why each piece is there and what it measured.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from typing import Final

import torch
from torch import nn

from common.device import model_device
from server.watermark_detection import log_probs, trigger_accuracy, trigger_on
from server.watermark_key import WatermarkError
from server.watermark_trigger import TriggerSet

log = logging.getLogger(__name__)

MAX_STEPS: Final = 50
"""Embedding steps allowed after each aggregation."""
INITIAL_STEPS: Final = 300
"""Embedding steps allowed on the initial model, before round 1."""
TARGET_ACCURACY: Final = 0.9
EMBED_LR: Final = 0.01
FLATNESS: Final = 0.5
"""Weight noise the trigger loss is taken at, as a multiple of each tensor's mean magnitude."""
ANCHOR_WEIGHT: Final = 3.0
"""Weight of the KL anchor on the root set and its shifted copies, next to the trigger loss."""
ANCHOR_COPIES: Final = 8
"""Shifted copies of each anchor image (:func:`anchor_set`) in every embedding step."""


def embed_watermark(
    model: nn.Module,
    trigger: TriggerSet,
    *,
    max_steps: int = MAX_STEPS,
    target_accuracy: float = TARGET_ACCURACY,
    lr: float = EMBED_LR,
    anchor: torch.Tensor | None = None,
    flatness: float = FLATNESS,
    anchor_copies: int = ANCHOR_COPIES,
    seed: int = 0,
) -> float:
    """Fine-tune ``model`` in place on the trigger set; return its trigger accuracy after.

    Full-batch SGD (momentum 0.9) on the cross-entropy of the trigger set, at most
    ``max_steps`` steps, stopping as soon as the trigger accuracy reaches ``target_accuracy``
    (checked before each step, so an already watermarked model is left untouched). Two things
    make the mark outlast a thief's fine-tuning without costing the main task:

    - Each step takes the trigger loss at the weights perturbed by Gaussian noise of
      ``flatness`` times each tensor's mean magnitude and applies its gradient at the
      unperturbed weights, so the triggers are learnt where the loss is flat around the weights
      and a thief's changes to them move the triggers less.
    - With ``anchor`` (inputs ``(m, ...)``: the server's root set, never client data) each
      step also takes, at the unperturbed weights and weighted ``ANCHOR_WEIGHT``, the KL
      divergence of the model's outputs from its pre-embedding outputs on those images and
      ``anchor_copies`` shifted copies of them (:func:`anchor_set`), which holds the model to
      the function the clients trained on more of the input space than the images alone. No
      labels: the anchor keeps what the clients made and teaches nothing of the server's data,
      so the watermark's cost is not hidden by training on it.

    The noise and the shifts come from generators seeded by ``seed``: deterministic for a seed.

    Raises:
        WatermarkError: Out-of-domain ``max_steps``, ``target_accuracy``, ``lr``,
            ``flatness`` or ``anchor_copies``.

    """
    if type(max_steps) is not int or max_steps < 0:
        raise WatermarkError(f"`max_steps` must be an int >= 0, got {max_steps!r}")
    if not 0.0 < target_accuracy <= 1.0:
        raise WatermarkError(f"`target_accuracy` must be in (0, 1], got {target_accuracy!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise WatermarkError(f"`lr` must be a finite number > 0, got {lr!r}")
    if not (math.isfinite(flatness) and flatness >= 0):
        raise WatermarkError(f"`flatness` must be a finite number >= 0, got {flatness!r}")
    if type(anchor_copies) is not int or anchor_copies < 0:
        raise WatermarkError(f"`anchor_copies` must be an int >= 0, got {anchor_copies!r}")
    trigger = trigger_on(trigger, model_device(model))
    accuracy = trigger_accuracy(model, trigger)
    if accuracy >= target_accuracy or max_steps == 0:
        return accuracy
    was_training = model.training
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    held = None
    if anchor is not None:
        anchored = anchor_set(anchor.cpu(), anchor_copies, generator).to(model_device(model))
        held = anchored, log_probs(model, anchored)  # the images and their outputs to keep
    steps = 0
    while accuracy < target_accuracy and steps < max_steps:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with _perturbed(params, flatness, generator):
            torch.autograd.backward(
                nn.functional.cross_entropy(model(trigger.images), trigger.labels)
            )
        if held is not None:
            outputs = nn.functional.log_softmax(model(held[0]), dim=1)
            drift = nn.functional.kl_div(outputs, held[1], log_target=True, reduction="batchmean")
            torch.autograd.backward(ANCHOR_WEIGHT * drift)
        optimizer.step()
        steps += 1
        accuracy = trigger_accuracy(model, trigger)
    model.train(was_training)
    model.zero_grad(set_to_none=True)
    log.debug("watermark: %d embedding steps, trigger accuracy %.3f", steps, accuracy)
    return accuracy


def anchor_set(images: torch.Tensor, copies: int, generator: torch.Generator) -> torch.Tensor:
    """Return ``images`` ``(m, C, H, W)`` followed by ``copies`` shifted copies of them.

    Inputs that are not images (any shape but ``(m, C, H, W)``: rows of features, say) have no
    shift that keeps their meaning, so they come back alone, without copies.

    Each copy moves every image by an independent whole-pixel shift of up to ``max(1,
    round(H / 14))`` pixels (2 on MNIST, 1 on 8x8 digits) in each direction, filling the
    uncovered border with the image's own minimum (its background), so a digit shifted that far
    is still a digit the model should see as before. Result: ``((copies + 1) * m, C, H, W)``.
    """
    if images.ndim != 4:
        return images
    m, c, h, w = images.shape
    reach = max(1, round(h / 14))
    background = images.amin(dim=(1, 2, 3), keepdim=True)
    padded = background.expand(m, c, h + 2 * reach, w + 2 * reach).clone()
    padded[:, :, reach : reach + h, reach : reach + w] = images
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    flat = padded.flatten(2)
    shifted = [images]
    for _ in range(copies):
        dy = torch.randint(0, 2 * reach + 1, (m, 1, 1), generator=generator)
        dx = torch.randint(0, 2 * reach + 1, (m, 1, 1), generator=generator)
        index = (rows + dy) * (w + 2 * reach) + (cols + dx)  # (m, h, w) into the padded plane
        shifted.append(
            flat.gather(2, index.flatten(1).unsqueeze(1).expand(m, c, h * w)).view(m, c, h, w)
        )
    return torch.cat(shifted)


@contextlib.contextmanager
def _perturbed(
    params: list[nn.Parameter], flatness: float, generator: torch.Generator
) -> Iterator[None]:
    """Add ``N(0, (flatness * mean|p|)^2)`` noise to each of ``params``; restore them exactly."""
    if flatness == 0:
        yield
        return
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params:
            scale = flatness * float(p.abs().mean())
            noise = torch.randn(p.shape, generator=generator, dtype=p.dtype)
            p.add_(noise.to(p.device) * scale)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, original in zip(params, saved, strict=True):
                p.copy_(original)
