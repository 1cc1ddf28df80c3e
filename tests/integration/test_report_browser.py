"""The HTML report in a real browser: headless Chromium renders it, plots and all, offline."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from report.write import ReportFiles, write_report
from tests.report.run_docs import build_docs

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:Optimal order is the (largest|smallest) alpha"),
]

CHROMIUM = "/usr/bin/chromium"
WIDTH, HEIGHT = 1280, 6000  # tall enough for the whole synthetic report
TIMEOUT = 120
# Colours that only the plots paint (matplotlib's tab:green sealed bars, tab:blue lines).
PLOT_COLOURS = {(44, 160, 44), (31, 119, 180)}


@pytest.fixture(scope="module")
def chromium() -> str:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        found = shutil.which("chromium")
        if found is None:
            pytest.skip("Chromium is not installed (Debian: apt-get install -y chromium)")
        return found
    return CHROMIUM


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> ReportFiles:
    run = build_docs().write(tmp_path_factory.mktemp("browser") / "run")
    return write_report(run)


def run_chromium(chromium: str, profile: Path, *args: str) -> str:
    """Run headless Chromium offline in its own session; kill the whole session afterwards."""
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"Chromium did not finish within {TIMEOUT} s")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # helpers Chromium left behind, if any
    assert proc.returncode == 0, err[-2000:]
    return out


def test_screenshot_shows_the_report_with_its_plots(
    chromium: str, report: ReportFiles, tmp_path: Path
) -> None:
    shot = tmp_path / "shot.png"
    run_chromium(
        chromium,
        tmp_path / "profile",
        f"--screenshot={shot}",
        f"--window-size={WIDTH},{HEIGHT}",
        report.html.as_uri(),
    )

    with Image.open(shot) as img:
        rgb = img.convert("RGB")
    assert rgb.size == (WIDTH, HEIGHT)
    colours = rgb.getcolors(maxcolors=WIDTH * HEIGHT)
    assert colours is not None and len(colours) > 200  # text, tables, plots: not blank
    counts = {colour: n for n, colour in colours}
    white = counts.get((255, 255, 255), 0)
    assert white < 0.95 * WIDTH * HEIGHT
    for colour in PLOT_COLOURS:
        assert counts.get(colour, 0) > 200, f"no plot pixels of colour {colour}: images not drawn"


def test_dom_has_the_statement_and_every_plot_inline(
    chromium: str, report: ReportFiles, tmp_path: Path
) -> None:
    dom = run_chromium(chromium, tmp_path / "profile", "--dump-dom", report.html.as_uri())

    assert "<h2>Privacy statement</h2>" in dom
    assert "-differentially private</strong> with respect to any one of" in dom
    sources = re.findall(r'<img src="([^"]+)"', dom)
    assert len(sources) == len(report.plots)
    on_disk = {p.read_bytes() for p in report.plots}
    decoded = set()
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.removeprefix("data:image/png;base64,"), validate=True)
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
            assert img.format == "PNG"
        decoded.add(data)
    assert decoded == on_disk
