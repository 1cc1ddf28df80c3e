"""End to end: ``fedveil simulate --set task=...`` runs a user's task, in the repo or outside it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from common.weights import load_safetensors
from examples.tabular_csv.make_data import write_dataset
from examples.tabular_csv.task import SensorMLP
from server.watermark import write_key
from tests.conftest import REPO

pytestmark = pytest.mark.slow

OUTSIDE_TASK = '''
"""Three Gaussian blobs in four features: a task that lives outside fedveil's repository."""

import torch
from torch import nn

from common.task import Examples, Task, TaskError


def _blobs(n, seed):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=generator)
    centres = torch.tensor([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 2.0, 0]])
    return Examples(centres[labels] + torch.randn(n, 4, generator=generator), labels)


class Blobs(Task):
    def __init__(self, seed):
        self.seed = seed

    num_classes = property(lambda self: 3)
    input_shape = property(lambda self: (4,))

    def build_model(self):
        torch.manual_seed(self.seed)
        return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))

    def node_examples(self, data_path):
        raise TaskError(f"{data_path}: this task has no node files")

    def pool(self):
        return _blobs(300, self.seed + 1)

    def test_examples(self):
        return _blobs(90, self.seed + 2)


def make_task(settings):
    return Blobs(settings.seed)
'''


def _simulate(
    out: Path, *sets: str, cwd: Path = REPO, path: tuple[Path, ...] = ()
) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "simulations.cli", "simulate", "--config", "quick"]
    args += ["--out", str(out), "--set", "sim.clients=3", "--set", "num-server-rounds=2"]
    for s in sets:
        args += ["--set", s]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [*map(str, path), str(REPO), *filter(None, [env.get("PYTHONPATH", "")])]
    )
    return subprocess.run(
        args, capture_output=True, text=True, timeout=600, cwd=cwd, env=env, check=False
    )


def _rounds(out: Path) -> list[dict[str, object]]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_the_tabular_example_task_runs_end_to_end(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "run"
    write_dataset(data, seed=0, train=300, test=100, node_sizes=())

    done = _simulate(
        out,
        "task=examples.tabular_csv.task",
        f"data-dir={data}",
        "watermark.enabled=true",
        "robust.root-examples=20",
    )

    assert done.returncode == 0, done.stderr[-3000:]
    rounds = _rounds(out)
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(len(r["clients"]) == 3 and not r["rejected"] for r in rounds)  # type: ignore[arg-type]
    assert all(isinstance(r["watermark_accuracy"], float) for r in rounds)
    assert 0.0 <= float(rounds[-1]["accuracy"]) <= 1.0  # type: ignore[arg-type]
    shapes = {k: tuple(v.shape) for k, v in SensorMLP().state_dict().items()}
    assert set(load_safetensors(out / "model.safetensors", shapes)) == set(shapes)
    assert json.loads((out / "config.json").read_text())["task"] == "examples.tabular_csv.task"
    verify = [sys.executable, "-m", "simulations.cli", "watermark", "verify"]
    verify += [str(out / "model.safetensors"), "--task", "examples.tabular_csv.task", "--key"]
    own = subprocess.run(
        [*verify, str(out / "watermark.key")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert own.returncode == 0, own.stdout + own.stderr
    other = tmp_path / "other.key"
    write_key(other, bytes(range(32)))
    stranger = subprocess.run(
        [*verify, str(other)], capture_output=True, text=True, timeout=120, cwd=REPO, check=False
    )
    assert stranger.returncode == 1, stranger.stdout + stranger.stderr


def test_a_task_module_outside_the_repository_runs_from_pythonpath(tmp_path: Path) -> None:
    tasks, out = tmp_path / "tasks", tmp_path / "run"
    (tasks / "mytasks").mkdir(parents=True)
    (tasks / "mytasks" / "__init__.py").write_text("")
    (tasks / "mytasks" / "blobs.py").write_text(textwrap.dedent(OUTSIDE_TASK))

    done = _simulate(out, "task=mytasks.blobs", cwd=tmp_path, path=(tasks,))

    assert done.returncode == 0, done.stderr[-3000:]
    rounds = _rounds(out)
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(len(r["clients"]) == 3 for r in rounds)  # type: ignore[arg-type]
