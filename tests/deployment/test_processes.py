"""``/proc`` helpers: a process tree and its memory."""

from __future__ import annotations

import os
import subprocess
import sys

from deployment.processes import rss_bytes, subtree


def test_subtree_finds_a_child_and_its_memory() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "up"
        tree = subtree(os.getpid())

        assert tree[0] == os.getpid()
        assert child.pid in tree
        assert rss_bytes(child.pid) > 1_000_000
    finally:
        child.kill()
        child.wait()


def test_gone_process_has_no_memory() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()

    assert rss_bytes(child.pid) == 0
    assert subtree(child.pid) == [child.pid]
