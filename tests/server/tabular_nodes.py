"""In-process nodes of the tabular example task: each a real ClientApp reading its own CSV."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from flwr.app import Context, RecordDict

from client.app import app
from common.config import ConfigValue, FedveilConfig
from tests.conftest import RUN_ID
from tests.server.strategy.fakes import ListGrid


def tabular_config(data: Path, extra: Mapping[str, ConfigValue] | None = None) -> FedveilConfig:
    """Two rounds of one local epoch on the tabular example's data in ``data``, plus ``extra``."""
    flat: dict[str, ConfigValue] = {
        "num-server-rounds": 2,
        "local-epochs": 1,
        "task": "examples.tabular_csv.task",
        "data-dir": str(data),
    }
    return FedveilConfig.from_flat({**flat, **(extra or {})})


def node_grid(paths: Mapping[int, Path]) -> ListGrid:
    """A grid whose node ``n`` runs fedveil's ClientApp with node config ``data-path=paths[n]``."""
    contexts = {
        node: Context(
            run_id=RUN_ID,
            node_id=node,
            node_config={"data-path": str(path)},
            state=RecordDict(),
            run_config={},
        )
        for node, path in paths.items()
    }
    return ListGrid(list(paths), lambda m: app(m, contexts[int(m.metadata.dst_node_id)]))
