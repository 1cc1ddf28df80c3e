"""Machine states from sensor readings: a tabular fedveil task over CSV files.

Each CSV has a header with a ``label`` column (the class index, see ``CLASSES``) and one numeric
column per sensor in ``FEATURES``; other columns (a timestamp, say) are ignored.

Scaling is fixed, not learned from data: every feature is standardised as
``(value - centre) / scale`` with the constants in ``FEATURES`` (each sensor's nominal operating
point and spread). So the server's test set and every node's own file are scaled identically
without any node revealing statistics of its data.

Files: ``train.csv`` (the pool a simulation partitions) and ``test.csv`` (the server's) in
`data-dir`, else in ``data/`` beside this file (``python -m examples.tabular_csv.make_data``);
a deployed node reads its own CSV file from its `data-path`.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch
from torch import nn

from common.task import Examples, FileTask, TaskError, TaskSettings

CLASSES = ("normal", "overheating", "bearing-wear", "electrical-fault")
"""Class names; the ``label`` column holds their index."""

FEATURES: dict[str, tuple[float, float]] = {
    "temperature_c": (60.0, 15.0),
    "vibration_mm_s": (4.0, 3.0),
    "current_a": (12.0, 4.0),
    "pressure_bar": (6.0, 1.5),
    "humidity_pct": (45.0, 15.0),
    "speed_rpm": (1500.0, 300.0),
    "acoustic_db": (70.0, 8.0),
    "voltage_v": (230.0, 10.0),
}
"""Feature columns and their fixed ``(centre, scale)`` in physical units."""

DEFAULT_DATA = Path(__file__).resolve().parent / "data"


def read_csv(path: Path) -> Examples:
    """Read one CSV file into standardised inputs ``(n, len(FEATURES))`` and labels ``(n,)``."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in ("label", *FEATURES) if c not in (reader.fieldnames or [])]
            if missing:
                raise TaskError(
                    f"{path}: missing columns {missing}; the header needs `label` and the features"
                )
            rows, labels = [], []
            for line, row in enumerate(reader, start=2):
                try:
                    values = [float(row[c]) for c in FEATURES]
                    label = int(row["label"])
                except (TypeError, ValueError):
                    raise TaskError(
                        f"{path}, line {line}: a feature is not a number or the label no integer"
                    ) from None
                if not all(map(math.isfinite, values)):
                    raise TaskError(f"{path}, line {line}: a value is NaN or infinite")
                rows.append(
                    [(v - c) / s for v, (c, s) in zip(values, FEATURES.values(), strict=True)]
                )
                labels.append(label)
    except FileNotFoundError:
        raise TaskError(
            f"{path} not found; run `python -m examples.tabular_csv.make_data` or point "
            f"data-dir (server, simulation) or data-path (node) at your CSV files"
        ) from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TaskError(f"cannot read {path} as CSV ({type(exc).__name__})") from None
    inputs = torch.tensor(rows, dtype=torch.float32).reshape(len(rows), len(FEATURES))
    return Examples(inputs, torch.tensor(labels, dtype=torch.int64))


class SensorMLP(nn.Module):
    """Two hidden ReLU layers from sensor features to class logits."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(len(FEATURES), hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, len(CLASSES)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map standardised features ``(n, F)`` to logits ``(n, C)``."""
        logits: torch.Tensor = self.net(x)
        return logits


class SensorTask(FileTask):
    """The task: ``SensorMLP`` on ``root/train.csv`` and ``root/test.csv``, or a node's own file."""

    pool_file, test_file = "train.csv", "test.csv"
    num_classes = len(CLASSES)
    input_shape = (len(FEATURES),)  # one row of features
    network = SensorMLP
    read = staticmethod(read_csv)


def make_task(settings: TaskSettings) -> SensorTask:
    """Build the task; its files live in `data-dir`, else in ``data/`` beside this module."""
    return SensorTask(settings.data_folder(DEFAULT_DATA), settings.seed)
