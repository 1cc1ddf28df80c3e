"""Write a synthetic, seeded folder of labelled shape images for the image-folder example task.

Each image is a 32 x 32 grayscale PNG: one shape of ``CLASSES`` (random centre, size, rotation
and stroke) on a noisy background. Writes ``train/<label>/*.png``, ``test/<label>/*.png``
(balanced) and ``node-<i>/<label>/*.png``: one folder per edge node, of different sizes and
label mixes (Dirichlet draws; a node may lack a class).

Run from the repository root: ``python -m examples.image_folder.make_data [--out DIR] [--seed N]``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from examples.image_folder.task import CLASSES, DEFAULT_DATA

CANVAS = 32
NODE_SIZES = (40, 90, 160)


def draw(shape: str, rng: np.random.Generator) -> Image.Image:
    """Draw one ``shape`` with random placement on a noisy dark background."""
    noise = rng.normal(30, 12, size=(CANVAS, CANVAS)).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(noise, mode="L")
    pen = ImageDraw.Draw(img)
    radius = rng.uniform(7, 12)
    cx, cy = rng.uniform(radius + 1, CANVAS - radius - 1, size=2)
    turn = rng.uniform(0, 2 * math.pi)
    ink = int(rng.integers(170, 256))
    width = int(rng.integers(2, 4))

    def ring(corners: int) -> list[tuple[float, float]]:
        return [
            (
                cx + radius * math.cos(turn + 2 * math.pi * k / corners),
                cy + radius * math.sin(turn + 2 * math.pi * k / corners),
            )
            for k in range(corners)
        ]

    if shape == "circle":
        pen.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), outline=ink, width=width)
    elif shape == "square":
        pen.polygon(ring(4), outline=ink, width=width)
    elif shape == "triangle":
        pen.polygon(ring(3), outline=ink, width=width)
    else:
        a, b, c, d = ring(4)
        pen.line([a, c], fill=ink, width=width)
        pen.line([b, d], fill=ink, width=width)
    return img


def write_folder(root: Path, counts: np.ndarray, rng: np.random.Generator) -> None:
    """Write ``counts[k]`` images of class ``k`` under ``root/<label>/``."""
    for label, count in zip(CLASSES, counts, strict=True):
        if count == 0:
            continue
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(int(count)):
            draw(label, rng).save(folder / f"{i:04d}.png")


def write_dataset(
    out: Path,
    *,
    seed: int,
    per_class: int = 100,
    test_per_class: int = 40,
    node_sizes: tuple[int, ...] = NODE_SIZES,
) -> None:
    """Write ``train/``, ``test/`` and one ``node-<i>/`` per entry of ``node_sizes``."""
    rng = np.random.default_rng(seed)
    k = len(CLASSES)
    write_folder(out / "train", np.full(k, per_class), rng)
    write_folder(out / "test", np.full(k, test_per_class), rng)
    for i, size in enumerate(node_sizes):
        counts = rng.multinomial(size, rng.dirichlet(np.full(k, 0.5)))
        write_folder(out / f"node-{i}", counts, rng)


def main() -> None:
    """Parse the command line and write the image folders."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_DATA, help="folder to write (created)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--per-class", type=int, default=100, help="training images of each class (default 100)"
    )
    args = parser.parse_args()
    write_dataset(args.out, seed=args.seed, per_class=args.per_class)
    print(f"wrote {args.per_class} training images per class and the node folders to {args.out}")


if __name__ == "__main__":
    main()
