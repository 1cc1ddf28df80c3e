"""``deployment.nodes``: each SuperNode's own data and environment, or one line saying why not."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployment.errors import DeployError
from deployment.nodes import node_bin, node_data_paths


def _files(folder: Path, *names: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text("label\n")
    return [folder / n for n in names]


def test_no_node_data_means_partitions() -> None:
    assert node_data_paths([], 3) == []


def test_one_path_per_node_keeps_node_order_and_becomes_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _files(tmp_path / "a", "x.csv")
    _files(tmp_path / "b", "y.csv")
    (tmp_path / "c").mkdir()  # a folder is a node's data too (an image task's, say)
    monkeypatch.chdir(tmp_path)

    paths = node_data_paths([Path("b/y.csv"), Path("a/x.csv"), Path("c")], 3)

    assert paths == [str(tmp_path / "b/y.csv"), str(tmp_path / "a/x.csv"), str(tmp_path / "c")]


def test_a_folder_gives_node_i_its_node_i_entry(tmp_path: Path) -> None:
    _files(tmp_path, "node-0.csv", "node-1.csv", "node-2.csv", "node-10.csv", "test.csv")

    paths = node_data_paths([tmp_path], 3)

    assert paths == [str(tmp_path / f"node-{i}.csv") for i in range(3)]


def test_one_node_takes_its_path_as_is(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()

    assert node_data_paths([tmp_path / "images"], 1) == [str(tmp_path / "images")]


@pytest.mark.parametrize(
    ("names", "given", "nodes", "words"),
    [
        (["node-0.csv"], ["missing.csv"], 1, "not found"),
        (["node-0.csv", "node-1.csv"], ["node-0.csv"], 2, "must be a folder"),
        (["node-0.csv", "node-1.csv"], ["node-0.csv", "node-1.csv"], 3, "given 2 times for 3"),
        (["node-0.csv", "node-2.csv"], ["."], 3, "no `node-1.*` for SuperNode 1"),
        (["node-0.csv", "node-1.csv", "node-1.npz"], ["."], 2, "2 entries `node-1.*`"),
    ],
)
def test_unusable_node_data_is_one_line(
    tmp_path: Path, names: list[str], given: list[str], nodes: int, words: str
) -> None:
    _files(tmp_path, *names)

    with pytest.raises(DeployError, match=words) as exc:
        node_data_paths([tmp_path / g for g in given], nodes)

    assert "\n" not in str(exc.value) and "--node-data" in str(exc.value)


def test_node_env_is_its_bin_or_this_env(tmp_path: Path) -> None:
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "flower-supernode").write_text("#!/bin/sh\n")

    assert node_bin(str(tmp_path / "venv"), Path("/here/bin")) == tmp_path / "venv" / "bin"
    assert node_bin("", Path("/here/bin")) == Path("/here/bin")


def test_a_node_env_without_flower_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(DeployError, match="no bin/flower-supernode") as exc:
        node_bin(str(tmp_path), Path("/here/bin"))

    assert "--node-env" in str(exc.value) and "\n" not in str(exc.value)
