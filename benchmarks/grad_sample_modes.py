"""Opacus's grad-sample modes on fedveil's built-in models: the same gradients, and how fast.

For each built-in model (``MODELS``: ``mlp`` on 8x8 digits, ``cnn`` and the million-parameter
``cnn-wide`` on 28x28 MNIST-shaped inputs) and each mode of ``simulations.bench_steps.MODES``
(``hooks``, ``functorch``, ``ew`` = expanded weights, ``ghost`` = fast gradient clipping):

1. agreement: one DP-SGD step (σ = 0, a clip bound small enough that every example is
   clipped, SGD with lr 1) on a fixed batch; the step taken is the clipped mean gradient, and
   its largest difference from ``hooks``'s is reported, relative to the step's largest entry;
2. empty batches: whether the mode takes a step on an empty batch, which Poisson sampling
   draws now and then and the accountant counts as a step;
3. speed: ``simulations.bench_steps.step_times`` (σ = 1, fixed batches, interleaved blocks,
   beside a plain non-private step in the same run), and each mode's ratio to the plain step.

``fit`` names, per model, the fastest mode that takes the same step and takes empty batches;
``client.trainer.grad_sample_mode`` is the rule the trainer follows from these measurements.

Prints a table and writes the JSON (date, commit, machine) to ``--out``
(default ``benchmarks/results/grad_sample_modes.json``). ``--device`` is a fedveil ``device``
setting; a device this machine lacks is refused in one line (exit 2).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import torch
from torch import nn

from benchmarks.command_line import benchmark_parser, refuse
from benchmarks.provenance import RESULTS_DIR, write_json
from common.config import ConfigError
from common.device import device_name, resolve_device
from common.models import create_model
from simulations.bench_steps import MODES, STEP_MODELS, step_times

NAME: Final = "grad_sample_modes"
MODELS: Final = (*STEP_MODELS, ("cnn-wide", (1, 28, 28)))
"""``fedveil bench``'s step models and the large CNN, whose hooks-mode steps are too slow for
the bench's many blocks."""
AGREEMENT_CLIP: Final = 1e-3
"""Clip bound of the agreement step: far below any example's gradient norm, so all are clipped."""
SAME: Final = 1e-3
"""Largest relative difference from ``hooks`` that counts as the same step: float32 sums taken
in another order (ghost clipping computes the norms without per-sample gradients) differ a
little; a wrong clip or a missing example differs by far more."""


def dp_step(
    model_name: str,
    mode: str,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    max_grad_norm: float = AGREEMENT_CLIP,
    batch: slice = slice(None),
) -> torch.Tensor:
    """Return the flat step ``before - after`` of one σ = 0 DP-SGD step (lr 1) in ``mode``.

    The model (seed 0) is built on ``x``'s device; Opacus's public API only: ``make_private``
    (on a loader of ``x``, ``y``) without Poisson sampling, then the ordinary forward, backward
    and ``step`` on the examples ``batch`` selects (``slice(0)``: an empty batch).
    """
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    model = create_model(model_name, 10, seed=0).to(x.device)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    kwargs: dict[str, Any] = {
        "module": model,
        "optimizer": optimizer,
        "data_loader": DataLoader(TensorDataset(x, y), batch_size=len(y)),
        "noise_multiplier": 0.0,
        "max_grad_norm": max_grad_norm,
        "poisson_sampling": False,
        "grad_sample_mode": mode,
    }
    criterion: Any = nn.CrossEntropyLoss()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # secure_mode is off: no noise is drawn here anyway
        engine = PrivacyEngine(accountant="rdp")
        if mode == "ghost":
            private, dp_optimizer, criterion, _ = engine.make_private(criterion=criterion, **kwargs)
        else:
            private, dp_optimizer, _ = engine.make_private(**kwargs)
        dp_optimizer.zero_grad(set_to_none=True)
        criterion(private(x[batch]), y[batch]).backward()
        dp_optimizer.step()
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    return (before - after).cpu()


def takes_empty_batch(model_name: str, mode: str, x: torch.Tensor, y: torch.Tensor) -> bool:
    """Return whether ``mode`` takes a DP-SGD step on an empty batch without error."""
    try:
        dp_step(model_name, mode, x, y, batch=slice(0))
    except RuntimeError:  # what torch raises for a batch of 0 in ew and functorch modes
        return False
    return True


def fixed_batch(
    image_shape: tuple[int, int, int], batch_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return seeded random inputs ``(batch_size, *image_shape)`` and labels on ``device``."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch_size, *image_shape, generator=gen)
    y = torch.randint(0, 10, (batch_size,), generator=gen)
    return x.to(device), y.to(device)


def agreement(
    model_name: str, image_shape: tuple[int, int, int], batch_size: int, device: torch.device
) -> dict[str, float]:
    """Return each mode's largest step difference from ``hooks``, relative to hooks's largest."""
    x, y = fixed_batch(image_shape, batch_size, device)
    steps = {mode: dp_step(model_name, mode, x, y) for mode in MODES}
    scale = float(steps["hooks"].abs().max())
    return {mode: float((s - steps["hooks"]).abs().max()) / scale for mode, s in steps.items()}


def measure(
    device: torch.device, *, batch_size: int, blocks: int, steps_per_block: int
) -> dict[str, Any]:
    """Return agreement and step times of every mode on every built-in model."""
    models: dict[str, Any] = {}
    for name, shape in MODELS:
        times = step_times(
            name,
            shape,
            batch_size=batch_size,
            blocks=blocks,
            steps_per_block=steps_per_block,
            device=str(device),
        )
        plain = times["nonprivate"]
        differences = agreement(name, shape, batch_size, device)
        x, y = fixed_batch(shape, batch_size, device)
        empty = {mode: takes_empty_batch(name, mode, x, y) for mode in MODES}
        usable = [m for m in MODES if differences[m] <= SAME and empty[m]]
        models[name] = {
            "image_shape": list(shape),
            "step_seconds": times,
            "ratio_to_plain": {m: t / plain for m, t in times.items() if m != "nonprivate"},
            "relative_difference_to_hooks": differences,
            "takes_empty_batch": empty,
            "fit": min(usable, key=lambda m: times[m]),
        }
    return models


def render(models: dict[str, Any], device: str) -> str:
    """Return the results as a text table."""
    lines = [
        f"device: {device}",
        f"{'model':5} {'mode':10} {'ms/step':>9} {'x plain':>8} {'empty':>5} same",
    ]
    for name, row in models.items():
        lines.append(f"{name:5} {'plain':10} {1e3 * row['step_seconds']['nonprivate']:9.3f}")
        for mode in MODES:
            diff = row["relative_difference_to_hooks"][mode]
            empty = "yes" if row["takes_empty_batch"][mode] else "NO"
            lines.append(
                f"{name:5} {mode:10} {1e3 * row['step_seconds'][mode]:9.3f} "
                f"{row['ratio_to_plain'][mode]:8.2f} {empty:>5} "
                f"{'yes' if diff <= SAME else 'NO'} ({diff:.1e})"
            )
        lines.append(f"{name:5} fit: {row['fit']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, print the table, write the JSON; exit 0, or 2 on bad input."""
    parser = benchmark_parser(NAME, __doc__.splitlines()[0] if __doc__ else NAME)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=12, help="interleaved timing blocks")
    parser.add_argument("--steps-per-block", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / f"{NAME}.json")
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device, source="--device")
    except ConfigError as exc:
        return refuse(NAME, exc)
    if min(args.batch_size, args.blocks, args.steps_per_block) < 1:
        return refuse(NAME, "--batch-size, --blocks and --steps-per-block must be >= 1")
    models = measure(
        device, batch_size=args.batch_size, blocks=args.blocks, steps_per_block=args.steps_per_block
    )
    print(render(models, device_name(device)))
    write_json(
        args.out,
        {
            "device": str(device),
            "device_name": device_name(device),
            "batch_size": args.batch_size,
            "blocks": args.blocks,
            "steps_per_block": args.steps_per_block,
            "same_threshold": SAME,
            "models": models,
        },
    )
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
