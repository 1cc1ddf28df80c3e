"""A deployed ClientApp caps oneDNN's kernel cache unless the node's owner chose a size."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_PROBE = """
import os, client.app
imported = os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "unset")
next(client.app.cap_kernel_cache(None))
print(imported, os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"])
"""


@pytest.mark.parametrize(("owner", "expected"), [(None, "unset 0"), ("256", "256 256")])
def test_the_apps_lifespan_caps_the_cache_unless_the_owner_did_and_import_alone_does_not(
    owner: str | None, expected: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    if owner is not None:
        env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = owner
    # A fresh interpreter: this test process may have imported client.app already.
    out = subprocess.check_output([sys.executable, "-c", _PROBE], cwd=REPO, env=env, text=True)

    # Importing (as a simulation does for its own ClientApp) leaves the cache alone.
    assert out.strip().splitlines()[-1] == expected


@pytest.mark.parametrize("deployed", [True, False])
def test_only_the_deployed_app_caps_the_cache(
    deployed: bool, task_identity: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flwr.app import Context, Message, RecordDict

    from client.app import app
    from common.config import FedveilConfig
    from simulations.adversary.client import simulated_client_app

    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    chosen = app if deployed else simulated_client_app(FedveilConfig.from_flat({}))
    # fedveil registers no evaluate handler: the app runs its lifespan, then refuses the message.
    msg = Message(content=RecordDict(), dst_node_id=7, message_type="evaluate")
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    with pytest.raises(ValueError, match="evaluate"):
        chosen(msg, context)

    assert os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY") == ("0" if deployed else None)
