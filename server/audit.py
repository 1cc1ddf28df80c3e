"""The server's white-box privacy audit: canaries per client, scored on its opened updates.

The aggregator is the auditor (Steinke, Nasr and Jagielski 2023, one training run): it draws
two secret seeds per client, one for its canary directions and one for its inclusion bits,
sends both in that client's train requests (``canaries_for``), and adds up every opened update
of the client (``observe``; the decoded ``local - global`` of each round it trained). After any
round, each canary's score is how far the summed update moved against it; the highest scores
are guessed in, the lowest out, and ``common.audit`` turns the right guesses into a lower bound
on ε at the run's δ (``result``).

The bound holds whatever the updates contain, as long as each included canary went through
the client's DP-SGD as one more example (``client.canaries``). Updates the server could not open
were still trained on: missing them weakens the bound, never voids it. A resumed run draws
fresh seeds and audits the rounds after the resume only. ``build_auditor`` returns this auditor
or, with ``privacy.audit-mode = "black-box"``, ``server.audit_black_box.BlackBoxAuditor``.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from torch import nn

from common import subspace
from common.audit import AuditResult, audit_scores
from common.audit_canaries import MAX_CANARIES, SEED_LIMIT, CanaryLayout, CanarySpec
from common.audit_canaries import MODE as WHITE_BOX
from common.audit_inputs import MODE as BLACK_BOX
from common.config import ConfigError, FedveilConfig
from common.task import task_of
from server.audit_black_box import BlackBoxAuditor
from server.audit_file import AuditEntry

AUTO_CANARIES_CAP = 10_000
"""``privacy.audit-canaries = 0`` means one canary per trainable parameter, at most this many."""


def trainable_sizes(model: nn.Module) -> dict[str, int]:
    """Return each trainable parameter's element count, in ``named_parameters`` order."""
    return {name: p.numel() for name, p in model.named_parameters() if p.requires_grad}


def canary_count(configured: int, parameters: int) -> int:
    """Return the canaries per client: ``configured``, or for 0 one per parameter (capped).

    Raises:
        ConfigError: more canaries than trainable parameters (they would not be orthogonal).

    """
    if configured == 0:
        return min(parameters, AUTO_CANARIES_CAP, MAX_CANARIES)
    if configured > parameters:
        raise ConfigError(
            f"config key `privacy.audit-canaries` is {configured}, more than the model's "
            f"{parameters} trainable parameters; give at most {parameters} (0 = one per parameter)"
        )
    return configured


@dataclass(frozen=True)
class AuditedSubspace:
    """Where a run's rounds train (``codec.mask = "subspace"``), over the trainable coordinates.

    ``trainable`` holds, in ``named_parameters`` order, the positions in the flat ``state_dict``
    vector (the subspace's layout) of the coordinates the canaries span.
    """

    run_id: int
    fraction: float
    state_size: int
    trainable: npt.NDArray[np.int64]

    @classmethod
    def of(cls, model: nn.Module, run_id: int, fraction: float) -> AuditedSubspace:
        """Return the subspace layout of ``model``'s trainable parameters in run ``run_id``."""
        offsets: dict[int, tuple[int, int]] = {}
        offset = 0
        for tensor in model.state_dict(keep_vars=True).values():
            offsets[id(tensor)] = (offset, offset + tensor.numel())
            offset += tensor.numel()
        ranges = [offsets[id(p)] for p in model.parameters() if p.requires_grad]
        trainable = np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in ranges])
        return cls(run_id, fraction, offset, trainable)

    def inside(self, server_round: int) -> npt.NDArray[np.bool_]:
        """Return round ``server_round``'s subspace over the trainable coordinates."""
        mask = subspace.round_mask(self.run_id, server_round, self.state_size, self.fraction)
        inside: npt.NDArray[np.bool_] = mask[self.trainable]
        return inside


class WhiteBoxAuditor:
    """Canaries for each client, the sum of its opened updates, and the bound they give.

    Args:
        sizes: trainable parameter sizes by name, in the model's ``named_parameters`` order.
        canaries: canaries per client (``canary_count``).
        max_grad_norm: ``C``; each canary gradient has this L2 norm.
        delta: δ of the run's guarantee, at which the bound is stated.
        beta: the chance that a client's bound is wrong.

    """

    mode = WHITE_BOX

    def __init__(
        self,
        sizes: Mapping[str, int],
        *,
        canaries: int,
        max_grad_norm: float,
        delta: float,
        beta: float = 0.05,
        subspace: AuditedSubspace | None = None,
    ) -> None:
        self.sizes = dict(sizes)
        self.size = sum(self.sizes.values())
        self.canaries = canaries
        self.delta = delta
        self.beta = beta
        self.max_grad_norm = max_grad_norm
        self.subspace = subspace
        self._layouts: dict[str, CanaryLayout] = {}
        self._specs: dict[str, CanarySpec] = {}
        self._scores: dict[str, npt.NDArray[np.float64]] = {}
        self._inside: tuple[int, npt.NDArray[np.bool_]] | None = None

    def canaries_for(self, client_id: str) -> CanarySpec:
        """Return the client's canaries, drawing its two secret seeds on first sight."""
        spec = self._specs.get(client_id)
        if spec is None:
            # Directions of their own per client: the clients' canary drifts then average out
            # in the aggregate instead of adding up along shared directions.
            spec = CanarySpec(
                secrets.randbelow(SEED_LIMIT), secrets.randbelow(SEED_LIMIT), self.canaries
            )
            self._specs[client_id] = spec
            self._layouts[client_id] = spec.layout(self.size, self.max_grad_norm)
        return spec

    def is_audited(self, client_id: str) -> bool:
        """Return whether ``client_id`` has been sent canaries."""
        return client_id in self._specs

    def observe(
        self,
        client_id: str,
        update: Mapping[str, npt.NDArray[np.floating]],
        server_round: int | None = None,
    ) -> None:
        """Add one opened update (``local - global`` by parameter name) of a client we audit.

        Scores add up over rounds (``<update, canary>`` is linear). Under a subspace each round
        scores the canaries as the client added them, cut to ``server_round``'s subspace.

        Raises:
            KeyError: the client was never sent canaries, or the update lacks a parameter.
            ValueError: the run trains in a subspace and ``server_round`` is not given.

        """
        if client_id not in self._specs:
            raise KeyError(f"client {client_id} was sent no canaries")
        flat = np.concatenate(
            [np.asarray(update[name], dtype=np.float64).ravel() for name in self.sizes]
        )
        layout = self._layouts[client_id]
        if self.subspace is not None:
            if server_round is None:
                raise ValueError("a subspace run's update must name its round")
            inside = self._inside_of(self.subspace, server_round)
            layout = layout.restricted(inside, self.max_grad_norm)
        scores = layout.scores(flat)
        if client_id in self._scores:
            self._scores[client_id] += scores
        else:
            self._scores[client_id] = scores

    def _inside_of(self, subspace: AuditedSubspace, server_round: int) -> npt.NDArray[np.bool_]:
        """Return the round's subspace over the trainable coordinates (drawn once a round)."""
        if self._inside is None or self._inside[0] != server_round:
            self._inside = (server_round, subspace.inside(server_round))
        return self._inside[1]

    def result(self, client_id: str) -> AuditResult:
        """Return the bound the client's updates so far prove (0 before any update)."""
        spec = self._specs[client_id]
        scores = self._scores.get(client_id)
        if scores is None:
            return AuditResult(0.0, spec.canaries, 0, 0)
        return audit_scores(
            scores,
            spec.included(),
            delta=self.delta,
            beta=self.beta,
        )

    def entry(self, client_id: str) -> AuditEntry:
        """Return the client's audit as ``privacy.json`` records it."""
        r = self.result(client_id)
        return AuditEntry(r.epsilon_lower_bound, r.m, r.guesses, r.correct, self.mode)


Auditor = WhiteBoxAuditor | BlackBoxAuditor


def build_auditor(config: FedveilConfig, run_id: int) -> Auditor:
    """Return the auditor ``privacy.audit`` and ``privacy.audit-mode`` ask for.

    White-box canaries span the task's trainable parameters (under ``codec.mask = "subspace"``,
    each round's subspace of run ``run_id``); black-box canary inputs are drawn in the range of
    the task's test examples (the server's own data, never a client's).

    Raises:
        ConfigError: in white-box mode, ``privacy.audit-canaries`` exceeds the model's
            trainable parameters.

    """
    task = task_of(config)
    if config.privacy_audit_mode == BLACK_BOX:
        inputs = task.test_examples().inputs
        low, high = float(inputs.min()), float(inputs.max())
        return BlackBoxAuditor(
            task.input_shape,
            task.num_classes,
            low=low,
            high=high if high > low else low + 1.0,
            canaries=config.privacy_audit_canaries,
            batch_size=config.batch_size,
            delta=config.dp_delta,
        )
    model = task.build_model()
    sizes = trainable_sizes(model)
    fraction = subspace.fraction_of(config)
    return WhiteBoxAuditor(
        sizes,
        canaries=canary_count(config.privacy_audit_canaries, sum(sizes.values())),
        max_grad_norm=config.dp_max_grad_norm,
        delta=config.dp_delta,
        subspace=None if fraction is None else AuditedSubspace.of(model, run_id, fraction),
    )
