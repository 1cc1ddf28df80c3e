"""The round loop's messages: clients receive the keys a client needs and no server-only key."""

from __future__ import annotations

import json
from pathlib import Path

from flwr.app import Message, MessageType, MetricRecord, RecordDict

from common import protocol
from common.config import CLIENT_KEYS, KEYS, FedveilConfig
from examples.tabular_csv.make_data import write_dataset
from server.round_loop import RoundLoop, RunHooks
from server.rundir import RunDirectory
from tests.conftest import RUN_ID
from tests.server.strategy.fakes import ListGrid, reply_from
from tests.server.tabular_nodes import node_grid, tabular_config

SERVER_ONLY = set(KEYS) - set(CLIENT_KEYS)


def plan_only(message: Message) -> Message | None:
    """Answer the planning query with usable facts; never answer a train request."""
    if message.metadata.message_type != MessageType.QUERY:
        return None
    node = int(message.metadata.dst_node_id)
    facts = {protocol.CLIENT_ID: float(node), protocol.SAMPLE_RATE: 0.1, protocol.STEPS: 10.0}
    return reply_from(node, RecordDict({protocol.METRICS: MetricRecord(facts)}))  # type: ignore[arg-type]


def test_no_request_carries_a_server_only_key(tmp_path: Path, task_identity: None) -> None:
    config = FedveilConfig.from_flat(
        {
            "num-server-rounds": 1,
            "out-dir": str(tmp_path),
            "robust.norm-bound": 2.0,
            "attack.fraction": 0.3,
            "faults.tamper": 0.25,
        }
    )
    grid = ListGrid([21, 22, 23], plan_only)  # planned, then the round ends with no replies
    loop = RoundLoop(grid, config, RunDirectory.create(tmp_path / "run"), run_id=1, run_tag="run")

    result = loop.run()

    assert {"seal.private-key", "aggregation", "watermark.enabled", "run-dir"} <= SERVER_ONLY

    assert result.rounds_completed == 1
    assert {r.node for r in loop.book.outcome.rejected} == {21, 22, 23}
    kinds = {m.metadata.message_type for m in grid.sent}
    assert kinds == {MessageType.QUERY, MessageType.TRAIN}
    for message in grid.sent:
        train = message.metadata.message_type == MessageType.TRAIN
        allowed = (
            {protocol.DOWNLINK, protocol.CONFIG, protocol.SEAL, protocol.DP}
            if train
            else {protocol.CONFIG}
        )
        assert set(message.content) <= allowed
        bookkeeping = (
            {protocol.SERVER_ROUND, protocol.RUN_TAG} if train else {protocol.SERVER_ROUND}
        )
        assert (
            set(message.content.config_records[protocol.CONFIG]) == set(CLIENT_KEYS) | bookkeeping
        )
        for record in message.content.config_records.values():
            assert not SERVER_ONLY & set(record)


def test_a_node_without_usable_data_is_rejected_and_the_round_goes_on(
    tmp_path: Path, task_identity: None
) -> None:
    data = tmp_path / "data"
    write_dataset(data, seed=0, train=60, test=40, node_sizes=(50, 60))
    config = tabular_config(data)
    paths = {21: data / "node-0.csv", 22: data / "node-1.csv", 23: data / "absent.csv"}
    grid = node_grid(paths)
    run_dir = RunDirectory.create(tmp_path / "run")
    loop = RoundLoop(grid, config, run_dir, run_id=RUN_ID, run_tag="run")

    result = loop.run()

    assert result.rounds_completed == 2
    rounds = [
        json.loads(line) for line in (run_dir.path / "metrics.jsonl").read_text().splitlines()
    ]
    for record in rounds:
        # Its planning reply said it has no usable data: it gets no plan and is never sampled.
        assert record["clients"] == [21, 22] and record["refused"] == []
        assert record["rejected"] == []
    privacy = json.loads((run_dir.path / "privacy.json").read_text())["clients"]
    assert privacy["21"]["epsilon"] > 0 and privacy["22"]["epsilon"] > 0
    assert "23" not in privacy and "23" not in loop.ledger.plan  # spent nothing, asked nothing


def test_a_node_joining_mid_run_that_cannot_afford_one_round_is_left_out(
    tmp_path: Path, task_identity: None
) -> None:
    data = tmp_path / "data"
    write_dataset(data, seed=0, train=60, test=40, node_sizes=(400, 400, 4))
    # A fixed σ: the 4-row node pays q = 1 per step.
    config = tabular_config(data, {"dp.noise-multiplier": 3.0, "dp.budget": 1.2})
    grid = node_grid({20 + i: data / f"node-{i}.csv" for i in range(3)})
    grid.nodes.remove(22)  # it joins after the first round

    def tiny_node_joins(*_: object) -> None:
        if 22 not in grid.nodes:
            grid.nodes.append(22)

    run_dir = RunDirectory.create(tmp_path / "run")
    loop = RoundLoop(
        grid,
        config,
        run_dir,
        run_id=RUN_ID,
        run_tag="run",
        hooks=RunHooks(on_round=tiny_node_joins),
    )

    result = loop.run()

    assert result.rounds_completed == 2
    plan = loop.ledger.plan
    assert plan["22"].one_round_epsilon > config.dp_budget
    assert max(plan["20"].one_round_epsilon, plan["21"].one_round_epsilon) < config.dp_budget
    rounds = [
        json.loads(line) for line in (run_dir.path / "metrics.jsonl").read_text().splitlines()
    ]
    assert [record["clients"] for record in rounds] == [[20, 21], [20, 21]]


def test_a_node_without_a_plan_is_never_eligible(tmp_path: Path, task_identity: None) -> None:
    config = FedveilConfig.from_flat({"num-server-rounds": 1})
    loop = RoundLoop(
        ListGrid([21]), config, RunDirectory.create(tmp_path / "run"), run_id=1, run_tag="run"
    )
    loop.book.node_clients[21] = "3"  # a label, but no plan to hold its replies to

    assert not loop._eligible(21)
    loop.book.planned[21] = (1.0, 0.05, 40)
    assert loop._eligible(21)
