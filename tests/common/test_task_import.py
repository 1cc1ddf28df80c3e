"""A task module is found in the working directory before installed packages of the same name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

SCRIPT = """
from common.task import TaskSettings, load_task
task = load_task("examples.tabular_csv.task", TaskSettings(0, "{data}", 0.2, "auto"))
print(type(task).__module__)
"""


def test_the_working_directory_wins_over_an_installed_package_of_the_same_name(
    tmp_path: Path,
) -> None:
    # A console script's sys.path[0] is its own folder, not the working directory; and Opacus
    # installs a top-level package called `examples`, as other distributions may.
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(data=tmp_path))

    done = subprocess.run(
        [sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, check=False
    )

    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "examples.tabular_csv.task"
