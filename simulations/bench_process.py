"""Run a bench variant in its own process and sample its process tree's memory meanwhile.

``run_variant`` writes the config to the variant's folder, starts ``python -m simulations.bench
--child VARIANT`` there (output to ``child.log``), samples the summed RSS and PSS of the child's
process tree (the driver, Ray's processes, the actors) from ``/proc`` every ``sample_every``
seconds, and reads the child's ``result.json``. Shared pages count once per process in RSS,
proportionally in PSS. A failed child is a ``BenchError`` with the log's tail.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.config import FedveilConfig
from deployment.processes import pss_bytes, rss_bytes, subtree


class BenchError(RuntimeError):
    """A variant failed or produced no usable numbers."""


class TreeSampler:
    """Samples the summed RSS and PSS of a process tree in a thread; keeps the peaks."""

    def __init__(self, root: int, every: float) -> None:
        self.root = root
        self.every = every
        self.peak_rss = 0
        self.peak_pss = 0
        self.peak_processes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every)

    def sample(self) -> None:
        """Take one sample of the tree."""
        pids = subtree(self.root)
        self.peak_rss = max(self.peak_rss, sum(rss_bytes(p) for p in pids))
        self.peak_pss = max(self.peak_pss, sum(pss_bytes(p) for p in pids))
        self.peak_processes = max(self.peak_processes, len(pids))
        self.samples += 1

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class VariantRun:
    """A variant's child-process numbers and what the parent measured around it."""

    variant: str
    child: dict[str, Any]
    wall_seconds: float
    peak_rss: int
    peak_pss: int
    peak_processes: int


def run_variant(
    variant: str, config: FedveilConfig, out: Path, *, ray_address: str, sample_every: float
) -> VariantRun:
    """Run one variant in a child process while sampling its process tree's memory."""
    out.mkdir(parents=True, exist_ok=True)
    result = out / "result.json"
    (out / "config.json").write_text(json.dumps(config.to_flat()))
    cmd = [sys.executable, "-m", "simulations.bench", "--child", variant, "--child-dir", str(out)]
    if ray_address:
        cmd += ["--ray-address", ray_address]
    log_path = out / "child.log"
    started = time.perf_counter()
    with log_path.open("w") as log_fh:
        proc = subprocess.Popen(cmd, stdout=log_fh, stderr=subprocess.STDOUT)  # noqa: S603
        with TreeSampler(proc.pid, sample_every) as sampler:
            code = proc.wait()
    wall = time.perf_counter() - started
    if code != 0 or not result.exists():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise BenchError(f"the {variant} variant failed (exit {code}); log {log_path}:\n{tail}")
    return VariantRun(
        variant,
        json.loads(result.read_text()),
        wall,
        sampler.peak_rss,
        sampler.peak_pss,
        sampler.peak_processes,
    )
