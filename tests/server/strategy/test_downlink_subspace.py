"""CompressedDownlink under a shared subspace, and the task's initial model as the first base.

The global model below moves, each round, only inside the previous round's subspace (as
aggregating subspace updates does), unless a test moves it elsewhere too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Message

from common import protocol, subspace
from common.config import FedveilConfig
from common.downlink import HEADER_LEN, digest, zero_digest
from common.task import task_of
from common.weights import flatten, unflatten
from tests.conftest import RUN_ID
from tests.server.strategy.downlink_federation import SHAPES, SIZE, Federation, node_context

NODES = [11, 12, 13]
FRACTION = 0.1
CONFIG = FedveilConfig.from_flat(
    {
        "num-server-rounds": 6,
        "sim.clients": 4,
        "codec.mask": "subspace",
        "codec.topk": FRACTION,
    }
)
INITIAL = flatten({k: v.numpy() for k, v in task_of(CONFIG).build_model().state_dict().items()})


def _records(vector: np.ndarray) -> ArrayRecord:
    return ArrayRecord(
        {k: Array(np.ascontiguousarray(v)) for k, v in unflatten(vector, SHAPES).items()}
    )


def _global(server_round: int, elsewhere_in: int | None = None) -> np.ndarray:
    """The initial model plus one step per finished round, inside that round's subspace."""
    model = INITIAL.copy()
    for done in range(1, server_round):
        mask = subspace.round_mask(RUN_ID, done, SIZE, FRACTION)
        step = np.random.default_rng(done).standard_normal(SIZE).astype(np.float32)
        model += np.where(mask, 0.01 * step, 0).astype(np.float32)
        if done == elsewhere_in:
            model[~mask] += 0.001 * step[~mask]
    return model


def _federation(tmp_path: Path, elsewhere_in: int | None = None, **kwargs: object) -> Federation:
    contexts = {n: node_context(n, tmp_path / f"node-{n}") for n in NODES}
    defaults: dict[str, object] = {
        "config": CONFIG,
        "models": lambda r: _records(_global(r, elsewhere_in)),
        "initial": INITIAL,
        "subspace_fraction": FRACTION,
    }
    return Federation(contexts, **{**defaults, **kwargs})  # type: ignore[arg-type]


def _blob(request: Message) -> bytes:
    value = request.content.config_records[protocol.DOWNLINK][protocol.DOWNLINK_BLOB]
    assert isinstance(value, bytes)
    return value


def _sizes(requests: list[Message]) -> dict[int, int]:
    return {int(r.metadata.dst_node_id): len(_blob(r)) for r in requests}


def test_the_first_model_is_named_not_sent_when_it_is_the_tasks_initial_one(
    tmp_path: Path,
) -> None:
    fed = _federation(tmp_path)

    requests = fed.round(1, NODES)

    assert {_blob(r)[HEADER_LEN - 68 : HEADER_LEN - 36] for r in requests} == {digest(INITIAL)}
    assert max(_sizes(requests).values()) < 300  # header, signature and an all-zero change
    for node in NODES:
        np.testing.assert_array_equal(fed.rebuilt[node], INITIAL)


def test_a_node_one_round_behind_gets_only_the_change_inside_the_subspace(
    tmp_path: Path,
) -> None:
    fed = _federation(tmp_path)
    fed.round(1, NODES)

    for server_round in range(2, 6):
        requests = fed.round(server_round, NODES)
        assert not fed.book.outcome.rejected
        kept = int(FRACTION * SIZE) + 1
        # 8 bits a kept value, its scales, a seed and the fixed header and signature.
        assert max(_sizes(requests).values()) < kept + kept // 64 + 400
        truth = _global(server_round)
        for node in NODES:
            assert digest(fed.rebuilt[node]) == fed.server.held[node]
            # Every moved coordinate was sent: only 8-bit rounding separates node and server.
            assert float(np.abs(fed.rebuilt[node] - truth).max()) < 0.01 * 4 / 127


def test_a_model_that_moved_outside_the_subspace_is_sent_whole(tmp_path: Path) -> None:
    fed = _federation(tmp_path, elsewhere_in=2)
    fed.round(1, NODES)
    fed.round(2, NODES)

    requests = fed.round(3, NODES)

    assert min(_sizes(requests).values()) > SIZE // 2  # dense: 8 bits for every coordinate
    for node in NODES:
        assert float(np.abs(fed.rebuilt[node] - _global(3, elsewhere_in=2)).max()) < 1e-3


def test_a_node_that_missed_a_round_gets_its_change_whole(tmp_path: Path) -> None:
    fed = _federation(tmp_path)
    fed.round(1, NODES)
    fed.round(2, [11, 12])

    sizes = _sizes(fed.round(3, NODES))

    assert sizes[13] > SIZE // 2 > sizes[11]
    assert not fed.book.outcome.rejected
    assert float(np.abs(fed.rebuilt[13] - _global(3)).max()) < 0.01


def test_a_node_whose_initial_model_differs_refuses_it_then_gets_the_model_from_zeros(
    tmp_path: Path,
) -> None:
    other = (INITIAL + np.float32(1e-3)).astype(np.float32)
    fed = _federation(
        tmp_path, initial=other, models=lambda r: _records(other), subspace_fraction=None
    )

    fed.round(1, NODES)
    assert {r.reason for r in fed.book.outcome.rejected} == {protocol.CAUSE_DOWNLINK_BASE}
    requests = fed.round(2, NODES)

    assert {_blob(r)[HEADER_LEN - 68 : HEADER_LEN - 36] for r in requests} == {zero_digest(SIZE)}
    assert not fed.book.outcome.rejected
    for node in NODES:
        assert float(np.abs(fed.rebuilt[node] - other).max()) < 0.01


def test_a_node_refuses_a_sparse_change_its_run_config_does_not_expect(tmp_path: Path) -> None:
    dense_config = FedveilConfig.from_flat({"num-server-rounds": 6, "sim.clients": 4})
    fed = _federation(tmp_path)
    fed.round(1, NODES)
    fed.config = dense_config  # the nodes read codec.topk = 1 from the request

    fed.round(2, NODES)

    assert {r.reason for r in fed.book.outcome.rejected} == {protocol.CAUSE_DOWNLINK}
