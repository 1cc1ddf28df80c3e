"""``fedveil bench`` resolves the config's ``device`` first and refuses one the machine lacks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from simulations.bench import main


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "mps"])
def test_an_absent_device_ends_the_bench_in_one_line_with_status_2(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    device: str,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)

    status = main(["--set", f"device={device}", "--out", str(tmp_path / "bench")])

    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and f"`{device}`" in err
    assert not (tmp_path / "bench").exists()  # refused before anything ran
