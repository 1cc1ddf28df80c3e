"""What each SuperNode of a local federation runs on: its own data and its Python environment.

``node_data_paths`` turns ``--node-data`` into one absolute ``data-path`` per SuperNode: one
path per node (a file or a folder, in node order), or one folder holding a ``node-<i>.*`` entry
for each node ``i``; nothing given means simulation-style partitions. The paths name data on
this host that only that node's ClientApp reads; they never reach the server's run config.

``node_bin`` is the ``bin/`` of the environment the SuperNodes run from: ``--node-env`` (a
virtual environment holding the client install, as an edge device would), else this one. Every
problem is one ``DeployError`` line naming the option and how to fix it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from deployment.errors import DeployError

SUPERNODE: Final = "flower-supernode"


def _node_entry(folder: Path, index: int) -> Path:
    pattern = re.compile(rf"node-{index}(\..+)?")
    found = sorted(p for p in folder.iterdir() if pattern.fullmatch(p.name))
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} entries"
        raise DeployError(
            f"--node-data {folder}: {what} `node-{index}.*` for SuperNode {index}; put one file "
            f"or folder per node there (node-0.csv, node-1.csv, ...) or give one path per node"
        )
    return found[0]


def node_data_paths(given: Sequence[Path], nodes: int) -> list[str]:
    """Return each SuperNode's absolute ``data-path`` (``[]``: partitions of the task's pool)."""
    paths = [p.expanduser().resolve() for p in given]
    for path in paths:
        if not path.exists():
            raise DeployError(f"--node-data {path}: not found; give an existing file or folder")
    if len(paths) == 1 and nodes > 1:
        if not paths[0].is_dir():
            raise DeployError(
                f"--node-data {paths[0]}: one path for {nodes} SuperNodes must be a folder "
                f"holding node-0.*, node-1.*, ...; or repeat --node-data once per node"
            )
        paths = [_node_entry(paths[0], i) for i in range(nodes)]
    elif paths and len(paths) != nodes:
        raise DeployError(
            f"--node-data given {len(paths)} times for {nodes} SuperNodes; give it once per "
            f"node, or once with a folder holding node-<i>.* files"
        )
    return [str(p) for p in paths]


def node_bin(node_env: str, default: Path) -> Path:
    """Return the ``bin/`` the SuperNodes run from: ``node_env``'s, else ``default``."""
    if not node_env:
        return default
    bin_dir = Path(node_env) / "bin"
    if not (bin_dir / SUPERNODE).is_file():
        raise DeployError(
            f"--node-env {node_env}: no bin/{SUPERNODE} there; give a virtual environment "
            "with the client install (docs/deployment.md, the edge recipe)"
        )
    return bin_dir
