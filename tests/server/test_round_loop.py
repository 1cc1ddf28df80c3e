"""The round loop's messages: clients receive the keys a client needs and no server-only key."""

from __future__ import annotations

from pathlib import Path

from flwr.app import MessageType

from common import protocol
from common.config import CLIENT_KEYS, KEYS, FedveilConfig
from server.round_loop import RoundLoop
from server.rundir import RunDirectory
from tests.server.strategy.fakes import ListGrid

SERVER_ONLY = set(KEYS) - set(CLIENT_KEYS)


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
    grid = ListGrid([21, 22, 23])  # nobody answers: the round ends with three no-replies
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
            {protocol.ARRAYS, protocol.CONFIG, protocol.SEAL, protocol.DP}
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
