"""Starting and stopping a federation's processes, and only those.

Each process is started in a session of its own and recorded in ``pids.json`` with its start
time (see ``deployment.processes``). Stopping signals the recorded process, its descendants and
its group's members one pid at a time, each checked by start time first, so a reused pid is
never hit and nothing is ever killed by name; what outlives the grace period gets SIGKILL.
``reap_stale`` stops what a killed orchestrator left behind, the same way. Order matters: the
ServerApp (inside the SuperLink's tree) goes before the SuperNodes (see ``stop_order``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from deployment.processes import process_tree, start_time

STOP_GRACE: Final = 10.0
NODE_PREFIX: Final = "supernode-"


@dataclass
class Managed:
    """One process this federation started."""

    name: str
    command: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes]
    start: int
    log_file: IO[bytes]
    offset: int = 0

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.popen.poll() is None


class ProcessTable:
    """Starts, records (``pids.json``) and stops a federation's processes, and only those."""

    def __init__(self, record: Path, cwd: Path) -> None:
        self.record = record
        self.cwd = cwd
        self.procs: dict[str, Managed] = {}
        self._lock = threading.Lock()
        self._wrote_record = False

    def start(
        self,
        name: str,
        command: list[str],
        env: dict[str, str],
        log_path: Path,
        *,
        cwd: Path | None = None,
    ) -> Managed:
        """Start ``command`` in a new session (in ``cwd``, else the table's folder).

        Its output is appended to ``log_path``.
        """
        log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = log_path.stat().st_size if log_path.exists() else 0
        log_file = log_path.open("ab")
        log_file.write(f"\n--- fedveil: {' '.join(command)}\n".encode())
        log_file.flush()
        popen = subprocess.Popen(  # noqa: S603 (our own command line, no shell)
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd or self.cwd,
            start_new_session=True,
        )
        managed = Managed(
            name, command, env, log_path, popen, start_time(popen.pid) or 0, log_file, offset
        )
        with self._lock:
            self.procs[name] = managed
            self._save()
        return managed

    def _save(self) -> None:
        doc = [{"name": m.name, "pid": m.pid, "start": m.start} for m in self.procs.values()]
        tmp = self.record.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        tmp.replace(self.record)
        self._wrote_record = True

    def stop(self, name: str, *, sig: int = signal.SIGTERM, grace: float = STOP_GRACE) -> None:
        """Stop one process, its process group and every descendant; SIGKILL after ``grace``."""
        managed = self.procs.get(name)
        if managed is None:
            return
        tree = process_tree(managed.pid, managed.start)
        stop_tree(tree, sig=sig, grace=grace, popen=managed.popen)
        managed.popen.poll()
        managed.log_file.close()

    def stop_all(self, *, grace: float = STOP_GRACE) -> None:
        """Stop every process: ``flwr run``, the SuperLink with its ServerApp, then nodes."""
        for name in stop_order(list(self.procs)):
            self.stop(name, grace=grace)
        with self._lock:
            self.procs.clear()
            if self._wrote_record:  # never another orchestrator's record
                self.record.unlink(missing_ok=True)

    @staticmethod
    def reap_stale(record: Path) -> list[str]:
        """Stop what a killed orchestrator left running (verified by start time); return names."""
        try:
            doc = json.loads(record.read_text())
        except (OSError, ValueError):
            return []
        entries: dict[str, tuple[int, int]] = {}
        for entry in doc if isinstance(doc, list) else []:
            with contextlib.suppress(KeyError, TypeError, ValueError):
                entries[str(entry["name"])] = (int(entry["pid"]), int(entry["start"]))
        stopped = []
        for name in stop_order(list(entries)):
            tree = process_tree(*entries[name])
            if tree:
                stop_tree(tree, sig=signal.SIGTERM, grace=5.0, popen=None)
                stopped.append(name)
        record.unlink(missing_ok=True)
        return stopped


def stop_order(names: Sequence[str]) -> list[str]:
    """Order in which to stop processes started as ``names``: the newest first, but nodes last.

    The ServerApp (inside the SuperLink's tree) must go before the SuperNodes: stopped the
    other way round, it would see every node vanish, record a round of rejections and
    checkpoint it.
    """
    first = [n for n in reversed(names) if not n.startswith(NODE_PREFIX)]
    return [*first, *[n for n in names if n not in first]]


def _signal_if_same(pid: int, start: int, sig: int) -> None:
    if start_time(pid) == start:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def stop_tree(
    tree: list[tuple[int, int]], *, sig: int, grace: float, popen: subprocess.Popen[bytes] | None
) -> None:
    """Send ``sig`` to every ``(pid, start)`` still alive; SIGKILL what outlives ``grace``.

    Every signal goes to one pid whose start time is checked first: never to a reused pid,
    never by name, never to a whole group that could hold anything else.
    """

    def gone(seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while True:
            if popen is not None:
                popen.poll()  # reap our direct child, so it is gone rather than a zombie
            if all(start_time(pid) != start for pid, start in tree):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)

    for pid, start in tree:
        _signal_if_same(pid, start, sig)
    if sig == signal.SIGKILL or gone(grace):
        gone(5.0)
        return
    for pid, start in tree:
        _signal_if_same(pid, start, signal.SIGKILL)
    gone(5.0)
