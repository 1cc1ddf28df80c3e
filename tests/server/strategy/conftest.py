"""Every strategy test builds Flower Messages, which need a task identity outside a SuperNode."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _messages(task_identity: None) -> None:
    """Set the task identity (``tests.conftest.task_identity``) for every test here."""
