"""Shared check of the benchmark command lines: bad input is refused in one line."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest


def refusal(
    main: Callable[[Sequence[str]], int], argv: Sequence[str], capsys: pytest.CaptureFixture[str]
) -> str:
    """Run ``main(argv)``; assert exit status 2 with one line on stderr, and return that line."""
    status = main(argv)
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert len(err.splitlines()) == 1, err
    return err
