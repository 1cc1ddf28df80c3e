"""End to end through the round loop: liars, failures and absurd DP facts are rejected and charged.

Six nodes answer the planning query honestly, then: two train honestly, one declares less noise
than it was assigned, one fails after training (a Flower error carrying a traceback), one seals
σ = 1e-300 and one declares 1e300 steps in the clear. The rounds go on, the honest updates are
aggregated, every node that trained is charged at least its plan, and the report reads the run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from flwr.app import Message, MessageType

from common import protocol
from common.accounting import epsilon_from_history
from common.codec import CodecParams
from common.config import FedveilConfig
from common.task import task_of
from report.analysis import analyse
from server.ledger import DP_FACTS, ERROR_AFTER_TRAINING, UNACCOUNTABLE
from server.round_loop import RoundLoop
from server.rundir import RunDirectory
from tests.conftest import RUN_ID
from tests.server.hostile import Behaviour, Sealing, plan_reply, train_reply
from tests.server.strategy.fakes import ListGrid

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the (largest|smallest) alpha")

RATE, STEPS, SIGMA = 0.05, 40, 1.0
ACTS = {
    21: Behaviour("honest"),
    22: Behaviour("declares", facts=(0.5, RATE, float(STEPS)), sealed_steps=STEPS),
    23: Behaviour("error"),
    24: Behaviour("declares", facts=(1e-300, RATE, float(STEPS)), sealed_steps=STEPS),
    25: Behaviour("clear-differs", facts=(SIGMA, RATE, 1e300), sealed_steps=STEPS),
    26: Behaviour("honest"),
}


def _respond(config: FedveilConfig) -> ListGrid:
    def respond(request: Message) -> Message | None:
        node = int(request.metadata.dst_node_id)
        to = request.metadata.message_id
        if request.metadata.message_type == MessageType.QUERY:
            return plan_reply(node, node - 20, RATE, STEPS, to=to)
        content = request.content
        sigma = float(content.config_records[protocol.DP][protocol.ASSIGNED_NOISE])  # type: ignore[arg-type]
        sealing = Sealing(
            RUN_ID,
            CodecParams(topk=config.codec_topk, bits=config.codec_bits),
            sum(v.numel() for v in task_of(config).build_model().state_dict().values()),
            content.config_records[protocol.SEAL][protocol.PUBLIC_KEY],  # type: ignore[arg-type]
        )
        server_round = int(content.config_records[protocol.CONFIG][protocol.SERVER_ROUND])  # type: ignore[arg-type]
        return train_reply(
            node,
            ACTS[node],
            label=node - 20,
            planned=(sigma, RATE, STEPS),
            server_round=server_round,
            sealing=sealing,
            to=to,
        )

    return ListGrid(sorted(ACTS), respond)


def test_liars_failures_and_absurd_facts_are_rejected_charged_and_the_rounds_go_on(
    tmp_path: Path, task_identity: None
) -> None:
    config = FedveilConfig.from_flat(
        {"num-server-rounds": 2, "dp.noise-multiplier": SIGMA, "fraction-train": 1.0}
    )
    run_dir = RunDirectory.create(tmp_path / "run")
    loop = RoundLoop(_respond(config), config, run_dir, run_id=RUN_ID, run_tag="run")

    result = loop.run()

    assert result.rounds_completed == 2
    rows = [json.loads(line) for line in (run_dir.path / "metrics.jsonl").read_text().splitlines()]
    first = {r["node"]: (r["reason"], r["detail"]) for r in rows[0]["rejected"]}
    assert rows[0]["clients"] == rows[1]["clients"] == [21, 26]
    assert {node: reason for node, (reason, _) in first.items()} == {
        22: "dp-facts",
        23: "error",
        24: "dp-facts",
        25: "tamper",
    }
    assert first[23][1] == "client app failed (Flower error 2: FloatingPointError)"
    assert "σ=0.5" in first[22][1] and "σ=1" in first[22][1]  # declared against planned
    # After round 1 only node 23 is asked again: 22's declared σ spent its budget, 24 and 25
    # declared facts no finite ε covers, so their accounts are closed.
    assert [r["node"] for r in rows[1]["rejected"]] == [23]
    # Downlink: signed 8-bit changes to each sampled node, about a quarter of dense float32.
    dense = rows[0]["bytes_dense"] // len(rows[0]["clients"])  # one update of the model
    assert 0 < rows[0]["bytes_down"] < len(ACTS) * dense / 3
    assert 0 < rows[1]["bytes_down"] < rows[0]["bytes_down"]  # fewer nodes asked

    clients = json.loads((run_dir.path / "privacy.json").read_text())["clients"]
    plan = (SIGMA, RATE, STEPS)

    def eps(*entries: tuple[float, float, int]) -> float:
        return epsilon_from_history(list(entries), delta=config.dp_delta, accountant="rdp")

    assert clients["21"]["epsilon"] == pytest.approx(eps(plan, plan))
    liar = clients["22"]
    assert liar["history"] == [[0.5, RATE, STEPS]]  # the larger ε: what it declared
    assert liar["flags"] == [DP_FACTS] and liar["exhausted"]
    assert liar["epsilon"] == pytest.approx(eps((0.5, RATE, STEPS)))
    assert liar["epsilon"] > config.dp_budget  # it said it spent more than allowed
    assert clients["23"]["history"] == [list(plan)] * 2  # charged from its plan
    assert clients["23"]["flags"] == [ERROR_AFTER_TRAINING]
    for closed in ("24", "25"):
        c = clients[closed]
        assert c["rounds"] == [1] and c["exhausted"] and UNACCOUNTABLE in c["flags"]
        assert math.isfinite(c["epsilon"]) and c["epsilon"] > eps(plan)
    assert {c["label"] for c in clients.values()} == {"1", "2", "3", "4", "5", "6"}

    analysis = analyse(run_dir.path)  # the report reads and re-checks the whole run
    assert "ε is a lower bound" in analysis.status["24"]
