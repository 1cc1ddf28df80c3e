"""The simulated adversary as Flower ClientApp mods (``(msg, context, call_next) -> Message``).

Both act on train messages only and pass every other message straight to ``call_next``.

* ``fault_mod`` takes the ``FAULT_RECORD`` out of the request, so the honest handler never sees
  it, and then: ``drop`` raises ``SimulatedDrop`` before the handler runs (nothing trained,
  nothing spent; the reply becomes an error); ``misroute`` reads the request and trains as this
  node (the signed downlink names it) but seals the update for the target node's context (an
  attacker that is misrouted trains honestly: the misroute is the fault); ``tamper`` flips
  the last byte of the reply's sealed update; ``replay`` swaps in the sealed update this node
  sent in an earlier round, kept under ``REPLAY_KEY`` in ``context.state``.
* ``attack_mod(kind, attackers)``: a node whose partition id is in ``attackers`` runs the public
  steps of ``client.training_round`` with its attack between them (``label-flip`` before
  training, the update attacks after the round is charged and before sealing); it trains with
  DP-SGD, accounts, compresses and seals like an honest node. Other nodes go to ``call_next``.

Install ``fault_mod`` outside ``attack_mod`` so that an attacker can be faulty as well.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection
from dataclasses import replace

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp.typing import ClientAppCallable, Mod

from client import training_round as steps
from client.local_data import LocalData, partition_of
from common import protocol
from simulations.adversary.attacks import ATTACKS, UPDATE_ATTACKS, flip_labels, poison_weights
from simulations.adversary.faults import SimulatedDrop, take_fault, tampered

REPLAY_KEY = "fedveil.sim.sent-sealed"
"""``context.state`` record holding the last sealed update this node sent honestly."""


def _is_train(msg: Message) -> bool:
    return msg.metadata.message_type.split(".")[0] == MessageType.TRAIN


def _sealed_of(reply: Message) -> bytes | None:
    if reply.has_error() or protocol.UPDATE not in reply.content.config_records:
        return None
    value = reply.content.config_records[protocol.UPDATE].get(protocol.SEALED)
    return value if isinstance(value, bytes) else None


def _swap_sealed(reply: Message, sealed: bytes) -> Message:
    reply.content[protocol.UPDATE] = ConfigRecord({protocol.SEALED: sealed})
    return reply


def _keep_sent(context: Context, sealed: bytes) -> bytes | None:
    """Keep ``sealed`` as this node's latest honest update; return the one kept before."""
    before = context.state.config_records.get(REPLAY_KEY)
    context.state[REPLAY_KEY] = ConfigRecord({protocol.SEALED: sealed})
    value = None if before is None else before.get(protocol.SEALED)
    return value if isinstance(value, bytes) else None


def fault_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Carry out the fault instruction of a train message, if it has one."""
    if not _is_train(msg):
        return call_next(msg, context)
    fault = take_fault(msg.content)
    if fault is not None and fault.kind == "drop":
        raise SimulatedDrop("node dropped out of the round before training (fault injection)")
    if fault is not None and fault.kind == "misroute":
        # The update is sealed for the target's context and is never this node's own send,
        # so it is not kept for a later replay.
        return Message(content=_misrouted_round(msg, context, fault.target), reply_to=msg)
    reply = call_next(msg, context)
    sealed = _sealed_of(reply)
    if sealed is None:
        return reply
    earlier = _keep_sent(context, sealed)
    if fault is None:
        return reply
    if fault.kind == "tamper":
        return _swap_sealed(reply, tampered(sealed))
    if earlier is None:
        raise ValueError("a replay fault needs an update this node sent in an earlier round")
    return _swap_sealed(reply, earlier)


def _misrouted_round(msg: Message, context: Context, target: int) -> RecordDict:
    """Run the honest steps as this node, then seal the update for node ``target``'s context."""
    request = steps.read_request(msg, context)
    data = steps.load_data(request, context)
    if not isinstance(data, LocalData):
        return data
    budget = steps.check_budget(request, data, context)
    if not isinstance(budget, steps.RoundBudget):
        return budget
    local = steps.train_locally(request, data, budget)
    steps.record_round(request, budget)
    elsewhere = Context(
        run_id=context.run_id,
        node_id=target,
        node_config=context.node_config,
        state=context.state,
        run_config=context.run_config,
    )
    return steps.seal_reply(request, budget, local, elsewhere)


def attack_mod(kind: str, attackers: Collection[int]) -> Mod:
    """Return a mod that makes the nodes of partition ids ``attackers`` attack with ``kind``.

    Raises:
        ValueError: ``kind`` is not one of ``ATTACKS``.

    """
    if kind not in ATTACKS:
        raise ValueError(f"unknown attack {kind!r}; valid kinds are {list(ATTACKS)}")
    chosen = frozenset(attackers)

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if not _is_train(msg) or partition_of(context)[0] not in chosen:
            return call_next(msg, context)
        return Message(content=_malicious_round(kind, msg, context), reply_to=msg)

    return mod


def _malicious_round(kind: str, msg: Message, context: Context) -> RecordDict:
    """Run the honest steps in the honest order, with the attack of ``kind`` between them."""
    request = steps.read_request(msg, context)
    data = steps.load_data(request, context)
    if not isinstance(data, LocalData):
        return data
    if kind == "label-flip":
        data = replace(data, labels=flip_labels(data.labels, data.num_classes))
    budget = steps.check_budget(request, data, context)
    if not isinstance(budget, steps.RoundBudget):
        return budget
    local = steps.train_locally(request, data, budget)
    steps.record_round(request, budget)
    if kind in UPDATE_ATTACKS:
        local = poison_weights(
            kind,
            local,
            {name: array.numpy() for name, array in request.global_arrays.items()},
            np.random.default_rng(secrets.randbits(128)),
        )
    return steps.seal_reply(request, budget, local, context)
