"""DP-SGD inside the round's shared subspace: clip and noise only the coordinates it keeps.

``common.subspace`` draws the round's mask over the flat model. :func:`parameter_masks` cuts it
into one mask per trainable parameter, and :class:`SubspaceDPSGD` hooks an Opacus
``DPOptimizer`` so that each example's gradient is restricted to the subspace before it is
clipped (its norm is taken there), and the noised sum is restricted again before the step.
What is released is ``mask * (sum of clipped masked gradients + N(0, σ²C²I))``: the Gaussian
mechanism on the subspace with sensitivity ``C``, so ``(σ, q, steps)`` account for it exactly as
for the dense model; the noise drawn outside is discarded and never touches a weight.

Caveat: the mask must not depend on the data (it is a hash of run and round). Per-sample
gradients must be materialised (Opacus ``hooks`` mode): ghost clipping never forms them, so
its norms would be the dense ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn


def parameter_masks(
    model: nn.Module, flat_mask: npt.NDArray[np.bool_], device: torch.device
) -> list[torch.Tensor]:
    """Cut a flat ``state_dict``-order mask into one float mask per trainable parameter.

    Raises:
        ValueError: the mask's length is not the model's ``state_dict`` size, or it keeps a
            coordinate of a buffer or frozen parameter (which DP-SGD does not train).

    """
    state = model.state_dict(keep_vars=True)
    sizes = [int(t.numel()) for t in state.values()]
    if flat_mask.shape != (sum(sizes),):
        raise ValueError(f"a subspace mask of {flat_mask.size} values for {sum(sizes)} weights")
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    by_name: dict[str, torch.Tensor] = {}
    offset = 0
    for (name, tensor), n in zip(state.items(), sizes, strict=True):
        part = flat_mask[offset : offset + n]
        offset += n
        if id(tensor) in trainable:
            # A copy: the round's mask is shared and read-only (``common.subspace``).
            by_name[name] = torch.tensor(
                part.reshape(tuple(tensor.shape)), dtype=tensor.dtype, device=device
            )
        elif part.any():
            raise ValueError(f"the subspace keeps coordinates of {name}, which is not trained")
    return [by_name[name] for name, p in model.named_parameters() if p.requires_grad]


def flat_mask(masks: Sequence[torch.Tensor]) -> npt.NDArray[np.bool_]:
    """Return per-parameter masks as one flat boolean mask over the trainable parameters."""
    return np.concatenate([m.detach().cpu().numpy().reshape(-1) != 0 for m in masks])


class SubspaceDPSGD:
    """Restricts an Opacus ``DPOptimizer``'s steps to a subspace (one mask per parameter)."""

    def __init__(self, masks: Sequence[torch.Tensor]) -> None:
        self._masks = list(masks)

    def attach(self, optimizer: Any) -> None:
        """Restrict ``optimizer`` (a ``DPOptimizer`` over the masks' parameters) to the subspace.

        Raises:
            ValueError: the optimizer's parameters do not have the masks' shapes.

        """
        if [tuple(p.shape) for p in optimizer.params] != [tuple(m.shape) for m in self._masks]:
            raise ValueError("the optimizer's parameters are not the ones the subspace spans")
        pairs = list(zip(optimizer.params, self._masks, strict=True))
        clip_and_accumulate = optimizer.clip_and_accumulate
        add_noise = optimizer.add_noise

        def clip_inside() -> None:
            for p, mask in pairs:
                samples = p.grad_sample
                # Opacus keeps a list when a layer ran more than once in the step.
                for g in samples if isinstance(samples, list) else [samples]:
                    g.mul_(mask)
            clip_and_accumulate()

        def noise_inside() -> None:
            add_noise()
            for p, mask in pairs:
                p.grad.mul_(mask)

        optimizer.clip_and_accumulate = clip_inside
        optimizer.add_noise = noise_inside
