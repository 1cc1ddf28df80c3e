"""Fault injection: the instruction a simulated server sends, and what a faulty node does.

The simulation's strategy wrapper adds a ConfigRecord named ``FAULT_RECORD`` to chosen nodes'
train messages, with ``kind`` (one of ``FAULTS``) and ``target`` (a node id: for ``misroute``,
whose context the update claims). The simulation's ClientApp mod (``simulations.adversary.mod``)
takes it out of the message before the honest handler runs. Each fault models a real attack on
the path between client and aggregator:

* ``tamper``: the sealed update with its last byte flipped (inside the AEAD tag);
* ``replay``: the sealed update the node sent in an earlier round;
* ``misroute``: an update sealed for the target node's context;
* ``drop``: the node vanishes before training (spends nothing, sends no update).

A deployed ClientApp (``client.app``) has no mod: it ignores the record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from flwr.app import ConfigRecord, RecordDict

FAULTS: Final = ("tamper", "replay", "misroute", "drop")
"""Valid fault kinds (``faults.*`` config keys)."""

FAULT_RECORD: Final = "fedveil.sim.fault"
"""Name of the ConfigRecord that carries a fault instruction in a train message."""


class SimulatedDrop(RuntimeError):  # noqa: N818 (an event, named for what happens)
    """The node vanishes mid-round (fault injection): it sends nothing and spends nothing."""


@dataclass(frozen=True)
class Fault:
    """One node's fault for one round; ``target`` is the node a misrouted update claims."""

    kind: str
    target: int

    def __post_init__(self) -> None:
        """Refuse kinds outside ``FAULTS`` and non-integer targets."""
        if self.kind not in FAULTS:
            raise ValueError(f"unknown fault {self.kind!r}; expected one of {FAULTS}")
        if type(self.target) is not int or self.target < 0:
            raise ValueError(f"fault target must be a node id (int >= 0), got {self.target!r}")

    def to_record(self) -> ConfigRecord:
        """Return the ``FAULT_RECORD`` ConfigRecord that instructs a node."""
        return ConfigRecord({"kind": self.kind, "target": self.target})


def take_fault(content: RecordDict) -> Fault | None:
    """Remove the fault instruction from a message's content; return it (``None``: none)."""
    record = content.config_records.get(FAULT_RECORD)
    if record is None:
        return None
    del content[FAULT_RECORD]
    return Fault(kind=str(record.get("kind", "")), target=record.get("target", 0))  # type: ignore[arg-type]


def tampered(sealed: bytes) -> bytes:
    """Return ``sealed`` with its last byte flipped: in the AEAD tag, only opening notices."""
    if not sealed:
        raise ValueError("cannot tamper with an empty sealed update")
    altered = bytearray(sealed)
    altered[-1] ^= 0x01
    return bytes(altered)
