"""White-box audit canaries inside DP-SGD: each step adds the sampled canaries before the noise.

Each included canary (``common.audit_canaries.CanarySpec``) behaves like one more clipped
example: at every step it is sampled independently with the same Poisson rate ``q`` as a real
example, and its gradient (a fixed direction of norm ``C``, the clip bound) is added to the sum
of clipped per-sample gradients. The hook sits between Opacus's ``clip_and_accumulate`` and
``add_noise`` (``DPOptimizer.pre_step``), so real examples are clipped exactly as without it and
the noise is drawn from the same generator with the same std; excluded canaries are never added.

Canaries cost no privacy of the real examples (each example's sensitivity is unchanged) but
perturb the update like ``q`` × (included canaries) extra examples: a utility cost.
The per-step sampling draws from OS entropy, never from the spec's seed.
"""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from flwr.app import ConfigRecord

from common import protocol
from common.audit_canaries import MODE as WHITE_BOX
from common.audit_canaries import CanarySpec
from common.audit_inputs import MODE as BLACK_BOX
from common.audit_inputs import InputCanarySpec


class GradientCanaries:
    """The included canaries of ``spec`` over ``params``, to be attached to a DP optimizer.

    Args:
        spec: the canaries (seed and count) the auditor asked for.
        params: the trainable parameters, in the model's ``named_parameters`` order.
        sample_rate: ``q``, each canary's chance to be in a step's batch (a real example's).
        max_grad_norm: ``C``, each canary gradient's L2 norm.
        subspace: the round's subspace over ``params`` (flat, in their order), when the round
            trains one: each canary is cut to it and rescaled to norm ``C`` there, like the
            examples it stands for (``CanaryLayout.restricted``; the auditor does the same).

    """

    def __init__(
        self,
        spec: CanarySpec,
        params: list[torch.Tensor],
        *,
        sample_rate: float,
        max_grad_norm: float,
        device: torch.device | None = None,
        subspace: npt.NDArray[np.bool_] | None = None,
    ) -> None:
        if not 0 < sample_rate <= 1:
            raise ValueError(f"`sample_rate` must be in (0, 1], got {sample_rate}")
        self.sample_rate = sample_rate
        self._shapes = [p.shape for p in params]
        self._size = sum(p.numel() for p in params)
        device = device if device is not None else torch.device("cpu")
        layout = spec.layout(self._size, max_grad_norm)
        if subspace is not None:
            layout = layout.restricted(subspace, max_grad_norm)
        included = spec.included()
        # Only the included canaries, on the training device once: a step then samples, builds
        # and adds its canary sum without a host-device copy or a synchronizing read.
        self._coords = torch.from_numpy(layout.coords[included]).to(device)
        self._values = torch.from_numpy(layout.values[included]).to(device)
        self._generator = torch.Generator(device=device).manual_seed(secrets.randbits(63))
        self._added = torch.zeros((), dtype=torch.int64, device=device)

    @property
    def added(self) -> int:
        """How many canary gradients the steps so far added (one read from the device)."""
        return int(self._added.item())

    def step_sum(self) -> torch.Tensor:
        """Return this step's canary gradient sum, flat: Poisson-sampled included canaries."""
        draws = torch.rand(
            self._coords.shape[0], generator=self._generator, device=self._coords.device
        )
        sampled = draws < self.sample_rate
        self._added += sampled.sum()
        flat = torch.zeros(self._size, dtype=self._values.dtype, device=self._values.device)
        flat[self._coords.flatten()] = (self._values * sampled[:, None]).flatten()
        return flat

    def attach(self, optimizer: Any) -> None:
        """Make ``optimizer`` (an Opacus ``DPOptimizer``) add canaries before its noise.

        ``optimizer.params`` must be the parameters this object was built over, in order.
        """
        if [p.shape for p in optimizer.params] != self._shapes:
            raise ValueError("the optimizer's parameters are not the ones the canaries span")
        add_noise = optimizer.add_noise

        def add_canaries_then_noise() -> None:
            flat = self.step_sum()
            offset = 0
            for p in optimizer.params:
                n = p.numel()
                p.summed_grad += flat[offset : offset + n].view_as(p.summed_grad).to(p.summed_grad)
                offset += n
            add_noise()

        optimizer.add_noise = add_canaries_then_noise


def requested_canaries(record: ConfigRecord | None) -> CanarySpec | InputCanarySpec | None:
    """Return the canaries a train request's ``audit`` record asks for; ``None`` without one.

    White-box gradient canaries (this module) unless its ``mode`` is ``black-box``: input
    canaries in the node's data (``client.input_canaries``).

    Raises:
        ValueError: an unknown mode, or the record's seeds, count or range are missing or
            out of range.

    """
    if record is None:
        return None
    mode = record.get(protocol.AUDIT_MODE, WHITE_BOX)
    if mode == BLACK_BOX:
        return InputCanarySpec(
            inputs_seed=record.get(protocol.AUDIT_INPUTS_SEED),  # type: ignore[arg-type]
            bits_seed=record.get(protocol.AUDIT_BITS_SEED),  # type: ignore[arg-type]
            canaries=record.get(protocol.AUDIT_CANARIES),  # type: ignore[arg-type]
            low=record.get(protocol.AUDIT_INPUT_LOW),  # type: ignore[arg-type]
            high=record.get(protocol.AUDIT_INPUT_HIGH),  # type: ignore[arg-type]
        )
    if mode != WHITE_BOX:
        raise ValueError(f"the request's audit mode {mode!r} is not {WHITE_BOX} or {BLACK_BOX}")
    return CanarySpec(
        directions_seed=record.get(protocol.AUDIT_DIRECTIONS_SEED),  # type: ignore[arg-type]
        bits_seed=record.get(protocol.AUDIT_BITS_SEED),  # type: ignore[arg-type]
        canaries=record.get(protocol.AUDIT_CANARIES),  # type: ignore[arg-type]
    )
