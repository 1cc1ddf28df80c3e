"""The ClientApp module caps oneDNN's kernel cache unless the node's owner chose a size."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_PROBE = "import os, client.app; print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])"


@pytest.mark.parametrize(("owner", "expected"), [(None, "0"), ("256", "256")])
def test_importing_the_app_sets_the_cache_capacity_unless_the_owner_did(
    owner: str | None, expected: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    if owner is not None:
        env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = owner
    # A fresh interpreter: this test process may have imported client.app already.
    out = subprocess.check_output([sys.executable, "-c", _PROBE], cwd=REPO, env=env, text=True)

    assert out.strip().splitlines()[-1] == expected
