"""Shared fixtures: calling the ClientApp directly, as a SuperNode does."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from common import protocol
from common.config import FedveilConfig
from common.sealing import AggregatorKeyPair

REPO = Path(__file__).resolve().parents[1]
RUN_ID = 4242


@pytest.fixture
def task_identity() -> Iterator[None]:
    """Set Flower's per-process task identity, which a Message needs outside a SuperNode.

    This is a private Flower API (``flwr.supercore.task_identity``); it is touched only here.
    """
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id = RUN_ID
    TaskIdentity.node_id = 0
    TaskIdentity.task_id = 1
    yield


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """A umask of 0: a file or folder made without an explicit mode would be world-readable."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture(scope="session")
def aggregator() -> AggregatorKeyPair:
    """One aggregator key pair for the test session."""
    return AggregatorKeyPair.generate()


@pytest.fixture
def train_request(task_identity: None, aggregator: AggregatorKeyPair) -> Callable[..., Message]:
    """Build a train request as the server sends it (``seal`` extras for fault injection)."""

    def make(config: FedveilConfig, arrays: ArrayRecord, server_round: int, **seal: Any) -> Message:
        content = RecordDict(
            {
                protocol.ARRAYS: arrays,
                protocol.CONFIG: protocol.config_record(config.to_flat(), server_round),
                protocol.SEAL: ConfigRecord({protocol.PUBLIC_KEY: aggregator.public_bytes, **seal}),
            }
        )
        msg = Message(content=content, dst_node_id=7, message_type=MessageType.TRAIN)
        return msg

    return make


NODE_ID = 7


def client_context(partition_id: int, num_partitions: int, **node: Any) -> Context:
    """A node's Context, as a SuperNode holds it across rounds."""
    return Context(
        run_id=RUN_ID,
        node_id=NODE_ID,
        node_config={"partition-id": partition_id, "num-partitions": num_partitions, **node},
        state=RecordDict(),
        run_config={},
    )
