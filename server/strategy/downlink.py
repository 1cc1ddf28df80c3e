"""``CompressedDownlink``: train requests carry the global model as a signed, quantized change.

Each request's dense ``arrays`` record becomes a ``downlink`` record (``common.downlink``): the
change of the global model since the reference the server believes the node holds, quantized
to ``codec.downlink-bits`` (0: raw float32 from zeros), signed with the aggregator's Ed25519
key for the node's run, round and id, plus that key. Nodes holding the same reference share one
encoding; a node with no known reference (first contact, a server restart) gets the change
from the task's seeded initial model, which every node builds (``Task.build_model``), or from
zeros once it refused that base. Under ``codec.mask = "subspace"`` a node that holds last
round's reference gets only the change inside last round's subspace when the global model
moved nowhere else (the opener rejects updates that move elsewhere; a server-side step such as
the watermark does not), so the downlink is as small as an update. Replies, before anything
inside sees them: naming the round's target moves the node's reference there; naming neither
base nor target, or a ``downlink-base`` refusal, forgets it (next change from the initial
model, or from zeros if that was the base refused); no reply keeps the old belief (the node
keeps base and target). ``downlink`` and ``downlink-base`` refusals are rejected with that
reason, charged nothing, and not passed on. ``bytes_down`` (``RoundOutcome``) adds up each
request's blob and key. Uplink updates are opened inside, as before, against the
global model itself. Format and threat model: docs/downlink.md.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from common import protocol, subspace
from common.codec import Float32Array
from common.crypto.signing import SigningKey
from common.downlink import (
    DENSE_BITS,
    DownlinkHeader,
    Subspace,
    digest,
    encode_change,
    signed_blob,
    zero_digest,
)
from common.weights import flatten
from server.strategy.round_book import RoundBook, one_line
from server.strategy.wrapper import StrategyWrapper

log = logging.getLogger(__name__)

_REFUSALS = (protocol.CAUSE_DOWNLINK, protocol.CAUSE_DOWNLINK_BASE)
_ULPS = 8


@dataclass(frozen=True)
class _Change:
    """One encoded change from a base: what every node holding that base is sent."""

    payload: bytes
    payload_hash: bytes
    target: Float32Array
    target_digest: bytes


class CompressedDownlink(StrategyWrapper):
    """Replaces each request's dense model with a signed change from the node's reference."""

    def __init__(
        self,
        strategy: Strategy,
        *,
        signer: SigningKey,
        run_id: int,
        bits: int,
        shapes: dict[str, tuple[int, ...]],
        book: RoundBook,
        initial: Float32Array | None = None,
        subspace_fraction: float | None = None,
    ) -> None:
        super().__init__(strategy)
        if bits not in (0, *range(1, 9), 16):
            raise ValueError(f"`bits` must be 0, 1-8 or 16, got {bits!r}")
        self.signer = signer
        self.run_id = run_id
        self.bits = DENSE_BITS if bits == 0 else bits
        self.shapes = shapes
        self.size = sum(int(np.prod(s)) for s in shapes.values())
        self.book = book
        self.held: dict[int, bytes] = {}
        """Per node, the digest of the reference the server believes it holds (zeros: absent)."""
        self._references: dict[bytes, Float32Array] = {}
        self._sent: dict[int, tuple[bytes, bytes]] = {}
        self.subspace_fraction = subspace_fraction
        self._initial_digest = None if initial is None else digest(initial)
        self._initial = {} if initial is None else {digest(initial): initial}
        self._refused_initial: set[int] = set()
        self._made_in: dict[bytes, int] = {}
        """Per reference, the round whose request created it."""
        self._previous: tuple[int, Float32Array] | None = None
        """The global model the last round's requests carried, and that round."""

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Build the wrapped strategy's requests, then swap each one's model for its change."""
        requests = list(self.strategy.configure_train(server_round, arrays, config, grid))
        model = flatten({k: arrays[k].numpy() for k in self.shapes})
        # Quantization noise acts on a DP output (post-processing); OS entropy keeps it unguessable.
        rng = np.random.default_rng(secrets.randbits(128))
        changes: dict[bytes, _Change] = {}
        self._sent = {}
        moved_in = self._moved_only_in(server_round, model)
        for message in requests:
            node = int(message.metadata.dst_node_id)
            base = self._base_of(node)
            change = changes.get(base)
            if change is None:
                sparse = moved_in if self._made_in.get(base) == server_round - 1 else None
                change = changes[base] = self._encode(model, base, rng, sparse)
                self._references[change.target_digest] = change.target
                self._made_in[change.target_digest] = server_round
            header = DownlinkHeader(
                bits=self.bits,
                size=self.size,
                run_id=self.run_id,
                server_round=server_round,
                node_id=node,
                base=base,
                target=change.target_digest,
                payload_len=len(change.payload),
            ).pack()
            blob = signed_blob(header, change.payload, change.payload_hash, self.signer)
            record = ConfigRecord(
                {protocol.DOWNLINK_BLOB: blob, protocol.SIGNING_KEY: self.signer.public_bytes}
            )
            content = {k: v for k, v in message.content.items() if k != protocol.ARRAYS}
            message.content = RecordDict({**content, protocol.DOWNLINK: record})
            self.book.outcome.bytes_down += len(blob) + len(self.signer.public_bytes)
            self._sent[node] = (base, change.target_digest)
        self._previous = (server_round, model)
        return requests

    def _moved_only_in(self, server_round: int, model: Float32Array) -> Subspace | None:
        """Return last round's subspace if the global model moved only inside it since then."""
        if self.subspace_fraction is None or self._previous is None:
            return None
        last_round, last_model = self._previous
        if last_round != server_round - 1:
            return None
        mask = subspace.round_mask(self.run_id, last_round, self.size, self.subspace_fraction)
        outside = ~mask
        # Averaging equal values in float32 can move them by an ulp; that is not a change.
        drift = np.abs(model[outside] - last_model[outside])
        if np.any(drift > _ULPS * np.spacing(np.abs(last_model[outside]))):
            return None
        return Subspace(subspace.round_seed(self.run_id, last_round), self.subspace_fraction)

    def _base_of(self, node: int) -> bytes:
        """Return the digest of the base to encode ``node``'s change from."""
        if self.bits == DENSE_BITS:
            return zero_digest(self.size)
        known = self.held.get(node)
        if known is not None and known in self._references:
            return known
        if self._initial_digest is not None and node not in self._refused_initial:
            return self._initial_digest
        return zero_digest(self.size)

    def _encode(
        self,
        model: Float32Array,
        base: bytes,
        rng: np.random.Generator,
        sparse: Subspace | None,
    ) -> _Change:
        start = self._references.get(base)
        if start is None:
            start = self._initial.get(base)
        if start is None:
            start = np.zeros(self.size, dtype=np.float32)
        payload, target = encode_change(model, start, self.bits, rng, sparse)
        return _Change(payload, hashlib.sha256(payload).digest(), target, digest(target))

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Learn which reference each node holds; reject downlink refusals; pass the rest on."""
        passed: list[Message] = []
        for reply in replies:
            node = self.book.sender_of(reply)
            if reply.has_error():
                passed.append(reply)
                continue
            status = reply.content.config_records.get(protocol.STATUS)
            cause = None if status is None else status.get(protocol.CAUSE)
            if status is not None and cause in _REFUSALS:
                if cause == protocol.CAUSE_DOWNLINK_BASE:
                    sent = self._sent.get(node)
                    if sent is not None and sent[0] == self._initial_digest:
                        # Its build of the initial model differs (another torch, say): zeros.
                        self._refused_initial.add(node)
                    self.held.pop(node, None)
                self.book.outcome.reject(node, str(cause), one_line(str(status.get("reason", ""))))
                continue
            self._note_held(node, reply)
            passed.append(reply)
        self._sent = {}
        kept = set(self.held.values())
        self._references = {d: v for d, v in self._references.items() if d in kept}
        self._made_in = {d: r for d, r in self._made_in.items() if d in kept}
        return self.strategy.aggregate_train(server_round, passed)

    def _note_held(self, node: int, reply: Message) -> None:
        """Move ``node``'s reference to the digest its reply names, or forget an unknown one."""
        sent = self._sent.get(node)
        record = reply.content.config_records.get(protocol.DOWNLINK)
        held = None if record is None else record.get(protocol.DOWNLINK_DIGEST)
        if sent is None or not isinstance(held, bytes) or self.bits == DENSE_BITS:
            return
        base, target = sent
        if held == target:
            self.held[node] = target
        elif held != base:
            log.info("node %d holds a reference the server does not know: next from zeros", node)
            self.held.pop(node, None)
