"""Fault injection for demonstrations and tests: a client that sends a bad sealed update.

Only the server's request can switch a fault on (``seal.fault``), and only when the run config
asks for faults; an honest deployment never sees one. Each fault models a real attack on the
path between client and aggregator.
"""

from __future__ import annotations

from collections.abc import Callable

FAULTS = ("tamper", "replay", "misroute", "drop")


class SimulatedDrop(RuntimeError):  # noqa: N818 (an event, named for what happens)
    """The node vanishes mid-round (fault injection): it sends nothing and spends nothing."""


def inject_fault(
    kind: str,
    sealed: bytes,
    *,
    previous: bytes | None,
    seal_as: Callable[[int], bytes],
    target: int,
) -> bytes:
    """Return what a faulty client sends instead of ``sealed``.

    ``tamper`` flips one ciphertext bit; ``replay`` resends the previous round's update;
    ``misroute`` sends an update sealed for node ``target``'s context (``seal_as(target)``).
    """
    if kind == "tamper":
        altered = bytearray(sealed)
        altered[-1] ^= 0x01  # the last byte is in the AEAD tag: only decryption can notice
        return bytes(altered)
    if kind == "replay":
        if previous is None:
            raise ValueError("a replay fault needs an update from an earlier round")
        return previous
    if kind == "misroute":
        return seal_as(target)
    raise ValueError(f"unknown fault {kind!r}; expected one of {FAULTS}")
