"""The two ways ``fedveil federation up`` fails, each with a one-line message.

``DeployError``: something the user can fix before anything runs (bad input, bad key material,
a busy work directory); the CLI prints it and exits 2. ``FederationError``: the federation or
its Flower run failed once started; the message names the log to read; the CLI exits 1.
"""

from __future__ import annotations


class DeployError(ValueError):
    """A problem the user can fix before anything runs; the message is one line."""


class FederationError(RuntimeError):
    """The federation or its Flower run failed; the message is one line naming a log."""
