"""Write a synthetic, seeded sensor data set for the tabular example task.

Four machine states, each shifting a few sensors away from their nominal operating point (in
units of the task's fixed scales), with Gaussian noise on every reading. Writes ``train.csv``,
``test.csv`` (balanced) and ``node-<i>.csv``: one file per edge node, of different sizes and
label mixes (Dirichlet draws), as separate sites would hold.

Run from the repository root: ``python -m examples.tabular_csv.make_data [--out DIR] [--seed N]``.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import numpy.typing as npt

from examples.tabular_csv.task import CLASSES, DEFAULT_DATA, FEATURES

SHIFTS: dict[str, dict[str, float]] = {
    "normal": {},
    "overheating": {"temperature_c": 1.6, "current_a": 0.6, "humidity_pct": -0.3},
    "bearing-wear": {"vibration_mm_s": 1.5, "acoustic_db": 1.0, "speed_rpm": -0.5},
    "electrical-fault": {"voltage_v": -1.3, "current_a": 1.2, "acoustic_db": 0.4},
}
"""How far each state moves each sensor from its centre, in units of the sensor's scale."""

NODE_SIZES = (80, 150, 300, 600)


def sample(
    rng: np.random.Generator, label_weights: npt.NDArray[np.float64], n: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Draw ``n`` readings ``(n, F)`` in physical units and their labels."""
    labels = rng.choice(len(CLASSES), size=n, p=label_weights)
    centre = np.array([c for c, _ in FEATURES.values()])
    scale = np.array([s for _, s in FEATURES.values()])
    shift = np.array([[SHIFTS[k].get(f, 0.0) for f in FEATURES] for k in CLASSES])
    noise = rng.normal(0.0, 0.8, size=(n, len(FEATURES)))
    # Every sensor here reads a non-negative quantity.
    readings = np.clip(centre + scale * (shift[labels] + noise), 0.0, None)
    return readings, labels.astype(np.int64)


def write_csv(path: Path, readings: npt.NDArray[np.float64], labels: npt.NDArray[np.int64]) -> None:
    """Write one CSV file: the feature columns, then ``label``."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([*FEATURES, "label"])
        for row, label in zip(readings, labels, strict=True):
            writer.writerow([f"{v:.2f}" for v in row] + [int(label)])


def write_dataset(
    out: Path,
    *,
    seed: int,
    train: int = 2000,
    test: int = 400,
    node_sizes: tuple[int, ...] = NODE_SIZES,
) -> None:
    """Write ``train.csv``, ``test.csv`` and one ``node-<i>.csv`` per entry of ``node_sizes``."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    balanced = np.full(len(CLASSES), 1 / len(CLASSES))
    mostly_normal = np.array([0.55, 0.15, 0.15, 0.15])
    write_csv(out / "train.csv", *sample(rng, mostly_normal, train))
    write_csv(out / "test.csv", *sample(rng, balanced, test))
    for i, size in enumerate(node_sizes):
        write_csv(
            out / f"node-{i}.csv", *sample(rng, rng.dirichlet(np.full(len(CLASSES), 0.7)), size)
        )


def main() -> None:
    """Parse the command line and write the data set."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_DATA, help="folder to write (created)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", type=int, default=2000, help="rows of train.csv (default 2000)")
    args = parser.parse_args()
    write_dataset(args.out, seed=args.seed, train=args.rows)
    print(f"wrote train.csv ({args.rows} rows), test.csv and the node files to {args.out}")


if __name__ == "__main__":
    main()
