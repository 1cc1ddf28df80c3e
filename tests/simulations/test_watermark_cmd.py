from __future__ import annotations

from pathlib import Path

import pytest

from common.models import create_model
from common.weights import save_safetensors
from server.watermark import KEY_FILE, Watermarker, new_key, state_of
from simulations.cli import main


@pytest.fixture
def marked(tmp_path: Path) -> tuple[Path, Path, Path]:
    wm = Watermarker(new_key(tmp_path / KEY_FILE), (1, 8, 8), 10)
    model = create_model("mlp", 10, seed=0)
    wm.embed_initial(model)
    save_safetensors(tmp_path / "marked.safetensors", state_of(model))
    save_safetensors(tmp_path / "plain.safetensors", state_of(create_model("mlp", 10, seed=1)))
    return tmp_path / "marked.safetensors", tmp_path / "plain.safetensors", tmp_path / KEY_FILE


def test_exit_status_says_detected_not_detected_or_error(
    marked: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    watermarked, plain, key = marked

    assert main(["watermark", "verify", str(watermarked), "--key", str(key)]) == 0
    assert "watermark detected" in capsys.readouterr().out
    assert main(["watermark", "verify", str(plain), "--key", str(key)]) == 1
    assert "not detected" in capsys.readouterr().out
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"not a model")
    assert main(["watermark", "verify", str(bogus), "--key", str(key)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bogus.safetensors" in err
    assert main(["watermark", "verify", str(watermarked), "--key", str(plain)]) == 2
