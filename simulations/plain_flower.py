"""The plain-Flower baseline: Flower's own FedAvg on fedveil's task, with no DP and no sealing.

What ``fedveil bench`` compares fedveil's full stack with. Same model, data, partition, clients,
rounds and seed (``common.models``, ``common.data``, ``common.partition``), but:

- the ServerApp is Flower's ``flwr.serverapp.strategy.FedAvg`` driven by ``strategy.start``,
  with central evaluation on the same test split (``evaluate_fn``) and no federated evaluation
  (``fraction_evaluate=0``), as fedveil does;
- the ClientApp is a minimal Message-API app: plain minibatch SGD (shuffled, ``batch-size``,
  ``lr``, ``momentum``, ``local-epochs``) and a reply of the full float32 weights with
  ``num-examples``. No Opacus, no codec, no sealing, no privacy state. It imports only torch,
  Flower and ``common`` (nothing from ``client`` or ``server``).

The run writes ``metrics.jsonl`` with fedveil's field names where they apply (``round``,
``accuracy``, ``loss``, ``clients``, ``bytes_dense`` = uplink bytes of the round's replies,
``seconds`` = from the end of the previous round's evaluation to the end of this one's).
A caller may observe each finished round (``on_round``), wrap the FedAvg once more
(``wrap_strategy``: ``strategy.start`` then drives the wrapper) and run its own ClientApp
around ``train`` (``client_app``), as ``fedveil bench`` does to time the baseline.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, Strategy
from torch import nn

from common.config import ConfigValue, FedveilConfig
from common.device import model_device, resolve_device
from common.partition import PartitionSpec, task_partitions, task_pool
from common.task import task_of

log = logging.getLogger(__name__)

TASK_KEYS = (
    "task",
    "dataset",
    "data-dir",
    "seed",
    "test-fraction",
    "partitioning",
    "dirichlet-alpha",
    "model",
    "local-epochs",
    "batch-size",
    "lr",
    "momentum",
    "device",
)
"""The config keys that define the task and where it trains; the server sends them with every
train request, so the baseline trains on the device fedveil's clients use."""

NUM_EXAMPLES = "num-examples"

app = ClientApp()


def task_config(config: FedveilConfig) -> dict[str, ConfigValue]:
    """Return the task's keys of ``config``, as the ClientApp receives them."""
    flat = config.to_flat()
    return {k: flat[k] for k in TASK_KEYS}


def _node_partition(context: Context) -> tuple[int, int]:
    pid = int(context.node_config["partition-id"])
    count = int(context.node_config["num-partitions"])
    if not 0 <= pid < count:
        raise ValueError(f"node config `partition-id` {pid} is outside [0, {count})")
    return pid, count


def local_data(config: FedveilConfig, pid: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return partition ``pid`` of ``count`` as fedveil's clients see it (cached per process)."""
    task = task_of(config)
    spec = PartitionSpec(config.partitioning, count, config.seed, config.dirichlet_alpha)
    part = task_pool(task).select(task_partitions(task, spec)[pid])
    return part.inputs, part.labels


def train_sgd(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: FedveilConfig,
    generator: torch.Generator,
) -> float:
    """Train ``model`` in place with shuffled minibatch SGD; return the mean batch loss.

    ``config`` gives ``local-epochs``, ``batch-size``, ``lr`` and ``momentum``; ``generator``
    (on the CPU) shuffles. Training runs on the model's device: the examples and each epoch's
    order move there once, never per step.
    """
    epochs, batch_size = config.local_epochs, config.batch_size
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    criterion = nn.CrossEntropyLoss()
    model.train()
    device = model_device(model)
    images, labels = images.to(device), labels.to(device)
    n = int(labels.shape[0])
    total = torch.zeros((), dtype=torch.float64, device=device)
    batches = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(images[idx]), labels[idx])
            loss.backward()
            optimizer.step()
            total += loss.detach()
            batches += 1
    return float(total) / max(batches, 1)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the global model on this node's partition with plain SGD; reply with the weights."""
    request = msg.content.config_records["config"]
    config = FedveilConfig.from_flat({k: request[k] for k in TASK_KEYS})
    server_round = int(request.get("server-round", 0))  # type: ignore[arg-type]
    pid, count = _node_partition(context)
    images, labels = local_data(config, pid, count)
    model = task_of(config).build_model()
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    model.to(resolve_device(config.device))
    gen = torch.Generator()
    gen.manual_seed(config.seed * 1_000_003 + server_round * 10_007 + pid)
    loss = train_sgd(model, images, labels, config, gen)
    model.cpu()
    reply = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({NUM_EXAMPLES: int(labels.shape[0]), "train-loss": loss}),
        }
    )
    return Message(content=reply, reply_to=msg)


@dataclass
class PlainRound:
    """One finished round of the baseline (fedveil's ``metrics.jsonl`` names where they apply)."""

    round: int
    accuracy: float
    loss: float
    clients: list[int]
    bytes_dense: int
    seconds: float


@dataclass
class PlainRun:
    """What a baseline run produced: per-round records, the initial accuracy, wall time."""

    rounds: list[PlainRound] = field(default_factory=list)
    initial_accuracy: float = float("nan")
    seconds: float = 0.0

    @property
    def final_accuracy(self) -> float:
        """Accuracy of the last round's global model (``nan`` when no round finished)."""
        return self.rounds[-1].accuracy if self.rounds else float("nan")


class MeasuredFedAvg(FedAvg):
    """Flower's FedAvg, unchanged, that also records which nodes replied and their bytes."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.last_clients: list[int] = []
        self.last_bytes = 0

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Count the replies' ArrayRecord bytes, then aggregate exactly as FedAvg does."""
        replies = list(replies)
        ok = [r for r in replies if not r.has_error()]
        self.last_clients = sorted(int(r.metadata.src_node_id) for r in ok)
        self.last_bytes = sum(
            len(array.data)
            for reply in ok
            for record in reply.content.array_records.values()
            for array in record.values()
        )
        return super().aggregate_train(server_round, replies)


PlainObserver = Callable[[PlainRound], None]


def build_plain_server_app(
    config: FedveilConfig,
    run: PlainRun,
    out: Path | None = None,
    *,
    on_round: PlainObserver | None = None,
    wrap_strategy: Callable[[Strategy], Strategy] | None = None,
) -> ServerApp:
    """Return the baseline ServerApp; it fills ``run`` and, with ``out``, writes metrics there.

    ``on_round`` sees each round's record once the round is recorded; ``wrap_strategy`` wraps
    the FedAvg, and the wrapper is what ``start`` drives.
    """
    from server.evaluation import CentralEvaluator

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        started = time.perf_counter()
        task = task_of(config)
        model = task.build_model().to(resolve_device(config.device))
        evaluator = CentralEvaluator(task.test_examples())
        strategy = MeasuredFedAvg(
            fraction_train=config.fraction_train,
            fraction_evaluate=0.0,
            min_train_nodes=config.min_train_clients,
            min_available_nodes=config.sim_clients,
            weighted_by_key=NUM_EXAMPLES,
        )
        last = [time.perf_counter()]

        def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            model.load_state_dict(arrays.to_torch_state_dict())
            ev = evaluator.evaluate(model)
            now = time.perf_counter()
            if server_round == 0:
                run.initial_accuracy = ev.accuracy
            else:
                record = PlainRound(
                    round=server_round,
                    accuracy=ev.accuracy,
                    loss=ev.loss,
                    clients=strategy.last_clients,
                    bytes_dense=strategy.last_bytes,
                    seconds=round(now - last[0], 4),
                )
                run.rounds.append(record)
                if out is not None:
                    with (out / "metrics.jsonl").open("a") as fh:
                        fh.write(json.dumps(asdict(record)) + "\n")
                if on_round is not None:
                    on_round(record)
            last[0] = time.perf_counter()
            return MetricRecord({"accuracy": ev.accuracy, "loss": ev.loss})

        driven = strategy if wrap_strategy is None else wrap_strategy(strategy)
        driven.start(
            grid,
            ArrayRecord({k: v.cpu() for k, v in model.state_dict().items()}),
            num_rounds=config.num_server_rounds,
            timeout=config.round_timeout,
            train_config=ConfigRecord(task_config(config)),  # type: ignore[arg-type]
            evaluate_fn=evaluate_fn,
        )
        run.seconds = time.perf_counter() - started

    return server_app


def run_plain(
    config: FedveilConfig,
    out: Path | None = None,
    *,
    backend: Mapping[str, Any] | None = None,
    verbose: bool = False,
    client_app: ClientApp | None = None,
    on_round: PlainObserver | None = None,
    wrap_strategy: Callable[[Strategy], Strategy] | None = None,
) -> PlainRun:
    """Run the baseline on Flower's simulation engine with fedveil's Ray resources.

    ``client_app`` replaces ``app`` (it should call ``train``); ``on_round`` and
    ``wrap_strategy`` are ``build_plain_server_app``'s.
    """
    from flwr.simulation import run_simulation

    from simulations.simulate import backend_config, check_inputs

    check_inputs(config)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config.to_flat(), indent=1))
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    run = PlainRun()
    run_simulation(
        server_app=build_plain_server_app(
            config, run, out, on_round=on_round, wrap_strategy=wrap_strategy
        ),
        client_app=client_app or app,
        num_supernodes=config.sim_clients,
        backend_config=dict(backend or backend_config(config, verbose=verbose)),  # type: ignore[arg-type]
        verbose_logging=verbose,
    )
    if not run.rounds:
        raise RuntimeError("the baseline simulation finished no round")
    return run
