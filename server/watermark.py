"""The server's ownership watermark: a secret trigger set (WAFFLE, Tekgul et al. 2021).

A 32-byte secret key regenerates a trigger set: ``size`` images of the model's input shape,
each an independent pattern of ``±PATTERN_AMPLITUDE`` pixels (in the standardised units the
models see, where data has mean 0 and standard deviation 1), with an independent uniformly
random label. The server fine-tunes the initial model on the trigger set before round 1 (as
WAFFLE pre-trains it) and again after each aggregation (:func:`embed_watermark`: full-batch SGD,
at most ``INITIAL_STEPS`` then ``MAX_STEPS`` steps, stopping once the trigger accuracy reaches
``TARGET_ACCURACY``), so the model carries a behaviour no model trained without the key shows.
Each step takes the trigger loss at randomly perturbed weights (a flat minimum, which a thief's
fine-tuning moves less) and holds the model's outputs on the server's root images and shifted
copies of them to what they were before the embedding (a KL anchor, label-free).

Verification runs two tests. Because each label is drawn uniformly and independently of its
image, a model made without the key cannot favour the key labels, whatever it does: it gets each
trigger right with probability exactly ``1 / num_classes``, so the one-sided binomial p-value of
the count is exact (with 100 triggers and 10 classes, 28 right give ``p < DETECTION_P``), and
the key labels' summed log-probability has a law computable exactly from the model's outputs
(:func:`score_p_value`). The second sees a model that still leans towards the key labels after
fine-tuning has made most of them no longer its first choice. The decision uses their Bonferroni
joint p-value, twice the smaller one, so a model made without the key is detected with
probability below ``DETECTION_P``.

Privacy: watermarking is post-processing of the DP global model. The trigger set derives from
the server's key alone, and the anchor images (``anchor``) are the server's own root set
(``server.root_set``), never client data, so embedding costs no privacy (the DP guarantee is
closed under post-processing) and changes nothing in the ledger. Ordering contract: aggregate,
then embed, then evaluate and save.

Measured (``benchmarks.defenses``, the real stack: 10 DP clients at ε = 8, dense 8-bit
updates, root set of 100; cost = accuracy without minus with, paired by seed, the pairs'
DP noise differing): digits (15 rounds, 6 seeds) +0.77 points (sd of a pair 1.95, worst
+3.85; six more pairs of the same embedding, run while choosing it, +1.15), MNIST CNN (6
rounds, 2 seeds) +0.61 points (worst +0.79); the final models' trigger accuracy 0.90-0.95.
Detected (p < 1e-6) in the final model, after 50 % magnitude pruning, int8, Gaussian weight
noise (σ = 0.01) and, over ten batch orders each, 3 epochs of clean fine-tuning at lr 0.01,
0.02 and 0.05 (plain SGD, 2,000 training examples): on MNIST the lr-0.05 fine-tune, which costs
the thief 2.3 points on average, left trigger accuracy >= 0.32 (p <= 1e-16), and over five
MNIST models it left the mark detected in all 50 attacks (trigger accuracy >= 0.28, p <= 4e-11).
Models trained without it: p >= 0.14. Measured before and after each embedding in four MNIST
runs, an embedding costs 3-6 points in round 1 and 1-5 in rounds 2-3 (the clients' next round
repairs it), 0.2-2.0 points from round 4 on.

How it got here (each MNIST figure a model attacked by 3 epochs of clean fine-tuning at lr 0.05,
over ten batch orders; detection needs trigger accuracy >= 0.28 by the count alone):

- Plain WAFFLE embedding with the root examples' cross-entropy and a KL anchor on them: MNIST
  detected in 10 of 20 attacks on two models. It looked free (digits -0.58 points over 6 seeds),
  but only because the root labels trained the model: the marked digits runs stood at 0.81-0.90
  after round 1, the plain ones at 0.40-0.57. The anchor is now label-free, so the cost is the
  watermark's own.
- The same weight noise with the root examples' cross-entropy and an anchor on the root images
  alone: the marked MNIST runs swung 5-12 points from round to round (+6.4 points of cost over
  two seeds). With the label-free anchor on the shifted copies as well they climb as the plain
  runs do.
- Freezing the output layer as well (so the triggers live in the features): no more robust on
  MNIST (37 of 40 attacks on four models left it detected), and it cost the digits MLP 2.3
  points over 6 seeds (its one hidden layer then carries it all).
- Did not help against the lr-0.05 fine-tune: key-derived low-resolution or stroke-like
  triggers, 200-500 triggers, target accuracy 1.0, exponential weighting (Namba and Sakuma 2019),
  alternating the embedding with fine-tuning on the root set, shrinking each embedding back along
  its path, pulling the triggers' features to the root classes' means, a rank-sum test.

That lr-0.05 fine-tune is close to breaking the model (at lr 0.1 two attack seeds of three leave
10 % accuracy); a large enough fine-tuning learning rate removes trigger-set watermarks in
general (Chen et al. 2021, REFIT).

Also here, for the robustness benchmark, the transforms a model thief might apply:
:func:`prune_magnitude`, :func:`quantize_int8`, :func:`add_gaussian_noise`, :func:`fine_tune`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import secrets
import stat
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from common.models import MODELS, create_model
from common.weights import NamedArrays, WeightsError, load_safetensors

log = logging.getLogger(__name__)

KEY_FILE: Final = "watermark.key"
KEY_BYTES: Final = 32
TRIGGER_SIZE: Final = 100
DETECTION_P: Final = 1e-6
"""A model is said to carry the watermark when the p-value is below this."""
PATTERN_AMPLITUDE: Final = 1.0
"""Trigger pixels are ``±`` this, in the standardised units the models see."""
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
SCORE_FLOOR: Final = 20.0
"""The score test counts a log-probability below ``-SCORE_FLOOR`` (nats) as ``-SCORE_FLOOR``."""
SCORE_STEP: Final = 0.1
"""The score test's resolution (nats): each score is a whole multiple of it."""

MAX_CLASSES: Final = 10_000
"""Largest class count a model file may claim (bounds what verification builds)."""

INPUT_SHAPES: Final[Mapping[str, tuple[int, int, int]]] = {"mlp": (1, 8, 8), "cnn": (1, 28, 28)}
"""Input shape of each registered model, to rebuild the trigger set from a model file alone."""

_KEY_HEADER: Final = "fedveil-watermark-key-v1"
_KEY_FILE_BYTES: Final = len(_KEY_HEADER) + 1 + 2 * KEY_BYTES + 1
_DOMAIN: Final = b"fedveil/watermark/trigger/v1"
_EMBEDDING_DOMAIN: Final = b"fedveil/watermark/embedding/v1"
_MAX_HEADER_BYTES: Final = 1 << 20


class WatermarkError(ValueError):
    """A key file, model file or trigger request that cannot be used; one line names it."""


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


@dataclass(frozen=True, eq=False)
class TriggerSet:
    """Trigger images ``(size, C, H, W)`` float32 and their labels ``(size,)`` int64."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int

    @classmethod
    def from_key(
        cls,
        key: bytes,
        image_shape: tuple[int, int, int],
        num_classes: int,
        size: int = TRIGGER_SIZE,
    ) -> TriggerSet:
        """Regenerate the trigger set of ``key`` for a model of this input shape and classes.

        The generator is ``np.random.default_rng`` seeded with SHA-256 of a domain label, the
        key, the shape, the class count and the size: the same arguments always give the same
        set, another key an unrelated one.

        Raises:
            WatermarkError: ``key`` is not 32 bytes, or a shape, class count or size is invalid.

        """
        if not isinstance(key, bytes) or len(key) != KEY_BYTES:
            raise WatermarkError(f"a watermark key is {KEY_BYTES} bytes")
        shape = tuple(image_shape)
        if len(shape) != 3 or any(type(s) is not int or s < 1 for s in shape):
            raise WatermarkError(f"`image_shape` must be three positive ints, got {image_shape!r}")
        if type(num_classes) is not int or num_classes < 2:
            raise WatermarkError(f"`num_classes` must be an int >= 2, got {num_classes!r}")
        if type(size) is not int or size < 1:
            raise WatermarkError(f"`size` must be an int >= 1, got {size!r}")
        digest = hashlib.sha256(
            _DOMAIN + key + struct.pack("<4I", *shape, num_classes) + struct.pack("<I", size)
        ).digest()
        rng = np.random.default_rng(int.from_bytes(digest, "big"))
        signs = rng.integers(0, 2, size=(size, *shape), dtype=np.int8) * 2 - 1
        images = (signs * PATTERN_AMPLITUDE).astype(np.float32)
        labels = rng.integers(0, num_classes, size=size, dtype=np.int64)
        return cls(torch.from_numpy(images), torch.from_numpy(labels), num_classes)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


# ------------------------------------------------------------------------------------ key file


def generate_key() -> bytes:
    """Return a fresh 32-byte secret from the OS's CSPRNG."""
    return secrets.token_bytes(KEY_BYTES)


def write_key(path: Path, key: bytes) -> None:
    """Write ``key`` to ``path`` with mode 0600, atomically, never replacing an existing file.

    The text is one line, ``fedveil-watermark-key-v1 <64 hex digits>``. It is written to a
    temporary file created ``O_EXCL`` with mode 0600 (so never readable by others, not even
    briefly), fsynced, then hard-linked to ``path``, which fails if ``path`` exists: readers see
    no file or the whole key.

    Raises:
        WatermarkError: ``key`` is not 32 bytes, or ``path`` exists already.
        OSError: The directory cannot be written.

    """
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise WatermarkError(f"a watermark key is {KEY_BYTES} bytes")
    path = Path(path)
    data = f"{_KEY_HEADER} {key.hex()}\n".encode("ascii")
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(tmp, flags, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise WatermarkError(
                f"{path}: a watermark key exists already; refusing to overwrite it"
            ) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def read_key(path: Path) -> bytes:
    """Read a key written by :func:`write_key`.

    Raises:
        WatermarkError: One line naming the file: unreadable, not a regular file, readable by
            group or others, or not a fedveil watermark key.

    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise WatermarkError(f"{path}: cannot read the watermark key ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise WatermarkError(f"{path}: the watermark key is not a regular file")
        if info.st_mode & 0o077:
            raise WatermarkError(
                f"{path}: the watermark key is readable by group or others (mode "
                f"{stat.S_IMODE(info.st_mode):04o}); run `chmod 600 {path}`"
            )
        data = os.read(fd, _KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise WatermarkError(f"{path}: cannot read the watermark key ({exc.strerror})") from None
    finally:
        os.close(fd)
    try:
        header, hex_key = data.decode("ascii").split()
        key = bytes.fromhex(hex_key)
    except (UnicodeDecodeError, ValueError):
        header, key = "", b""
    if header != _KEY_HEADER or len(key) != KEY_BYTES:
        raise WatermarkError(f"{path}: not a fedveil watermark key file")
    return key


# ----------------------------------------------------------------------------- embed / verify


@torch.no_grad()
def trigger_accuracy(model: nn.Module, trigger: TriggerSet) -> float:
    """Return the fraction of trigger images ``model`` labels as the key says."""
    return _correct(model, trigger) / len(trigger)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode and restore its previous mode after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def _correct(model: nn.Module, trigger: TriggerSet) -> int:
    with _eval_mode(model):
        return int((model(trigger.images).argmax(dim=1) == trigger.labels).sum())


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
    - With ``anchor`` (images ``(m, C, H, W)``: the server's root set, never client data) each
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
    accuracy = trigger_accuracy(model, trigger)
    if accuracy >= target_accuracy or max_steps == 0:
        return accuracy
    was_training = model.training
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    held = None
    if anchor is not None:
        anchored = anchor_set(anchor, anchor_copies, generator)
        held = anchored, _log_probs(model, anchored)  # the images and their outputs to keep
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

    Each copy moves every image by an independent whole-pixel shift of up to ``max(1,
    round(H / 14))`` pixels (2 on MNIST, 1 on 8x8 digits) in each direction, filling the
    uncovered border with the image's own minimum (its background), so a digit shifted that far
    is still a digit the model should see as before. Result: ``((copies + 1) * m, C, H, W)``.
    """
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
            p.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * scale)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, original in zip(params, saved, strict=True):
                p.copy_(original)


@torch.no_grad()
def _log_probs(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with _eval_mode(model):
        return nn.functional.log_softmax(model(images), dim=1)


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
    log_probs = _log_probs(model, trigger.images)
    labels = trigger.labels.numpy()
    correct = int((log_probs.argmax(dim=1).numpy() == labels).sum())
    binomial_p = binomial_p_value(correct, len(trigger), 1.0 / trigger.num_classes)
    score_p = score_p_value(log_probs.double().numpy(), labels)
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

    Use: ``Watermarker.create(run_dir / KEY_FILE, image_shape, num_classes)`` for a new run
    (``from_key_file`` to resume); ``embed_initial(model)`` once on the initial global model
    before round 1 (WAFFLE's pre-training on the trigger set, so the clients learn the task on
    top of it rather than the server forcing it into a trained model); then, each round, after
    aggregation and before evaluation, ``embed(model, server_round)``, whose return value is
    the round's ``watermark_accuracy``. Each embedding draws its weight noise and shifts from a
    generator seeded by the key and the round, so a resumed run embeds as the uninterrupted one
    would have.
    """

    def __init__(
        self,
        key: bytes,
        image_shape: tuple[int, int, int],
        num_classes: int,
        budget: EmbedBudget | None = None,
        *,
        anchor: torch.Tensor | None = None,
    ) -> None:
        self.trigger = TriggerSet.from_key(key, image_shape, num_classes)
        self._key = key
        self.budget = budget or EmbedBudget()
        self.anchor = anchor

    @classmethod
    def create(
        cls,
        key_path: Path,
        image_shape: tuple[int, int, int],
        num_classes: int,
        budget: EmbedBudget | None = None,
        *,
        anchor: torch.Tensor | None = None,
    ) -> Watermarker:
        """Make a fresh key, write it to ``key_path`` (0600, never overwriting), and load it."""
        key = generate_key()
        write_key(key_path, key)
        return cls(key, image_shape, num_classes, budget, anchor=anchor)

    @classmethod
    def from_key_file(
        cls,
        key_path: Path,
        image_shape: tuple[int, int, int],
        num_classes: int,
        budget: EmbedBudget | None = None,
        *,
        anchor: torch.Tensor | None = None,
    ) -> Watermarker:
        """Load the watermark of an existing key file (to resume a run)."""
        return cls(read_key(key_path), image_shape, num_classes, budget, anchor=anchor)

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


def _header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Read the tensor names and shapes from a safetensors header, without the data."""
    try:
        with path.open("rb") as fh:
            prefix = fh.read(8)
            if len(prefix) != 8:
                raise WatermarkError(f"{path} is not a safetensors file (too short)")
            (length,) = struct.unpack("<Q", prefix)
            if not 2 <= length <= _MAX_HEADER_BYTES:
                raise WatermarkError(f"{path} is not a safetensors file (bad header length)")
            raw = fh.read(length)
    except OSError as exc:
        raise WatermarkError(f"cannot read {path} ({exc.strerror})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
        shapes = {
            str(name): tuple(int(d) for d in entry["shape"])
            for name, entry in header.items()
            if name != "__metadata__"
        }
    except (UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError):
        raise WatermarkError(f"{path} is not a safetensors file (unreadable header)") from None
    return shapes


def _model_shapes(name: str, num_classes: int) -> dict[str, tuple[int, ...]]:
    model = create_model(name, num_classes, seed=0)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def identify_model(shapes: Mapping[str, tuple[int, ...]]) -> tuple[str, int] | None:
    """Return the registered model name and class count whose state has exactly ``shapes``.

    Nothing is built from the file's numbers until they are checked: the names must match a
    registered model's, and the class count is read from the one dimension that changes with
    it (at most ``MAX_CLASSES``) before that model is built and compared shape by shape.
    """
    wanted = dict(shapes)
    for name in MODELS:
        two, three = _model_shapes(name, 2), _model_shapes(name, 3)
        if set(two) != set(wanted):
            continue
        for key, shape in two.items():
            if shape == three[key] or len(wanted[key]) != len(shape):
                continue
            axis = next(i for i, (a, b) in enumerate(zip(shape, three[key], strict=True)) if a != b)
            num_classes = wanted[key][axis]
            if 2 <= num_classes <= MAX_CLASSES and _model_shapes(name, num_classes) == wanted:
                return name, num_classes
            break
    return None


def verify_model_file(
    model_path: Path, key_path: Path, *, threshold: float = DETECTION_P
) -> WatermarkVerdict:
    """Test a safetensors model file for the watermark of a key file.

    The model is whichever registered model (``common.models.MODELS``) has exactly the file's
    tensor names and shapes; its class count comes from the shapes too.

    Raises:
        WatermarkError: One line: the key file is missing, unsafe or not a watermark key; the
            model file is missing or not safetensors; or its tensors fit no registered model.

    """
    model_path, key_path = Path(model_path), Path(key_path)
    key = read_key(key_path)
    shapes = _header_shapes(model_path)
    found = identify_model(shapes)
    if found is None:
        listed = ", ".join(f"{k} {list(v)}" for k, v in list(shapes.items())[:6])
        raise WatermarkError(
            f"{model_path}: tensors fit no registered model {sorted(MODELS)} ({listed})"
        )
    name, num_classes = found
    if name not in INPUT_SHAPES:
        raise WatermarkError(f"{model_path}: no input shape known for model {name!r}")
    model = create_model(name, num_classes, seed=0)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    try:
        arrays = load_safetensors(model_path, expected)
    except WeightsError as exc:
        raise WatermarkError(str(exc).splitlines()[0]) from None
    if not all(np.isfinite(a).all() for a in arrays.values()):
        raise WatermarkError(f"{model_path}: the model holds non-finite weights")
    load_state(model, arrays)
    trigger = TriggerSet.from_key(key, INPUT_SHAPES[name], num_classes)
    return verify_watermark(model, trigger, threshold=threshold)


# --------------------------------------------------------------------- state helpers, attacks


def state_of(model: nn.Module) -> NamedArrays:
    """Return a copy of ``model``'s ``state_dict`` as named float32 numpy arrays."""
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}


def load_state(model: nn.Module, state: Mapping[str, npt.ArrayLike]) -> None:
    """Load named arrays into ``model`` (names and shapes must match its ``state_dict``)."""
    model.load_state_dict(
        {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state.items()}
    )


def _float_state(state: Mapping[str, npt.ArrayLike]) -> NamedArrays:
    return {k: np.array(v, dtype=np.float32) for k, v in state.items()}


def prune_magnitude(state: Mapping[str, npt.ArrayLike], fraction: float) -> NamedArrays:
    """Zero the ``fraction`` smallest-magnitude entries of every weight tensor (ndim >= 2).

    Unstructured per-tensor magnitude pruning, as ``torch.nn.utils.prune.l1_unstructured``
    applied to each layer; biases are kept.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"`fraction` must be in [0, 1], got {fraction!r}")
    out = _float_state(state)
    for array in out.values():
        if array.ndim < 2:
            continue
        k = round(fraction * array.size)
        if k == 0:
            continue
        flat = array.reshape(-1)
        smallest = np.argpartition(np.abs(flat), k - 1)[:k]
        flat[smallest] = 0.0
    return out


def quantize_int8(state: Mapping[str, npt.ArrayLike]) -> NamedArrays:
    """Quantize every tensor to int8 and back: symmetric, per tensor, scale ``max|w| / 127``."""
    out = _float_state(state)
    for name, array in out.items():
        peak = float(np.abs(array).max()) if array.size else 0.0
        if peak == 0.0:
            continue
        scale = peak / 127.0
        codes = np.clip(np.rint(array / scale), -127, 127).astype(np.int8)
        out[name] = codes.astype(np.float32) * np.float32(scale)
    return out


def add_gaussian_noise(
    state: Mapping[str, npt.ArrayLike], std: float, rng: np.random.Generator
) -> NamedArrays:
    """Add i.i.d. ``N(0, std^2)`` noise to every entry of every tensor."""
    if not (math.isfinite(std) and std >= 0):
        raise ValueError(f"`std` must be a finite number >= 0, got {std!r}")
    out = _float_state(state)
    return {k: (v + rng.normal(0.0, std, size=v.shape)).astype(np.float32) for k, v in out.items()}


def fine_tune(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    lr: float,
    *,
    batch_size: int = 32,
    seed: int = 0,
) -> None:
    """Fine-tune ``model`` in place on clean data: plain SGD, shuffled mini-batches."""
    if type(epochs) is not int or epochs < 0:
        raise ValueError(f"`epochs` must be an int >= 0, got {epochs!r}")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    n = int(labels.shape[0])
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(nn.functional.cross_entropy(model(images[idx]), labels[idx]))
            optimizer.step()
    model.zero_grad(set_to_none=True)
