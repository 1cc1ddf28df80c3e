"""Keep the terminal for what a user can act on while Flower's simulation engine runs.

``fedveil simulate`` drives Flower's in-process engine (``flwr.simulation.run_simulation``) on
purpose: it runs the ServerApp object it builds, with the observers that draw progress. Flower
announces that entry point as deprecated on every run and Ray prints a tip about GPU environment
variables; neither is something a fedveil user can change, so :func:`quiet_engine` drops the first
(``--verbose`` keeps it) and takes Ray's documented opt-in that retires the second. Every other
warning and log record passes untouched.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

RAY_ACCELERATOR_OPT_IN = "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"


class RunSimulationDeprecation(logging.Filter):
    """Drops Flower's "``run_simulation`` is deprecated" record; passes every other record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Return False only for the deprecation notice of ``run_simulation``."""
        message = record.getMessage()
        return not (message.startswith("DEPRECATED FEATURE") and "run_simulation" in message)


@contextmanager
def quiet_engine(*, verbose: bool) -> Iterator[None]:
    """Run the simulation engine without the notices a user cannot act on.

    Args:
        verbose: Keep Flower's deprecation notice (for debugging the engine itself).

    """
    # Ray reads this in the driver and its workers: with no GPUs requested it then leaves the
    # accelerator variables alone, the behaviour Ray makes the default later.
    os.environ.setdefault(RAY_ACCELERATOR_OPT_IN, "0")
    flwr_logger = logging.getLogger("flwr")
    notice = RunSimulationDeprecation()
    if not verbose:
        flwr_logger.addFilter(notice)
    try:
        yield
    finally:
        flwr_logger.removeFilter(notice)
