"""What one DP-SGD step costs against a non-private one, on one thread, as one actor has it.

``step_times`` times one optimizer step of a model fedveil ships (``STEP_MODELS``: ``mlp`` on
8x8 digits, ``cnn`` on 28x28) without privacy and with each of Opacus's grad-sample modes
(``MODES``: hooks, functorch, ew = expanded weights, ghost clipping), on fixed batches.
``client_round_times`` times one client's whole local training, fedveil's ``train_dp_sgd``
against plain SGD (``simulations.plain_flower.train_sgd``), on the task's first partition.
On the CPU both measure CPU seconds of this process (other jobs on a shared machine inflate
wall time); on a GPU (``device``) step times are wall seconds between device synchronisations.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from common.config import FedveilConfig

MODES = ("hooks", "functorch", "ew", "ghost")
STEP_MODELS = (("mlp", (1, 8, 8)), ("cnn", (1, 28, 28)))


def step_times(
    model_name: str,
    image_shape: tuple[int, int, int],
    *,
    batch_size: int,
    blocks: int,
    steps_per_block: int,
    threads: int = 1,
    device: str = "cpu",
) -> dict[str, float]:
    """Seconds of one optimizer step on ``device``, non-private and per grad-sample mode.

    CPU time of this (one-threaded) process, not wall time, so that other jobs on a shared
    machine do not inflate some samples; modes are timed in interleaved blocks (each block runs
    every mode ``steps_per_block`` times), so what drift remains hits all modes alike. Returns
    the median over blocks of the mean step time within a block. Fixed batches (no Poisson
    sampling) of random inputs: the step's cost does not depend on the pixel values. On a
    GPU, wall seconds between synchronisations (its work is not this process's CPU time).
    """
    import warnings

    import torch
    from opacus import PrivacyEngine
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from common.models import create_model

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, *image_shape, generator=gen).to(device)
    y = torch.randint(0, 10, (batch_size,), generator=gen).to(device)
    clock = _clock(torch.device(device))
    steps: dict[str, Callable[[], None]] = {}
    for mode in ("nonprivate", *MODES):
        model = create_model(model_name, 10, seed=0).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        criterion: Any = nn.CrossEntropyLoss()
        if mode != "nonprivate":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # secure_mode is off: noise is not the point
                engine = PrivacyEngine(accountant="rdp")
            loader = DataLoader(TensorDataset(x, y), batch_size=batch_size)
            kwargs: dict[str, Any] = {
                "module": model,
                "optimizer": optimizer,
                "data_loader": loader,
                "noise_multiplier": 1.0,
                "max_grad_norm": 1.0,
                "poisson_sampling": False,
                "grad_sample_mode": mode,
            }
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if mode == "ghost":
                    model, optimizer, criterion, _ = engine.make_private(
                        criterion=criterion, **kwargs
                    )
                else:
                    model, optimizer, _ = engine.make_private(**kwargs)
        steps[mode] = _step_fn(model, optimizer, criterion, x, y)
    samples: dict[str, list[float]] = {m: [] for m in steps}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fn in steps.values():
            for _ in range(3):
                fn()
        for _ in range(blocks):
            for mode, fn in steps.items():
                # One sample per block: a single small step is too short for CPU-time clocks.
                t0 = clock()
                for _ in range(steps_per_block):
                    fn()
                samples[mode].append((clock() - t0) / steps_per_block)
    return {m: statistics.median(s) for m, s in samples.items()}


def _clock(device: Any) -> Callable[[], float]:
    """CPU time of this process on the CPU; on a GPU, wall time once its queued work is done."""
    if device.type != "cuda":
        return time.process_time

    import torch

    def synchronized() -> float:
        torch.cuda.synchronize(device)
        return time.perf_counter()

    return synchronized


def _step_fn(model: Any, optimizer: Any, criterion: Any, x: Any, y: Any) -> Callable[[], None]:
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()

    return step


def client_round_times(
    config: FedveilConfig, *, repeats: int, device: str = "cpu"
) -> dict[str, float]:
    """CPU seconds of one client's local training: fedveil's ``train_dp_sgd`` vs plain SGD.

    The same partition (client 0 of the task's split), the same epochs, batch size and lr, one
    thread. This includes what a step bench leaves out: ``make_private`` each round, Poisson
    sampling through a DataLoader, the accountant. ``train_dp_sgd`` runs on ``device`` (plain
    SGD on the CPU, as plain Flower's client trains): on a GPU, compare step times instead.
    """
    import warnings

    import torch

    from client.trainer import DPSGDSettings, train_dp_sgd
    from common.data import load_data
    from common.models import create_model, model_for
    from simulations.plain_flower import local_data, train_sgd

    torch.set_num_threads(1)
    data = load_data(config.dataset, config.data_dir, config.seed, config.test_fraction)
    name = model_for(config.model, data.image_shape)
    images, labels = local_data(config, 0, config.sim_clients)
    settings = DPSGDSettings(
        local_epochs=config.local_epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        momentum=config.momentum,
        noise_multiplier=1.0,
        max_grad_norm=config.dp_max_grad_norm,
    )
    dp: list[float] = []
    plain: list[float] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(repeats + 1):
            model = create_model(name, data.num_classes, seed=0)
            t0 = time.process_time()
            train_dp_sgd(model, images, labels, settings, device=torch.device(device))
            t1 = time.process_time()
            model = create_model(name, data.num_classes, seed=0)
            t2 = time.process_time()
            train_sgd(model, images, labels, config, torch.Generator().manual_seed(i))
            t3 = time.process_time()
            if i > 0:  # the first pair warms up imports and caches
                dp.append(t1 - t0)
                plain.append(t3 - t2)
    return {
        "examples": int(labels.shape[0]),
        "dp_seconds": statistics.median(dp),
        "plain_seconds": statistics.median(plain),
    }
