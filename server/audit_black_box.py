"""The server's black-box privacy audit: input canaries per client, scored by the final model.

The aggregator is the auditor (Steinke, Nasr and Jagielski 2023, one training run, black-box):
it draws two secret seeds per client, one for its canary inputs and labels and one for its
inclusion bits, and sends both in that client's train requests (``canaries_for``), the same in
every round; the client puts the included canaries in its data (``client.input_canaries``).
After the last round (``score``), each canary's score is minus the final global model's loss on
it, since training on a canary lowers its loss; the highest scores are guessed in, the lowest
out, and ``common.audit`` turns the right guesses into a lower bound on ε at the run's δ.

The canaries are generated from the seeds and the task's input shape, classes and a value range
the server takes from its own test examples: no client data. The bound holds for any model the
server releases, as everything after the clients' DP-SGD is post-processing. It is weak: the
final aggregate averages the clients' noisy updates and the server's own steps. A resumed run
draws fresh seeds, so only the rounds after the resume carry the scored canaries (still valid).
"""

from __future__ import annotations

import math
import secrets

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from common.audit import AuditResult, audit_scores, guess_counts
from common.audit_canaries import MAX_CANARIES, SEED_LIMIT
from common.audit_inputs import MODE, InputCanarySpec
from server.audit_file import AuditEntry

AUTO_SHARE = 0.1
"""``privacy.audit-canaries = 0``: each client spends this share of its examples on canaries."""

GUESS_SHARES = (0.1, 0.25, 0.5)
"""Guess counts as shares of m: a few dozen canaries call for larger shares than white-box's."""


def slot_count(configured: int, *, sample_rate: float, batch_size: int) -> int:
    """Return a client's canaries: ``configured``, or for 0 ``AUTO_SHARE`` of its examples.

    The server knows a client's data size only through its planned ``q = 1 / ceil(n / B)``:
    ``n`` is at least ``(1/q - 1) B + 1``, and a client never gets more canaries than that.
    """
    batches = max(1, round(1 / sample_rate))
    fewest = (batches - 1) * batch_size + 1
    wanted = max(1, math.floor(AUTO_SHARE * fewest)) if configured == 0 else configured
    return min(wanted, fewest, MAX_CANARIES)


class BlackBoxAuditor:
    """Input canaries for each client and, after the run, the bound the final model gives.

    Args:
        input_shape: the task's input shape; num_classes: its classes.
        low, high: the range canary inputs are drawn in.
        canaries: canaries per client (0 = ``AUTO_SHARE`` of its examples).
        batch_size: the run's batch size, to read a client's data size from its ``q``.
        delta: δ of the run's guarantee, at which the bound is stated.
        beta: the chance that a client's bound is wrong.

    """

    mode = MODE

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        *,
        low: float,
        high: float,
        canaries: int,
        batch_size: int,
        delta: float,
        beta: float = 0.05,
    ) -> None:
        self.input_shape = input_shape
        self.num_classes = num_classes
        self.low, self.high = low, high
        self.canaries = canaries
        self.batch_size = batch_size
        self.delta = delta
        self.beta = beta
        self._specs: dict[str, InputCanarySpec] = {}

    def canaries_for(self, client_id: str, *, sample_rate: float) -> InputCanarySpec:
        """Return the client's canaries, drawing its seeds on first sight.

        ``sample_rate`` is the client's planned ``q``; it sizes the canaries on first sight only.
        """
        spec = self._specs.get(client_id)
        if spec is None:
            m = slot_count(self.canaries, sample_rate=sample_rate, batch_size=self.batch_size)
            spec = InputCanarySpec(
                secrets.randbelow(SEED_LIMIT), secrets.randbelow(SEED_LIMIT), m, self.low, self.high
            )
            self._specs[client_id] = spec
        return spec

    def is_audited(self, client_id: str) -> bool:
        """Return whether ``client_id`` has been sent canaries."""
        return client_id in self._specs

    def scores(self, client_id: str, model: nn.Module) -> npt.NDArray[np.float64]:
        """Return minus ``model``'s loss on each of the client's canaries (higher: more in)."""
        spec = self._specs[client_id]
        device = next(model.parameters()).device
        inputs = torch.from_numpy(spec.inputs(self.input_shape)).to(device)
        labels = torch.from_numpy(spec.labels(self.num_classes)).to(device)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            loss = nn.functional.cross_entropy(model(inputs), labels, reduction="none")
        model.train(was_training)
        # A non-finite loss (a diverged model) scores lowest: it never makes a guess "in".
        lowest = np.finfo(np.float64).min
        scores: npt.NDArray[np.float64] = np.nan_to_num(
            -loss.double().cpu().numpy(), nan=lowest, neginf=lowest
        )
        return scores

    def result(self, client_id: str, model: nn.Module) -> AuditResult:
        """Return the bound the final ``model`` proves for the client's canaries."""
        spec = self._specs[client_id]
        return audit_scores(
            self.scores(client_id, model),
            spec.included(),
            delta=self.delta,
            beta=self.beta,
            counts=guess_counts(spec.canaries, GUESS_SHARES),
        )

    def score(self, model: nn.Module) -> dict[str, AuditEntry]:
        """Return every audited client's entry for ``privacy.json``, scored on ``model``."""
        entries = {}
        for client_id in self._specs:
            r = self.result(client_id, model)
            entries[client_id] = AuditEntry(r.epsilon_lower_bound, r.m, r.guesses, r.correct, MODE)
        return entries
