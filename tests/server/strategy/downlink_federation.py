"""A server's ``CompressedDownlink`` and real client steps, wired through a fake Grid.

``Federation.round`` drives one round as ``BudgetAwareSampling`` would (open the round in the
book, build requests, record them, send, aggregate); each node answers with the client's own
``read_request`` (the downlink checks and references of ``client.downlink``) and ``with_digest``,
without training. ``relay`` may alter requests on their way; ``lose`` drops replies; ``models``
gives each round's global model (``model_at`` by default).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

from client import training_round as steps
from client.downlink import with_digest
from common import protocol
from common.config import FedveilConfig
from common.crypto.signing import SigningKey, derive_signing_key
from common.sealing import AggregatorKeyPair
from common.task import task_of
from common.weights import flatten, unflatten
from server.strategy.downlink import CompressedDownlink
from server.strategy.round_book import RoundBook
from tests.conftest import RUN_ID
from tests.server.strategy.fakes import ListGrid, RecordingStrategy, reply_from

CONFIG = FedveilConfig.from_flat({"num-server-rounds": 6, "sim.clients": 4})
SHAPES = {k: tuple(v.shape) for k, v in task_of(CONFIG).build_model().state_dict().items()}
SIZE = sum(int(np.prod(s)) for s in SHAPES.values())

Relay = Callable[[Message], None]


def model_at(server_round: int) -> ArrayRecord:
    """The global model of ``server_round``: the task's initial model, moved a little per round."""
    base = flatten(dict(task_of(CONFIG).build_model().state_dict()))
    direction = np.random.default_rng(0).standard_normal(SIZE)
    moved = (base + 0.002 * server_round * direction).astype(np.float32)
    return ArrayRecord(
        {k: Array(np.ascontiguousarray(v)) for k, v in unflatten(moved, SHAPES).items()}
    )


def node_context(node: int, state_dir: Path | None = None, **node_config: str) -> Context:
    """A node's context; ``state_dir`` keeps its state on disk (else in memory only)."""
    config: dict[str, bool | float | int | str] = {
        "partition-id": node % 4,
        "num-partitions": 4,
        **node_config,
    }
    if state_dir is not None:
        config["state-dir"] = str(state_dir)
    return Context(
        run_id=RUN_ID, node_id=node, node_config=config, state=RecordDict(), run_config={}
    )


@dataclass
class Federation:
    """One server wrapper and the nodes it talks to."""

    contexts: dict[int, Context]
    bits: int = 8
    keypair: AggregatorKeyPair = field(default_factory=AggregatorKeyPair.generate)
    book: RoundBook = field(default_factory=RoundBook)
    inner: RecordingStrategy = field(default_factory=RecordingStrategy)
    relay: Relay | None = None
    lose: set[int] = field(default_factory=set)
    config: FedveilConfig = CONFIG
    models: Callable[[int], ArrayRecord] = model_at
    initial: np.ndarray | None = None
    subspace_fraction: float | None = None
    rebuilt: dict[int, np.ndarray] = field(default_factory=dict)
    replies: dict[int, RecordDict] = field(default_factory=dict)
    server: CompressedDownlink = field(init=False)

    def __post_init__(self) -> None:
        self.restart_server()

    @property
    def signer(self) -> SigningKey:
        """The aggregator's signing key."""
        return derive_signing_key(self.keypair)

    def restart_server(self) -> None:
        """Start the server's wrapper afresh: it forgets every node's reference."""
        self.server = CompressedDownlink(
            self.inner,
            signer=self.signer,
            run_id=RUN_ID,
            bits=self.bits,
            shapes=SHAPES,
            book=self.book,
            initial=self.initial,
            subspace_fraction=self.subspace_fraction,
        )

    def round(self, server_round: int, nodes: list[int]) -> list[Message]:
        """Run ``server_round`` with ``nodes`` sampled; return the requests as sent."""
        self.book.start(server_round, nodes)
        config = protocol.config_record(self.config.to_client_flat(), server_round)
        config[protocol.RUN_TAG] = "run"
        requests = list(
            self.server.configure_train(
                server_round, self.models(server_round), config, ListGrid(nodes)
            )
        )
        self.book.sent(requests)
        self.replies = {}
        replies = ListGrid(nodes, self._respond).send_and_receive(requests)
        self.server.aggregate_train(server_round, replies)
        return requests

    def _respond(self, request: Message) -> Message | None:
        node = int(request.metadata.dst_node_id)
        if self.relay is not None:
            self.relay(request)
        content = RecordDict(dict(request.content.items()))
        content[protocol.SEAL] = ConfigRecord({protocol.PUBLIC_KEY: self.keypair.public_bytes})
        delivered = Message(content=content, dst_node_id=node, message_type=MessageType.TRAIN)
        read = steps.read_request(delivered, self.contexts[node])
        if read.refusal is not None:
            reply = read.refusal
        else:
            self.rebuilt[node] = flatten({k: read.global_arrays[k].numpy() for k in SHAPES})
            reply = with_digest(
                read.downlink_digest,
                RecordDict(
                    {
                        protocol.METRICS: MetricRecord({protocol.CLIENT_ID: float(node % 4)}),
                        protocol.STATUS: ConfigRecord({"status": protocol.STATUS_TRAINED}),
                    }
                ),
            )
        self.replies[node] = reply
        if node in self.lose:
            return None
        return reply_from(node, reply, to=request.metadata.message_id)
