"""The edge footprint of a local federation: what a SuperNode's processes cost in memory.

A thread samples, every ``interval`` seconds, each SuperNode's process tree (one ``/proc`` scan
per sample). Every ``flwr-clientapp`` process is one message handled: its peak RSS (``VmHWM``)
and its lifetime are recorded when it exits. The long-lived daemons (``flower-supernode`` and
its ``flower-superexec``) get their peak RSS. Units: MiB and seconds. A process that exits
between two samples is missed, so the count of messages is a lower bound.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections.abc import Sequence
from typing import Any

from deployment.processes import cmdline, descendants, live_processes, peak_rss_kib
from deployment.supervisor import NODE_PREFIX, ProcessTable


def footprint_summary(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Summarise per-message ClientApp peaks: count, max and median peak RSS, median seconds."""
    peaks = [float(s["peak_rss_mib"]) for s in samples]
    seconds = [float(s["seconds"]) for s in samples]
    if not peaks:
        return {"messages": 0}
    return {
        "messages": len(peaks),
        "peak_rss_mib_max": round(max(peaks), 1),
        "peak_rss_mib_median": round(statistics.median(peaks), 1),
        "seconds_median": round(statistics.median(seconds), 2),
    }


class FootprintMonitor(threading.Thread):
    """Samples each SuperNode's ``flwr-clientapp`` processes: peak RSS and lifetime per message."""

    def __init__(self, table: ProcessTable, interval: float = 0.5) -> None:
        super().__init__(name="fedveil-footprint", daemon=True)
        self.table = table
        self.interval = interval
        self.samples: list[dict[str, Any]] = []
        self.daemons: dict[str, float] = {}
        self._live: dict[tuple[int, int], dict[str, Any]] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        """Sample until stopped."""
        while not self._halt.wait(self.interval):
            with contextlib.suppress(Exception):  # a process may vanish mid-read
                self._sample()
        self._close_finished(set())

    def stop(self) -> None:
        """Stop sampling and finish the open records."""
        self._halt.set()
        self.join(timeout=5)

    def _sample(self) -> None:
        seen: set[tuple[int, int]] = set()
        procs = live_processes()  # one scan of /proc per sample: this runs beside training
        for name, managed in list(self.table.procs.items()):
            if not name.startswith(NODE_PREFIX):
                continue
            for pid, start in [(managed.pid, managed.start), *descendants(managed.pid, procs)]:
                rss = peak_rss_kib(pid)
                if rss is None:
                    continue
                command = cmdline(pid)
                if "flwr-clientapp" in command:
                    key = (pid, start)
                    seen.add(key)
                    record = self._live.setdefault(
                        key, {"node": name, "pid": pid, "first": time.monotonic(), "kib": 0}
                    )
                    record["kib"] = max(record["kib"], rss)
                    record["last"] = time.monotonic()
                else:
                    role = "superexec" if "flower-superexec" in command else "supernode"
                    label = f"{name}/{role}"
                    self.daemons[label] = max(self.daemons.get(label, 0.0), rss / 1024)
        self._close_finished(seen)

    def _close_finished(self, seen: set[tuple[int, int]]) -> None:
        for key in [k for k in self._live if k not in seen]:
            record = self._live.pop(key)
            self.samples.append(
                {
                    "node": record["node"],
                    "pid": record["pid"],
                    "peak_rss_mib": round(record["kib"] / 1024, 1),
                    "seconds": round(record.get("last", record["first"]) - record["first"], 2),
                }
            )

    def report(self) -> dict[str, Any]:
        """Return the measurements: per message, summary, and the daemons' peak RSS (MiB)."""
        return {
            "clientapp": footprint_summary(self.samples),
            "daemons_peak_rss_mib": {k: round(v, 1) for k, v in sorted(self.daemons.items())},
            "messages": self.samples,
        }
