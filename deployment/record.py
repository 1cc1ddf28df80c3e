"""``RUN_DIR/deployment.json``: how to restart the federation that made a run.

Version 1, written atomically whenever it changes: ``kind`` (``"fedveil-deployment"``), the
``flwr`` version, ``work_dir``, ``nodes``, ``tls``, ``auth``, ``aggregator_fingerprint`` (the
key every node pins), ``signing_fingerprint`` (the downlink signing key derived from it, which
every node pins too), ``superlink`` (its ``control`` and ``fleet`` addresses), ``node_ids``
(SuperNode index to Flower node id), ``flower_runs`` (``run_id`` and final ``status`` of each
``flwr run``, oldest first), ``node_data`` (each SuperNode's ``data-path``; empty: partitions),
``node_env`` (the environment the SuperNodes run from; empty: the orchestrator's) and
``task_root`` (the folder the task's package is staged from, so a resume from elsewhere ships
the same task); these last three and ``signing_fingerprint`` (absent in older records: nodes
then pin no signing key) are optional on read. A missing, corrupt or unknown-version file is
one ``DeployError``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Final

from common.files import write_atomic
from deployment.errors import DeployError

DEPLOYMENT_FILE: Final = "deployment.json"
DEPLOYMENT_VERSION: Final = 1


@dataclass
class DeploymentRecord:
    """``RUN_DIR/deployment.json``: what ``--resume`` needs to restart this federation."""

    work_dir: str
    nodes: int
    tls: bool
    auth: bool
    aggregator_fingerprint: str
    superlink: dict[str, str] = field(default_factory=dict)
    node_ids: dict[str, int] = field(default_factory=dict)
    flower_runs: list[dict[str, Any]] = field(default_factory=list)
    node_data: list[str] = field(default_factory=list)
    node_env: str = ""
    task_root: str = ""
    signing_fingerprint: str = ""

    def to_json(self) -> dict[str, Any]:
        """Return the JSON document."""
        return {
            "version": DEPLOYMENT_VERSION,
            "kind": "fedveil-deployment",
            "flwr": _flwr_version(),
            "work_dir": self.work_dir,
            "nodes": self.nodes,
            "tls": self.tls,
            "auth": self.auth,
            "aggregator_fingerprint": self.aggregator_fingerprint,
            "signing_fingerprint": self.signing_fingerprint,
            "node_data": self.node_data,
            "node_env": self.node_env,
            "task_root": self.task_root,
            "superlink": self.superlink,
            "node_ids": self.node_ids,
            "flower_runs": self.flower_runs,
        }

    @classmethod
    def load(cls, run_dir: Path) -> DeploymentRecord:
        """Read a run directory's ``deployment.json``; one-line ``DeployError`` otherwise."""
        path = run_dir / DEPLOYMENT_FILE
        try:
            doc = json.loads(path.read_text())
            if doc.get("version") != DEPLOYMENT_VERSION:
                raise DeployError(f"{path} has unknown version {doc.get('version')!r}")
            return cls(
                work_dir=str(doc["work_dir"]),
                nodes=int(doc["nodes"]),
                tls=bool(doc["tls"]),
                auth=bool(doc["auth"]),
                aggregator_fingerprint=str(doc["aggregator_fingerprint"]),
                node_data=[str(p) for p in doc.get("node_data", [])],
                node_env=str(doc.get("node_env", "")),
                task_root=str(doc.get("task_root", "")),
                signing_fingerprint=str(doc.get("signing_fingerprint", "")),
                superlink=dict(doc.get("superlink", {})),
                node_ids={str(k): int(v) for k, v in doc.get("node_ids", {}).items()},
                flower_runs=list(doc.get("flower_runs", [])),
            )
        except FileNotFoundError:
            raise DeployError(
                f"{run_dir} has no {DEPLOYMENT_FILE}: it was not made by `fedveil federation up`"
            ) from None
        except DeployError:
            raise
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DeployError(f"{path} is corrupt ({exc})") from None

    def save(self, run_dir: Path) -> None:
        """Write ``deployment.json`` atomically."""
        data = (json.dumps(self.to_json(), indent=2) + "\n").encode()
        write_atomic(run_dir / DEPLOYMENT_FILE, data)


def _flwr_version() -> str:
    try:
        return metadata.version("flwr")
    except metadata.PackageNotFoundError:
        return "unknown"
