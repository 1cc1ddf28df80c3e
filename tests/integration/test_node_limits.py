"""A node's own limit holds in a whole simulation: the node refuses, the run goes on.

Flower's simulation engine gives every node the same generated node config (its partition),
so the driver below installs a test-only ClientApp mod that adds ``max-rounds = 1`` to partition
0's node config, as its device owner would with ``--node-config``; everything else is
``fedveil simulate`` as a user runs it.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tests.integration.cli import python
from tests.integration.run_files import metrics_rows, privacy

pytestmark = pytest.mark.slow

DRIVER = textwrap.dedent(
    """
    import sys

    from flwr.clientapp import ClientApp

    import simulations.adversary.client as simulated
    from client.app import query, train
    from simulations import cli


    def owner_limit(msg, ctx, call_next):
        if ctx.node_config.get("partition-id") == 0:
            ctx.node_config["max-rounds"] = 1
        return call_next(msg, ctx)


    def limited_app(config):
        app = ClientApp(mods=[owner_limit])
        app.train()(train)
        app.query()(query)
        return app


    simulated.simulated_client_app = limited_app
    sys.exit(cli.main(sys.argv[1:]))
    """
)


def test_a_node_past_its_own_max_rounds_refuses_and_the_others_go_on(tmp_path: Path) -> None:
    run = tmp_path / "run"
    # The run's budget allows both rounds for everyone; only partition 0's owner says one.
    args = ["simulate", "--config", "quick", "--out", str(run), "--set", "num-server-rounds=2"]
    done = python("-c", DRIVER, *args, timeout=600)

    assert done.returncode == 0, done.stderr[-3000:]
    rows = metrics_rows(run)
    assert [r["round"] for r in rows] == [1, 2]
    assert len(rows[0]["clients"]) == 3
    assert len(rows[1]["clients"]) == 2  # the round went on without the refusing node
    ledger = privacy(run)
    charged = sorted(len(client["rounds"]) for client in ledger["clients"].values())
    assert charged == [1, 2, 2]  # the refusal spent nothing
    # Each node's own state: partition 0 trained once, as its owner allowed.
    states = run / "client-state"
    trained = {
        p: json.loads((states / f"partition-{p}" / "privacy.json").read_text())["rounds"]
        for p in range(3)
    }
    assert trained == {0: [1], 1: [1, 2], 2: [1, 2]}
