"""A synthetic run directory whose privacy ledger adds up, and readers of the report."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.accounting import HistoryEntry, epsilon_from_history
from common.weights import save_safetensors
from report.write import ReportFiles

DELTA = 1e-5
BUDGET = 8.0
ROUNDS = 4
# Three clients with different (σ, q); client 2 sits out round 2 and round 4.
CLIENT_PLANS: dict[str, tuple[float, float, int, list[int]]] = {
    "0": (1.7, 1 / 3, 6, [1, 2, 3, 4]),
    "1": (1.6, 1 / 4, 8, [1, 2, 3, 4]),
    "2": (1.2, 1 / 5, 10, [1, 3]),
}
NODE_OF = {"0": 101, "1": 202, "2": 303}


def eps(history: Sequence[HistoryEntry], accountant: str = "rdp") -> float:
    return _eps(tuple(history), accountant)


@functools.cache
def _eps(history: tuple[HistoryEntry, ...], accountant: str) -> float:
    # PRV takes ~0.5 s a history: compute each one once for the whole module.
    return epsilon_from_history(history, delta=DELTA, accountant=accountant)


@dataclass
class RunDocs:
    """The four files of a run directory, as documents a test may alter before writing."""

    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    privacy: dict[str, Any]
    model: dict[str, Any] = field(
        default_factory=lambda: {
            "fc.weight": np.zeros((10, 64), dtype=np.float32),
            "fc.bias": np.zeros(10, dtype=np.float32),
        }
    )

    def write(self, path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(self.config, indent=2))
        (path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in self.metrics))
        (path / "privacy.json").write_text(json.dumps(self.privacy, indent=2))
        save_safetensors(path / "model.safetensors", self.model)
        return path


def build_docs(accountant: str = "rdp") -> RunDocs:
    """A synthetic run whose ledger adds up: ε computed with common.accounting."""
    config = {
        "num-server-rounds": ROUNDS,
        "seed": 0,
        "dataset": "digits",
        "partitioning": "dirichlet",
        "local-epochs": 2,
        "batch-size": 32,
        "lr": 1.0,
        "dp.delta": DELTA,
        "dp.max-grad-norm": 1.0,
        "dp.accountant": accountant,
        "dp.budget": BUDGET,
        "codec.topk": 0.1,
        "codec.bits": 8,
        "codec.error-feedback": True,
        "sim.clients": 3,
    }
    clients = {}
    for cid, (sigma, q, steps, rounds) in CLIENT_PLANS.items():
        history = [(sigma, q, steps)] * len(rounds)
        e = eps(history, accountant)
        clients[cid] = {
            "epsilon": e,
            "budget": BUDGET,
            "exhausted": False,
            "history": [list(h) for h in history],
            "rounds": rounds,
            "reported_epsilon": e,
            "mismatch": False,
        }
    metrics = []
    for r in range(1, ROUNDS + 1):
        nodes = [NODE_OF[cid] for cid, plan in CLIENT_PLANS.items() if r in plan[3]]
        rejected = [{"node": 202, "reason": "open-failed", "detail": "tampered"}] if r == 2 else []
        metrics.append(
            {
                "round": r,
                "accuracy": 0.5 + 0.1 * r,
                "loss": 2.0 / r,
                "watermark_accuracy": None,
                "clients": [n for n in nodes if not (r == 2 and n == 202)],
                "rejected": rejected,
                "flagged": [101] if r == 3 else [],
                "bytes_sealed": 1000 * len(nodes),
                "bytes_dense": 20000 * len(nodes),
                "seconds": 0.5,
                "refused": [],
                "faults": [],
                "epsilon_max": 0.0,
            }
        )
    privacy = {
        "unit": "example",
        "accountant": accountant,
        "delta": DELTA,
        "clients": clients,
        "central": None,
    }
    return RunDocs(config=config, metrics=metrics, privacy=privacy)


@dataclass(frozen=True)
class Written:
    run: Path
    files: ReportFiles
    html: str
    docs: RunDocs


def client_row(html: str, cid: str) -> list[str]:
    """The cells of the per-client table's row for ``cid``."""
    table = html[html.index('<section id="clients">') :]
    table = table[: table.index("</table>")]
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table):
        cells = re.findall(r"<td>(.*?)</td>", row)
        if cells and cells[0] == cid:
            return cells
    raise AssertionError(f"no row for client {cid}")


def add_plan(docs: RunDocs) -> None:
    """Give ``docs`` a ``plan`` in ``privacy.json``: each client's ``CLIENT_PLANS`` entry."""
    docs.privacy["plan"] = {
        cid: {
            "client_id": cid,
            "noise_multiplier": sigma,
            "sample_rate": q,
            "steps_per_round": steps,
            "planned_rounds": ROUNDS,
            "planned_epsilon": eps([(sigma, q, steps * ROUNDS)]),
            "one_round_epsilon": eps([(sigma, q, steps)]),
        }
        for cid, (sigma, q, steps, _) in CLIENT_PLANS.items()
    }
