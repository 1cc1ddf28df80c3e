"""The black-box audit: canaries sized by the plan, scored by the final model's loss, end to end.

The round-loop test drives ``RoundLoop`` with the real ClientApp called in-process (no Flower
engine), on the tabular CSV example.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import MessageType
from torch import nn

from common import protocol
from common.accounting import sample_rate
from common.audit_inputs import InputCanarySpec
from common.config import FedveilConfig
from common.task import task_of
from examples.tabular_csv.make_data import write_dataset
from server.audit import build_auditor
from server.audit_black_box import AUTO_SHARE, BlackBoxAuditor, slot_count
from server.round_loop import RoundLoop
from server.rundir import RunDirectory
from tests.conftest import RUN_ID
from tests.server.tabular_nodes import node_grid, tabular_config

DELTA = 1e-5


def test_canaries_are_a_share_of_the_fewest_examples_the_plan_allows() -> None:
    # q = 1/5 with batches of 32: the client has between 129 and 160 examples.
    assert slot_count(0, sample_rate=0.2, batch_size=32) == int(AUTO_SHARE * 129)
    assert slot_count(40, sample_rate=0.2, batch_size=32) == 40
    assert slot_count(500, sample_rate=0.2, batch_size=32) == 129  # never more than its rows
    assert slot_count(0, sample_rate=1.0, batch_size=32) == 1


def _auditor(canaries: int) -> BlackBoxAuditor:
    return BlackBoxAuditor(
        (6,), 3, low=-1.0, high=1.0, canaries=canaries, batch_size=8, delta=DELTA
    )


def test_each_client_keeps_its_own_canaries_across_rounds() -> None:
    auditor = _auditor(40)
    a = auditor.canaries_for("a", sample_rate=0.01)
    assert auditor.canaries_for("a", sample_rate=0.5) == a  # sized once, kept all run
    b = auditor.canaries_for("b", sample_rate=0.01)
    assert a.inputs_seed != b.inputs_seed and a.bits_seed != b.bits_seed
    assert auditor.is_audited("a") and not auditor.is_audited("c")


def test_a_model_that_fits_the_included_canaries_gives_them_lower_loss() -> None:
    auditor = _auditor(200)
    spec = auditor.canaries_for("0", sample_rate=0.001)
    included = spec.included()
    inputs = torch.from_numpy(spec.inputs((6,))[included])
    labels = torch.from_numpy(spec.labels(3)[included])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 64), nn.ReLU(), nn.Linear(64, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(300):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(inputs), labels)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()

    scores = auditor.scores("0", model)
    assert scores[included].mean() > scores[~included].mean()
    result = auditor.result("0", model)
    assert result.m == 200 and result.guesses > 0
    # Some excluded canaries' random labels are what the model predicts anyway: not all right.
    assert result.correct > 0.8 * result.guesses
    assert result.epsilon_lower_bound > 0
    [(client, entry)] = auditor.score(model).items()
    assert client == "0" and entry.mode == "black-box"
    assert entry.epsilon_lower_bound == result.epsilon_lower_bound


def test_an_untrained_model_proves_nothing() -> None:
    auditor = _auditor(200)
    auditor.canaries_for("0", sample_rate=0.001)
    torch.manual_seed(0)
    assert auditor.result("0", nn.Linear(6, 3)).epsilon_lower_bound == 0.0


def test_build_auditor_draws_inputs_in_the_range_of_the_servers_test_examples() -> None:
    config = FedveilConfig.from_flat({"privacy.audit": True, "privacy.audit-mode": "black-box"})
    auditor = build_auditor(config, RUN_ID)
    assert isinstance(auditor, BlackBoxAuditor)
    task = task_of(config)
    test = task.test_examples().inputs
    assert (auditor.low, auditor.high) == (float(test.min()), float(test.max()))
    assert auditor.input_shape == task.input_shape
    spec = auditor.canaries_for("0", sample_rate=0.1)
    assert isinstance(spec, InputCanarySpec)
    drawn = spec.inputs(task.input_shape)
    assert drawn.min() >= auditor.low and drawn.max() <= auditor.high


@pytest.mark.filterwarnings("ignore:Optimal order is the (largest|smallest) alpha")
def test_the_round_loop_scores_the_final_model_and_records_each_clients_audit(
    tmp_path: Path, task_identity: None
) -> None:
    data = tmp_path / "data"
    # Just above multiples of the batch size (64): one row fewer would raise q above the plan.
    write_dataset(data, seed=0, train=60, test=40, node_sizes=(129, 193))
    config = tabular_config(data, {"privacy.audit": True, "privacy.audit-mode": "black-box"})
    grid = node_grid({20 + i: data / f"node-{i}.csv" for i in range(2)})
    run_dir = RunDirectory.create(tmp_path / "run")
    loop = RoundLoop(grid, config, run_dir, run_id=RUN_ID, run_tag="run")

    assert loop.run().rounds_completed == 2

    rounds = [
        json.loads(line) for line in (run_dir.path / "metrics.jsonl").read_text().splitlines()
    ]
    # Canary slots keep each node's row count: its DP facts match its plan, nothing is rejected.
    assert [(r["clients"], r["rejected"]) for r in rounds] == [([20, 21], [])] * 2
    trains = [m for m in grid.sent if m.metadata.message_type == MessageType.TRAIN]
    records = {
        int(m.metadata.dst_node_id): dict(m.content.config_records[protocol.AUDIT]) for m in trains
    }
    clients = json.loads((run_dir.path / "privacy.json").read_text())["clients"]
    assert set(clients) == {"20", "21"}
    for node, rows in ((20, 129), (21, 193)):
        record = records[node]
        assert record[protocol.AUDIT_MODE] == "black-box"
        rate = sample_rate(rows, config.batch_size)
        m = slot_count(0, sample_rate=rate, batch_size=config.batch_size)
        assert record[protocol.AUDIT_CANARIES] == m
        audit = clients[str(node)]["audit"]
        assert audit["mode"] == "black-box" and audit["m"] == m
        assert audit["epsilon_accountant"] == clients[str(node)]["epsilon"] > 0
        assert 0 < audit["guesses"] <= m
        assert 0 <= audit["epsilon_lower_bound"] <= audit["epsilon_accountant"]
        # The entry is the auditor's score of the final model the run wrote.
        auditor = loop.stack.auditor if loop.stack else None
        assert isinstance(auditor, BlackBoxAuditor)
        assert np.isfinite(auditor.scores(str(node), loop.model)).all()
