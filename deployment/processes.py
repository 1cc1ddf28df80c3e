"""Processes seen through ``/proc``: who they are, their trees, and their memory.

A pid alone can be reused once its process exits, so a process is named by its pid and its start
time (clock ticks since boot, ``/proc/<pid>/stat`` field 22); everything that signals or measures
a recorded process checks both. Linux only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

PAGE: Final = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` that identify a process and its place in the tree."""

    ppid: int
    pgrp: int
    start: int
    state: str

    @property
    def live(self) -> bool:
        """Whether the process runs (a zombie has exited)."""
        return self.state not in ("Z", "X")


def proc_stat(pid: int) -> ProcStat | None:
    """Return a process's ``ProcStat`` from ``/proc``, ``None`` if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return ProcStat(int(fields[1]), int(fields[2]), int(fields[19]), fields[0])


def start_time(pid: int) -> int | None:
    """Return a live, non-zombie process's start time (clock ticks since boot)."""
    stat = proc_stat(pid)
    return stat.start if stat is not None and stat.live else None


def live_processes() -> dict[int, ProcStat]:
    """Return the ``ProcStat`` of every live process, by pid (one scan of ``/proc``)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat is not None and stat.live:
                table[int(entry.name)] = stat
    return table


def descendants(pid: int, procs: Mapping[int, ProcStat] | None = None) -> list[tuple[int, int]]:
    """Return ``(pid, start time)`` of every live descendant of ``pid``, parents first."""
    children: dict[int, list[tuple[int, int]]] = {}
    for child, stat in (live_processes() if procs is None else procs).items():
        children.setdefault(stat.ppid, []).append((child, stat.start))
    found: list[tuple[int, int]] = []
    queue = [pid]
    while queue:
        for entry in children.get(queue.pop(0), []):
            found.append(entry)
            queue.append(entry[0])
    return found


def process_tree(leader: int, start: int) -> list[tuple[int, int]]:
    """Return a session leader's process, its descendants and its group's members.

    Group members count only if they started no earlier than the leader, so a process whose
    pid happens to equal a vanished leader's is never included; a leader whose pid now belongs
    to another process (another start time) contributes nothing but its old group.
    """
    procs = live_processes()  # one scan of /proc serves the leader and every group member
    tree: dict[int, int] = {}
    if leader in procs and procs[leader].start == start:
        tree[leader] = start
        tree.update(descendants(leader, procs))
    for pid, stat in procs.items():
        if stat.pgrp == leader and pid != leader and stat.start >= start:
            tree.setdefault(pid, stat.start)
            tree.update(descendants(pid, procs))
    return list(tree.items())


def subtree(root: int) -> list[int]:
    """Return ``root`` and the pids of its live descendants, parents first."""
    return [root, *(pid for pid, _ in descendants(root))]


def peak_rss_kib(pid: int) -> int | None:
    """Return a process's peak resident set size so far (``VmHWM``, KiB)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def cmdline(pid: int) -> str:
    """Return a process's command line, arguments joined by spaces (``""`` if it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def rss_bytes(pid: int) -> int:
    """Resident set size of one process from ``/proc/<pid>/statm`` (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def pss_bytes(pid: int) -> int:
    """Proportional set size from ``/proc/<pid>/smaps_rollup`` (0 if unreadable)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0
