"""Peak memory of one training ClientApp: a fresh process per case, as a SuperNode starts one.

Each case runs in its own Python process that does what ``flwr-clientapp`` does for one train
request: import ``client.app``, receive a train request built as the server builds it, load the
node's data, train one round of DP-SGD, seal, and exit. The process reports its peak resident
set (``VmHWM``) and which heavy libraries the round imported. Cases: ``baseline`` (only
``import torch, opacus``: the floor), ``digits`` (partition 0 of 10), ``mnist`` (partition 0 of
20 of the IDX files in ``--data-dir``), ``mnist-node`` (a node's own ``data-path`` npz of as many
raw MNIST images; both skipped without ``--data-dir``) and ``tabular`` (the example tabular task
with a node ``data-path`` CSV).

Run from the repository root: ``python -m benchmarks.edge_footprint [--data-dir DIR]``; prints a
table and writes ``results/edge_footprint.json`` stamped with date, commit and machine. Each case
runs ``--repeat`` times (default 3) and keeps the median peak: the allocator makes peaks vary.
``--venv DIR`` also records the installed size of each distribution in that environment (the
files its ``RECORD`` lists, compiled bytecode included) and which distributions require it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.provenance import RESULTS_DIR, write_json

REPO = Path(__file__).resolve().parent.parent
CASES = ("baseline", "digits", "mnist", "mnist-node", "tabular")
NEEDS_DATA_DIR = ("mnist", "mnist-node")
NODE_EXAMPLES = 3000
"""Examples in a node's own file: one twentieth of MNIST's training pool, as partition 0 of 20."""
HEAVY_MODULES = ("sklearn", "scipy", "matplotlib", "flwr_datasets", "datasets", "pandas", "pyarrow")
"""Libraries a deployed node's round should import only when its task needs them."""
TABULAR_TASK = "examples.tabular_csv.task"
MIB = 1024 * 1024


def peak_rss_bytes(status_text: str) -> int:
    """Return the peak resident set (``VmHWM``) in bytes from a ``/proc/<pid>/status`` text."""
    for line in status_text.splitlines():
        if line.startswith("VmHWM:"):
            value, unit = line.split()[1:3]
            if unit != "kB":
                raise ValueError(f"unexpected VmHWM unit {unit!r}")
            return int(value) * 1024
    raise ValueError("no VmHWM line in the status text")


def heavy_imports(modules: Sequence[str]) -> list[str]:
    """Return the ``HEAVY_MODULES`` among loaded module names (top-level packages only)."""
    top = {name.partition(".")[0] for name in modules}
    return [name for name in HEAVY_MODULES if name in top]


def _config(case: str, data_dir: str, work: Path) -> dict[str, Any]:
    flat: dict[str, Any] = {"num-server-rounds": 3, "client-state-dir": str(work / "state")}
    if case == "digits":
        flat.update({"dataset": "digits", "sim.clients": 10})
    elif case in NEEDS_DATA_DIR:
        flat.update({"dataset": "mnist", "data-dir": data_dir, "sim.clients": 20})
    elif case == "tabular":
        flat.update({"task": TABULAR_TASK, "sim.clients": 3})
    return flat


def prepare(case: str, data_dir: str, work: Path) -> None:
    """Write the node's own file for ``case`` into ``work`` (outside the measured process)."""
    if case == "tabular":
        from examples.tabular_csv.make_data import write_dataset

        write_dataset(work, seed=0, train=40, test=20, node_sizes=(2000,))
    elif case == "mnist-node":
        _write_node_npz(data_dir, work / "node.npz")


def _node_config(case: str, work: Path) -> dict[str, Any]:
    state = str(work / "node-state")
    if case == "tabular":
        return {"data-path": str(work / "node-0.csv"), "state-dir": state}
    if case == "mnist-node":
        return {"data-path": str(work / "node.npz"), "state-dir": state}
    count = 10 if case == "digits" else 20
    return {"partition-id": 0, "num-partitions": count}


def _write_node_npz(data_dir: str, path: Path) -> None:
    """Write a node's own file: the first ``NODE_EXAMPLES`` raw MNIST training images, as npz."""
    import numpy as np

    from common.data import read_idx

    folder = Path(data_dir) / "mnist" if (Path(data_dir) / "mnist").is_dir() else Path(data_dir)
    images = read_idx(folder / "train-images-idx3-ubyte.gz")[:NODE_EXAMPLES]
    labels = read_idx(folder / "train-labels-idx1-ubyte.gz")[:NODE_EXAMPLES]
    np.savez(path, x=images, y=labels)


def _train_once(case: str, data_dir: str, work: Path) -> str:
    """Do one train request as a ClientApp does; return the reply's status."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from client.app import app
    from common import protocol
    from common.config import FedveilConfig
    from common.sealing import AggregatorKeyPair
    from common.task import task_of

    # A Message outside a SuperNode needs Flower's per-process task identity (private API).
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    node_config = _node_config(case, work)
    config = FedveilConfig.from_flat(_config(case, data_dir, work))
    # The server's global model: the task's fresh model, built as the ServerApp builds it.
    arrays = ArrayRecord(task_of(config).build_model().state_dict())
    content = RecordDict(
        {
            protocol.ARRAYS: arrays,
            protocol.CONFIG: protocol.config_record(config.to_flat(), 1),
            protocol.SEAL: ConfigRecord(
                {protocol.PUBLIC_KEY: AggregatorKeyPair.generate().public_bytes}
            ),
        }
    )
    msg = Message(content=content, dst_node_id=7, message_type=MessageType.TRAIN)
    context = Context(
        run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={}
    )
    reply = app(msg, context)
    return str(reply.content.config_records[protocol.STATUS]["status"])


def run_child(case: str, data_dir: str, work: Path) -> dict[str, Any]:
    """Run one case in this process (meant to be a fresh one) and return its measurements."""
    started = time.perf_counter()
    if case == "baseline":
        import opacus  # noqa: F401
        import torch  # noqa: F401

        status = "imported"
    else:
        status = _train_once(case, data_dir, work)
    return {
        "case": case,
        "status": status,
        "seconds": time.perf_counter() - started,
        "peak_rss_bytes": peak_rss_bytes(Path("/proc/self/status").read_text()),
        "heavy_imports": heavy_imports(list(sys.modules)),
    }


def measure(case: str, data_dir: str) -> dict[str, Any]:
    """Run ``case`` in a fresh interpreter and return what it reported."""
    # Fixed arguments from this module: nothing from outside reaches a shell.
    with tempfile.TemporaryDirectory() as tmp:
        prepare(case, data_dir, Path(tmp))
        command = [sys.executable, "-m", "benchmarks.edge_footprint", "--child", case]
        done = subprocess.run(  # noqa: S603
            [*command, "--data-dir", data_dir, "--work", tmp],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"case {case} failed: {tail[0]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def repeated(case: str, data_dir: str, repeat: int) -> dict[str, Any]:
    """Measure ``case`` ``repeat`` times; its peak is the median run's (allocator noise)."""
    runs = [measure(case, data_dir) for _ in range(repeat)]
    peaks = sorted(r["peak_rss_bytes"] for r in runs)
    seconds = sorted(r["seconds"] for r in runs)
    middle = (len(runs) - 1) // 2
    return {
        **runs[0],
        "peak_rss_bytes": peaks[middle],
        "peak_rss_runs": peaks,
        "seconds": seconds[middle],
        "seconds_runs": seconds,
    }


_SIZES = """
import importlib.metadata as md, json, os, re
rows = {}
for dist in md.distributions():
    name = dist.metadata["Name"].lower().replace("_", "-")
    size = 0
    for f in dist.files or []:
        try:
            size += os.path.getsize(dist.locate_file(f))
        except OSError:
            pass
    needs = [re.split(r"[ ;<>=!~\\[(]", r)[0].lower().replace("_", "-")
             for r in dist.requires or [] if "extra ==" not in r]
    rows[name] = {"version": dist.version, "bytes": size, "requires": needs}
print(json.dumps(rows))
"""


def install_sizes(venv: Path) -> dict[str, Any]:
    """Return each distribution's installed bytes in ``venv`` and who requires it, largest first.

    ``required_by`` lists the distributions whose unconditional requirements name it (extras
    are not followed, so a package pulled only through an extra shows none).
    """
    done = subprocess.run(  # noqa: S603 - the venv's own interpreter, a fixed script
        [str(venv / "bin" / "python"), "-c", _SIZES],
        capture_output=True,
        text=True,
        check=True,
    )
    rows: dict[str, dict[str, Any]] = json.loads(done.stdout)
    for name, row in rows.items():
        row["required_by"] = sorted(n for n, r in rows.items() if name in r["requires"])
    ordered = sorted(rows.items(), key=lambda kv: -int(kv[1]["bytes"]))
    return {
        "venv": str(venv),
        "total_bytes": sum(int(r["bytes"]) for r in rows.values()),
        "distributions": [
            {
                "name": n,
                "version": r["version"],
                "bytes": r["bytes"],
                "required_by": r["required_by"],
            }
            for n, r in ordered
        ],
    }


def install_table(install: dict[str, Any], top: int = 15) -> str:
    """Return the largest distributions as a Markdown table (MiB), and the total."""
    lines = ["| distribution | MiB | required by |", "|---|---:|---|"]
    for row in install["distributions"][:top]:
        needs = ", ".join(row["required_by"]) or "-"
        lines.append(f"| {row['name']} {row['version']} | {row['bytes'] / MIB:.1f} | {needs} |")
    lines.append(
        f"| total ({len(install['distributions'])} distributions) | "
        f"{install['total_bytes'] / MIB:.0f} | |"
    )
    return "\n".join(lines)


def table(results: Sequence[dict[str, Any]]) -> str:
    """Return the results as a Markdown table (peak RSS in MiB, and above the baseline)."""
    base = next((r["peak_rss_bytes"] for r in results if r["case"] == "baseline"), None)
    lines = [
        "| case | status | peak RSS (MiB) | above torch+opacus (MiB) | imports + round (s) "
        "| heavy imports |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in results:
        peak = r["peak_rss_bytes"] / MIB
        above = "-" if base is None else f"{(r['peak_rss_bytes'] - base) / MIB:.0f}"
        heavy = ", ".join(r["heavy_imports"]) or "none"
        lines.append(
            f"| {r['case']} | {r['status']} | {peak:.0f} | {above} | {r['seconds']:.2f} | {heavy} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure every case (``mnist`` only with ``--data-dir``), print a table, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="", help="folder of the MNIST IDX files")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "edge_footprint.json")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (median kept)")
    parser.add_argument("--venv", type=Path, help="a client venv whose install size to record")
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args.child, args.data_dir, args.work)))
        return 0
    cases = [c for c in args.cases if c not in NEEDS_DATA_DIR or args.data_dir]
    try:
        results = [repeated(case, args.data_dir, max(args.repeat, 1)) for case in cases]
    except RuntimeError as exc:
        print(f"edge_footprint: {exc}", file=sys.stderr)
        return 1
    print(table(results))
    doc: dict[str, Any] = {"benchmark": "edge_footprint", "results": results}
    if args.venv:
        doc["install"] = install_sizes(args.venv)
        print(install_table(doc["install"]))
    write_json(args.out, doc)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
