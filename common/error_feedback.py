"""Error feedback: the compression error a client carries into its next round.

Seide et al. 2014 (1-bit SGD); Karimireddy et al. 2019 (https://arxiv.org/abs/1901.09847).
The residual is client-local state: it never leaves the node, and since it is computed from
DP outputs (the sent deltas and what the server decodes from them) keeping it costs no privacy.
"""

from __future__ import annotations

from common.codec_params import Float32Array, check_vector


class ErrorFeedback:
    """Residual memory for error feedback (Seide et al. 2014; Karimireddy et al. 2019).

    Compression error is not lost but carried into the next round: the client sends
    ``compensate(delta) = delta + residual`` and afterwards stores
    ``residual = compensated - decoded``. The residual is a ``float32`` array of shape
    ``(size,)`` in the units of the weights, or ``None`` before the first round.
    """

    def __init__(self, residual: Float32Array | None = None) -> None:
        if residual is not None:
            check_vector(residual, "residual")
            residual = residual.copy()
        self._residual: Float32Array | None = residual

    @property
    def residual(self) -> Float32Array | None:
        """A copy of the residual, to persist between rounds; ``None`` before the first."""
        return None if self._residual is None else self._residual.copy()

    def compensate(self, delta: Float32Array) -> Float32Array:
        """Return ``delta + residual`` as a new ``float32`` array (``delta`` if no residual).

        Raises:
            ValueError: ``delta`` is not a finite 1-D ``float32`` array of the residual's size.

        """
        check_vector(delta, "delta")
        if self._residual is None:
            return delta.copy()
        if delta.shape != self._residual.shape:
            raise ValueError(
                f"`delta` has shape {delta.shape}, residual has {self._residual.shape}"
            )
        return delta + self._residual

    def update(self, compensated: Float32Array, decoded: Float32Array) -> None:
        """Store ``compensated - decoded``, the part of the update the server did not get.

        Raises:
            ValueError: The arrays are not finite 1-D ``float32`` arrays of equal shape.

        """
        check_vector(compensated, "compensated")
        check_vector(decoded, "decoded")
        if compensated.shape != decoded.shape:
            raise ValueError(
                f"`compensated` has shape {compensated.shape}, `decoded` has {decoded.shape}"
            )
        self._residual = compensated - decoded
