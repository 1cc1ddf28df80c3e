"""The aggregator's side of a sealed update: open, decode, validate, rebuild the weights.

Under ``codec.mask = "subspace"`` an update must move only the round's shared subspace
(``common.subspace``): one that moves any other coordinate is rejected, so the global model's
change stays there and the downlink can send only it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from flwr.app import ArrayRecord

from common import subspace
from common.codec import CodecParams, dense_nbytes
from common.envelope import DPFacts, UpdateRejected, open_client_update
from common.sealing import AggregatorKeyPair, SealContext
from common.weights import flatten, unflatten


class UpdateOpener:
    """Holds the aggregator's key pair and the expected codec; turns sealed bytes into weights.

    ``open`` returns the client's reconstructed local weights, ``global + delta``, so any Flower
    strategy can aggregate them as if the client had sent plain weights.
    """

    def __init__(
        self,
        keypair: AggregatorKeyPair,
        *,
        run_id: int,
        params: CodecParams,
        shapes: dict[str, tuple[int, ...]],
    ) -> None:
        self._keypair = keypair
        self.run_id = run_id
        self.params = params
        self.shapes = shapes
        self.size = sum(int(np.prod(s)) for s in shapes.values())

    @property
    def public_key(self) -> bytes:
        """The aggregator's raw X25519 public key, sent to clients with every request."""
        return self._keypair.public_bytes

    @property
    def dense_nbytes(self) -> int:
        """Bytes of one update as dense float32."""
        return dense_nbytes(self.size)

    def open(
        self, sealed: bytes, *, node: int, server_round: int, global_arrays: ArrayRecord
    ) -> tuple[DPFacts, dict[str, npt.NDArray[np.float32]]]:
        """Open ``sealed`` from ``node`` for ``server_round``; raise ``UpdateRejected`` if bad."""
        facts, delta = open_client_update(
            sealed,
            keypair=self._keypair,
            expected=SealContext(self.run_id, server_round, node),
            params=self.params,
            size=self.size,
        )
        if self.params.mask == subspace.MODE:
            inside = subspace.round_indices(self.run_id, server_round, self.size, self.params.topk)
            # Every non-zero lies inside iff as many lie inside as in all: O(k) + one count.
            if np.count_nonzero(delta[inside]) != np.count_nonzero(delta):
                raise UpdateRejected(
                    "malformed",
                    f"the update moves coordinates outside round {server_round}'s subspace",
                )
        base = flatten({k: global_arrays[k].numpy() for k in self.shapes})
        return facts, unflatten(base + delta, self.shapes)
