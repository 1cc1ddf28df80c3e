"""The plain-Flower baseline: its ClientApp trains, and its FedAvg run learns digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp

from common.config import FedveilConfig
from common.data import load_data
from common.models import create_model, model_for
from server.evaluation import CentralEvaluator
from simulations.bench_timing import RoundClock, TimingStrategy, traced_train
from simulations.plain_flower import NUM_EXAMPLES, PlainRound, app, run_plain, task_config, train

CONFIG = FedveilConfig.from_flat(
    {"sim.clients": 3, "num-server-rounds": 2, "lr": 0.1, "momentum": 0.9, "local-epochs": 2}
)


def _request(arrays: ArrayRecord, server_round: int) -> Message:
    config = ConfigRecord({**task_config(CONFIG), "server-round": server_round})
    content = RecordDict({"arrays": arrays, "config": config})
    return Message(content=content, dst_node_id=7, message_type=MessageType.TRAIN)


def _context(pid: int) -> Context:
    return Context(
        run_id=1,
        node_id=7,
        node_config={"partition-id": pid, "num-partitions": CONFIG.sim_clients},
        state=RecordDict(),
        run_config={},
    )


def _fedavg(replies: list[Message]) -> ArrayRecord:
    weights = [float(r.content.metric_records["metrics"][NUM_EXAMPLES]) for r in replies]  # type: ignore[arg-type]
    states = [r.content.array_records["arrays"].to_numpy_ndarrays() for r in replies]
    mean = [
        sum(w * s[i] for w, s in zip(weights, states, strict=True)) / sum(weights)
        for i in range(len(states[0]))
    ]
    names = list(replies[0].content.array_records["arrays"].keys())
    return ArrayRecord(
        {n: Array(np.asarray(m, dtype=np.float32)) for n, m in zip(names, mean, strict=True)}
    )


def test_reply_has_what_fedavg_needs(task_identity: None) -> None:
    data = load_data("digits", "", 0, 0.2)
    model = create_model(model_for("auto", data.image_shape), data.num_classes, seed=0)

    reply = app(_request(ArrayRecord(model.state_dict()), 1), _context(0))

    assert not reply.has_error()
    assert list(reply.content.array_records) == ["arrays"]
    assert list(reply.content.metric_records) == ["metrics"]
    metrics = reply.content.metric_records["metrics"]
    assert metrics[NUM_EXAMPLES] == pytest.approx(len(data.train) / CONFIG.sim_clients, abs=1)
    assert list(reply.content.array_records["arrays"].keys()) == list(model.state_dict())


def test_two_rounds_of_direct_calls_rise_above_chance(task_identity: None) -> None:
    data = load_data("digits", "", 0, 0.2)
    model = create_model(model_for("auto", data.image_shape), data.num_classes, seed=0)
    evaluator = CentralEvaluator(data)
    arrays = ArrayRecord(model.state_dict())
    before = evaluator.evaluate(model).accuracy

    for server_round in (1, 2):
        replies = [app(_request(arrays, server_round), _context(p)) for p in range(3)]
        arrays = _fedavg(replies)

    model.load_state_dict(arrays.to_torch_state_dict())
    after = evaluator.evaluate(model).accuracy
    assert before < 0.2
    assert after > 0.5


def _traced_plain_app() -> ClientApp:
    def handler(msg: Message, context: Context) -> tuple[Message, dict[str, float]]:
        return train(msg, context), {}

    client_app = ClientApp()
    client_app.train()(traced_train(handler))
    return client_app


@pytest.mark.slow
def test_run_simulation_with_flower_fedavg_learns(tmp_path: Path) -> None:
    # Through the hooks `fedveil bench` uses: its ClientApp, a strategy wrap, a round observer.
    clock = RoundClock()
    seen: list[PlainRound] = []

    def on_round(record: PlainRound) -> None:
        seen.append(record)
        clock.round_done(record.round)

    run = run_plain(
        CONFIG,
        tmp_path / "plain",
        client_app=_traced_plain_app(),
        on_round=on_round,
        wrap_strategy=lambda strategy: TimingStrategy(strategy, clock),
    )

    assert seen == run.rounds
    assert list(clock.server_seconds()) == [1, 2]
    assert sorted(t["round"] for t in clock.traces) == [1, 1, 1, 2, 2, 2]
    assert [r.round for r in run.rounds] == [1, 2]
    assert run.initial_accuracy < 0.2
    assert run.final_accuracy > 0.5
    assert all(len(r.clients) == 3 for r in run.rounds)
    state = create_model("mlp", 10, seed=0).state_dict()
    dense = 4 * sum(t.numel() for t in state.values())
    # Each Array carries its float32 data and a short .npy header.
    assert all(3 * dense < r.bytes_dense < 3 * (dense + 256 * len(state)) for r in run.rounds)
    rows = (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in rows] == [1, 2]


def test_the_baseline_trains_a_user_task_on_the_same_partition_as_fedveil(
    tmp_path: Path, task_identity: None
) -> None:
    from client.local_data import load_local_data
    from common.task import task_of
    from examples.tabular_csv.make_data import write_dataset

    write_dataset(tmp_path, seed=0, train=90, test=30, node_sizes=())
    config = CONFIG.replace(task="examples.tabular_csv.task", data_dir=str(tmp_path))
    model = task_of(config).build_model()
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "config": ConfigRecord({**task_config(config), "server-round": 1}),
        }
    )
    request = Message(content=content, dst_node_id=7, message_type=MessageType.TRAIN)

    reply = app(request, _context(1))

    assert not reply.has_error()
    fedveil_sees = load_local_data(config, _context(1))
    examples = reply.content.metric_records["metrics"][NUM_EXAMPLES]
    assert examples == float(fedveil_sees.labels.shape[0])
    trained = reply.content.array_records["arrays"]
    assert set(trained) == set(model.state_dict())


def _train_on(device: str) -> set[str]:
    """Train one baseline round with ``device``; return the devices the forwards ran on."""
    from simulations.plain_flower import train_sgd

    config = CONFIG.replace(device=device)
    model = create_model("mlp", 10, seed=0).to(torch.device(device))
    seen: set[str] = set()
    model.register_forward_pre_hook(lambda _m, args: seen.add(args[0].device.type))
    images, labels = torch.randn(40, 1, 8, 8), torch.randint(0, 10, (40,))
    loss = train_sgd(model, images, labels, config, torch.Generator().manual_seed(0))
    assert np.isfinite(loss)
    return seen


def test_the_baseline_trains_where_the_model_is() -> None:
    assert "device" in task_config(CONFIG)
    assert _train_on("cpu") == {"cpu"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_baseline_trains_on_cuda_like_fedveil() -> None:
    # The bench's ratios compare like with like only if the baseline uses the GPU too.
    assert _train_on("cuda") == {"cuda"}
