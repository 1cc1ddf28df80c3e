"""Per-round anomaly scores for opened client updates, the outliers they flag, and evidence.

Two statistics on the stacked ``(n, d)`` matrix of flattened deltas (``local - global``), both
robust z-scores (median and MAD) within the round: **norm**, of ``log ||delta||`` (upper tail:
scaled or noise-drowned updates); **consensus**, of the cosine between an update and a trusted
``reference`` direction (FLTrust, Cao et al. 2021, https://arxiv.org/abs/2012.13995) or, without
one, the signed consensus of the *other* updates (:func:`consensus_cosines`; lower tail: updates
pointing against the rest). :class:`DirectionEvidence` accumulates each client's direction
z-scores across rounds (weighted Stouffer), so a round that saw an attack keeps it flagged later.
Caveat: under DP-SGD an honest update is mostly noise, so what the direction can see is set by
the noise, not by the thresholds; and honest clients are assumed exchangeable (strongly non-IID
partitions drift towards a flag). Ordering contract: score the *unclipped* decoded deltas
(clipping would hide a scaled update), then flag, then clip (``server.aggregation``) and
aggregate. Measurements and the reasoning behind each choice: docs/anomaly.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

NORM_Z: Final = 3.5
"""Flag when the norm's robust z-score exceeds this (Iglewicz-Hoaglin's outlier cut-off)."""

CONSENSUS_Z: Final = 3.0
"""Flag when the consensus cosine's robust z-score is below minus this."""

LOG_MAD_FLOOR: Final = 0.05
"""Least spread of ``log ||delta||``: with ``NORM_Z``, only norms >= 1.3x the median flag."""

CONSENSUS_EDGE: Final = 2.5
"""The consensus counts only if the Gram's top eigenvalue exceeds this times ``sqrt((n-1)/d)``.

For ``n`` independent isotropic directions in ``d`` dimensions that normalised eigenvalue sits
near 2 (the semicircle edge); the margin above it is chosen in docs/anomaly.md.
"""

EVIDENCE_Z: Final = 3.0
"""Flag a client when its accumulated direction evidence (Stouffer's ``Z``) is below minus this."""

EVIDENCE_CAP: Final = 6.0
"""Each round's direction z-score is clipped to ``±`` this before it is accumulated."""

MIN_UPDATES: Final = 3
"""Fewest updates a round needs for a median and a MAD to mean anything; below it nobody flags."""

_MAD_TO_SIGMA: Final = 1.4826
"""``1 / Phi^-1(3/4)``: the MAD of a normal sample times this estimates its standard deviation."""


class AnomalyError(ValueError):
    """The updates given cannot be scored together (empty, ragged, non-finite)."""


@dataclass(frozen=True)
class AnomalyScore:
    """One update's statistics within its round.

    Attributes:
        norm: L2 norm of the delta.
        norm_z: Robust z-score of ``log(norm)``; large positive = much larger than the others.
        consensus: Cosine, in ``[-1, 1]``, between the delta and the consensus direction of the
            other deltas of the round; negative = pointing against them.
        consensus_z: Robust z-score of ``consensus``; large negative = against the others.
        direction_counts: Whether ``consensus_z`` carries evidence this round (a reference was
            given, or the consensus of the others was significant); when not, it is 0.
        direction_weight: How much this round's direction can see, the same for every update
            of the round: the ``consensus_z`` a reversed copy of the round's median update would
            get (``2 max(median consensus, 0) / scale``, >= 0). :class:`DirectionEvidence`
            weighs the round by it.

    """

    norm: float
    norm_z: float
    consensus: float
    consensus_z: float
    direction_counts: bool = False
    direction_weight: float = 1.0


def _stack(deltas: Mapping[int, npt.ArrayLike]) -> tuple[list[int], FloatArray]:
    if not deltas:
        raise AnomalyError("no updates to score")
    ids = list(deltas)
    rows = [np.asarray(deltas[i], dtype=np.float64).ravel() for i in ids]
    sizes = {r.shape[0] for r in rows}
    if len(sizes) != 1:
        raise AnomalyError(f"updates differ in length: {sorted(sizes)}")
    matrix = np.stack(rows)
    if not np.isfinite(matrix).all():
        bad = [i for i, r in zip(ids, rows, strict=True) if not np.isfinite(r).all()]
        raise AnomalyError(f"updates of {bad} hold non-finite values; reject them before scoring")
    return ids, matrix


def robust_location_scale(values: FloatArray, *, floor: float) -> tuple[float, float]:
    """Return ``(median, max(1.4826 * MAD, floor))``: a centre and spread outliers cannot bend."""
    median = float(np.median(values))
    mad = float(np.median(np.abs(values - median)))
    return median, max(_MAD_TO_SIGMA * mad, floor)


def robust_z(values: FloatArray, *, floor: float) -> FloatArray:
    """Return ``(values - median) / max(1.4826 * MAD, floor)``, z-scores outliers cannot bend."""
    median, scale = robust_location_scale(values, floor=floor)
    return np.asarray((values - median) / scale, dtype=np.float64)


def consensus_cosines(units: FloatArray) -> tuple[FloatArray, bool]:
    """Return each row's cosine to the signed consensus of the others, and if it is significant.

    The consensus is ``sum_j v_j u_j`` over the unit-normalised updates ``u_j``, where ``v`` is
    the leading eigenvector of their off-diagonal Gram matrix, signed so that most entries are
    positive (honest majority): a sign-flipped update then joins the consensus with its sign
    undone instead of cancelling an honest one, and normalising first keeps scaled updates from
    owning it. Significant: the top eigenvalue rises above what independent noise directions
    would give (``CONSENSUS_EDGE``), so a round of pure noise flags nobody by direction.

    ``units`` is ``(n, d)`` with unit (or zero) rows. The consensus excluding row ``i`` is
    ``c_i = sum_{j != i} v_j u_j``; as ``G v = lambda v`` for the off-diagonal Gram ``G``, the
    inner product ``<u_i, c_i>`` is ``lambda v_i`` and ``||c_i||^2 = ||c||^2 - 2 v_i <u_i, c>
    + v_i^2 ||u_i||^2`` with ``c = sum_j v_j u_j``: no ``(n, n, d)`` temporary is needed.
    """
    gram = units @ units.T
    sq_norms = np.diag(gram).copy()
    np.fill_diagonal(gram, 0.0)
    eigenvalues, eigenvectors = np.linalg.eigh(gram)
    lam = float(eigenvalues[-1])
    v = eigenvectors[:, -1]
    positive, negative = int((v > 0).sum()), int((v < 0).sum())
    if negative > positive or (negative == positive and v.sum() < 0):
        v = -v
    inner = lam * v  # <u_i, c_i>
    # ||c||^2 = v^T (G + diag(sq)) v = lam + sum v_j^2 sq_j ; <u_i, c> = lam v_i + v_i sq_i
    c_sq = lam + float(np.sum(v * v * sq_norms))
    u_dot_c = lam * v + v * sq_norms
    ci_sq = np.maximum(c_sq - 2.0 * v * u_dot_c + v * v * sq_norms, 0.0)
    denom = np.sqrt(ci_sq * sq_norms)
    out = np.zeros_like(inner)
    np.divide(inner, denom, out=out, where=denom > 0)
    n, d = units.shape
    significant = lam > CONSENSUS_EDGE * math.sqrt((n - 1) / max(d, 1))
    return np.clip(out, -1.0, 1.0), significant


def score_updates(
    deltas: Mapping[int, npt.ArrayLike], *, reference: npt.ArrayLike | None = None
) -> dict[int, AnomalyScore]:
    """Score every update of one round against the others.

    Args:
        deltas: Node id -> the update ``local - global`` as any-shaped float array (flattened
            here); all of one length, finite.
        reference: Optional trusted direction of the same length (FLTrust, Cao et al. 2021):
            e.g. the update of a few plain SGD steps from the global model on a small clean set
            the server holds, never the evaluation split. When given, ``consensus`` is the
            cosine to it instead of to the others' consensus, and always counts.

    Returns:
        Node id -> its :class:`AnomalyScore`, in the input's order. With fewer than
        ``MIN_UPDATES`` updates every z-score is 0; when the round has no significant
        consensus (``CONSENSUS_EDGE``) and no reference, every ``consensus_z`` is 0.

    Raises:
        AnomalyError: No updates, updates of different lengths, non-finite values, or a
            reference of another length or without direction.

    """
    ids, matrix = _stack(deltas)
    n, d = matrix.shape
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))
    units = np.zeros_like(matrix)
    np.divide(matrix, norms[:, None], out=units, where=norms[:, None] > 0)
    zeros = np.zeros(n)
    if reference is not None:
        ref = np.asarray(reference, dtype=np.float64).ravel()
        ref_norm = float(np.linalg.norm(ref)) if ref.shape == (d,) else 0.0
        if not (math.isfinite(ref_norm) and ref_norm > 0):
            raise AnomalyError(f"`reference` must be a finite non-zero vector of length {d}")
        cosines, counts = np.clip(units @ (ref / ref_norm), -1.0, 1.0), True
    elif n >= MIN_UPDATES:
        cosines, counts = consensus_cosines(units)
    else:
        cosines, counts = zeros, False
    weight = 0.0
    if n < MIN_UPDATES:
        norm_z, cons_z = zeros, zeros
    else:
        tiny = np.finfo(np.float64).tiny
        log_norms = np.log(np.maximum(norms, tiny))
        norm_z = robust_z(log_norms, floor=_MAD_TO_SIGMA * LOG_MAD_FLOOR)
        cons_z = zeros
        if counts:
            centre, scale = robust_location_scale(cosines, floor=1.0 / math.sqrt(d))
            cons_z = (cosines - centre) / scale
            weight = 2.0 * max(centre, 0.0) / scale
    return {
        node: AnomalyScore(
            norm=float(norms[k]),
            norm_z=float(norm_z[k]),
            consensus=float(cosines[k]),
            consensus_z=float(cons_z[k]),
            direction_counts=bool(counts and n >= MIN_UPDATES),
            direction_weight=weight,
        )
        for k, node in enumerate(ids)
    }


def flag_outliers(
    scores: Mapping[int, AnomalyScore],
    *,
    norm_z: float = NORM_Z,
    consensus_z: float = CONSENSUS_Z,
) -> list[int]:
    """Return the sorted ids with ``norm_z`` above ``norm_z`` or ``consensus_z`` below minus it.

    Raises:
        ValueError: A threshold is not > 0.

    """
    if not (norm_z > 0 and consensus_z > 0):
        raise ValueError(f"thresholds must be > 0, got norm_z={norm_z}, consensus_z={consensus_z}")
    return sorted(
        node for node, s in scores.items() if s.norm_z > norm_z or s.consensus_z < -consensus_z
    )


class DirectionEvidence:
    """Each client's direction z-scores accumulated across rounds: a weighted Stouffer ``Z``.

    Per client, ``Z = sum_t w_t z_t / sqrt(sum_t w_t^2)`` over the rounds in which its direction
    counted, each ``z_t`` clipped to ``±EVIDENCE_CAP`` so no single round decides alone. The
    weight ``w_t`` is the round's ``direction_weight`` (the z-score a reversed copy of the
    round's median update would get), the same for every client of the round, so for an honest
    client ``Z`` stays roughly standard normal while faded rounds (``w_t`` near 0) cannot dilute
    the ones that saw something (Liptak 1958). A client flags when ``Z < -EVIDENCE_Z``.

    State is two numbers per node id, the weighted sum ``sum_t w_t z_t`` of its clipped
    z-scores and the sum ``sum_t w_t^2`` of the squared weights of the rounds that counted;
    :meth:`to_json` and :meth:`from_json` carry it through a checkpoint. (Checkpoints written
    before the weights held ``[sum, rounds]``: the same state with every ``w_t = 1``.)
    """

    def __init__(self) -> None:
        self._sums: dict[int, float] = {}
        self._weights: dict[int, float] = {}

    def add(self, scores: Mapping[int, AnomalyScore]) -> None:
        """Add one round's direction z-scores of the updates whose direction counted."""
        for node, score in scores.items():
            weight = score.direction_weight
            if score.direction_counts and weight > 0 and math.isfinite(weight):
                z = min(max(score.consensus_z, -EVIDENCE_CAP), EVIDENCE_CAP)
                self._sums[node] = self._sums.get(node, 0.0) + weight * z
                self._weights[node] = self._weights.get(node, 0.0) + weight * weight

    def combined(self, node: int) -> float:
        """Return the weighted Stouffer ``Z`` of ``node`` (0 for a node with no counted round)."""
        weights = self._weights.get(node, 0.0)
        return self._sums[node] / math.sqrt(weights) if weights > 0 else 0.0

    def flagged(self, nodes: Iterable[int], *, threshold: float = EVIDENCE_Z) -> list[int]:
        """Return the sorted ``nodes`` whose ``Z`` is below ``-threshold``."""
        if not threshold > 0:
            raise ValueError(f"`threshold` must be > 0, got {threshold}")
        return sorted(node for node in set(nodes) if self.combined(node) < -threshold)

    def to_json(self) -> dict[str, list[float]]:
        """Return ``{"<node>": [weighted sum, sum of squared weights]}``."""
        return {str(n): [self._sums[n], self._weights[n]] for n in self._weights}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> DirectionEvidence:
        """Rebuild from :meth:`to_json`'s output.

        Raises:
            AnomalyError: An entry is not ``[finite sum, finite weight > 0]``.

        """
        evidence = cls()
        for key, entry in data.items():
            if not (isinstance(entry, list | tuple) and len(entry) == 2):
                raise AnomalyError(f"direction evidence of node {key} is not [sum, weight]")
            total, weight = entry
            if type(total) not in (int, float) or not math.isfinite(total):
                raise AnomalyError(f"direction evidence of node {key} has a non-finite sum")
            if type(weight) not in (int, float) or not (math.isfinite(weight) and weight > 0):
                raise AnomalyError(f"direction evidence of node {key} has a bad weight")
            evidence._sums[int(key)] = float(total)
            evidence._weights[int(key)] = float(weight)
        return evidence
