"""The report's figures are valid, non-trivial PNG files."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.report.run_docs import Written

# Opacus warns when the optimal RDP order lies at an end of its list: tightness, not us.
pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the (largest|smallest) alpha")


def test_plots_are_valid_non_trivial_pngs(written: Written) -> None:
    for path in written.files.plots:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            width, height = img.size
            colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
        assert width >= 600 and height >= 300, path.name
        assert path.stat().st_size > 5_000, path.name
        assert colours is not None and len(colours) > 20, path.name
