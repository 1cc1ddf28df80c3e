"""``fedveil keys generate``: bad host names and existing key files are one line and exit 2."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from simulations.cli import main


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str], *words: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("fedveil: error: "), err
    for word in words:
        assert word in err, err


@pytest.mark.parametrize("host", ["bad host", "evil.example/x", "a..b", "256.1.1.1"])
def test_a_bad_host_name_is_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], host: str
) -> None:
    out = tmp_path / "tls"

    _refused(capsys, ["keys", "generate", "--tls", "--host", host, str(out)], repr(host))

    assert not out.exists()


def test_an_absurd_validity_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _refused(capsys, ["keys", "generate", "--tls", "--days", "10000000", str(tmp_path)], "days")

    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("existing", ["aggregator.pub", "aggregator.key"])
def test_an_existing_aggregator_key_file_is_never_replaced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], existing: str
) -> None:
    (tmp_path / existing).write_text("pinned by every SuperNode\n")

    _refused(capsys, ["keys", "generate", str(tmp_path)], existing, "refusing to overwrite")

    assert [p.name for p in tmp_path.iterdir()] == [existing]
    assert (tmp_path / existing).read_text() == "pinned by every SuperNode\n"


@pytest.mark.parametrize(("flag", "existing"), [("--tls", "server.pem"), ("--node", "node.pub")])
def test_existing_tls_and_node_files_are_never_replaced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, existing: str
) -> None:
    (tmp_path / existing).write_text("keep me\n")

    _refused(capsys, ["keys", "generate", flag, str(tmp_path)], existing)

    assert [p.name for p in tmp_path.iterdir()] == [existing]


def test_a_fresh_folder_gets_a_private_key_only_its_owner_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "generate", str(tmp_path / "k")]) == 0

    assert capsys.readouterr().out.startswith("sha256:")
    assert stat.S_IMODE((tmp_path / "k" / "aggregator.key").stat().st_mode) == 0o600
