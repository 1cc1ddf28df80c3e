"""Robust aggregators by name, and the norm bound on updates.

The aggregators are Flower's own strategies (``FedAvg``, ``FedMedian``, ``FedTrimmedAvg``,
``Krum``, ``MultiKrum``), configured for fedveil's clean replies
(``{"arrays": ArrayRecord(global + delta), "metrics": MetricRecord({"weight": 1.0})}``, uniform
weights). Their math fits these replies as they are: a coordinate-wise median or trimmed mean of
``global + delta_i`` is ``global`` plus the median or trimmed mean of the deltas, and Krum's
distances are differences, so the shared ``global`` cancels. What Flower lacks is added by thin
subclasses, each a guard on the number ``n`` of replies a round actually aggregates, given the
``f`` clients assumed malicious:

==============  ==========================  ===============================================
name            runs robustly when           added to Flower's strategy
==============  ==========================  ===============================================
fedavg          n >= 1                       nothing (plain ``FedAvg``)
median          n > 2f                       the guard
trimmed-mean    n > 2f                       trims ``max(floor(beta n), f)`` from each side
krum            n > 2f + 2                   the guard
multikrum       n > 2f + 2                   the guard; averages the ``m = n - f`` best
==============  ==========================  ===============================================

A round with too few replies is skipped as Flower's own ``Bulyan`` does: ``aggregate_train``
logs a warning and returns ``(None, None)`` (the round loop keeps the global model), and the
one-line reason is left in the strategy's ``skipped`` attribute for the round's record.
:func:`build_aggregator` refuses, with :class:`AggregatorError`, a configuration whose
``expected_clients`` could never run.

With sparse updates (``codec.topk < 1``) ``median`` and ``trimmed-mean`` run per coordinate over
the clients that sent it (``server.sent_coordinates``), and need more than ``2f`` senders of a
coordinate on average (``n * topk > 2f``): a coordinate sent by ``2f`` or fewer cannot tell the
``f`` attackers from honest senders, and moves only where ``f + 1`` of them agree on its sign.

The norm bound (:func:`clip_update`) acts on deltas, ``local - global``, after anomaly scoring
(``server.anomaly``) and before aggregation; :func:`bound_local_weights` applies it to the
reconstructed local weights an opened reply carries.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Final

import numpy as np
import numpy.typing as npt
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum

from common import protocol
from common.config import ConfigError
from common.weights import NamedArrays, map_update
from server.sent_coordinates import Deltas, SentCoordinatewise, sent_median, sent_trimmed_mean

log = logging.getLogger(__name__)

AGGREGATORS: Final = ("fedavg", "median", "trimmed-mean", "krum", "multikrum")
"""Valid values of the ``aggregation`` config key."""


class AggregatorError(ConfigError):
    """An aggregator that cannot run (robustly) with the given clients, or an unknown name.

    A configuration problem (``aggregation`` against the clients per round), so the CLI reports
    it like any other bad config: one line, exit 2.
    """


def _check_numbers(expected_clients: int, assumed_malicious: int, trim_beta: float) -> None:
    if type(expected_clients) is not int or expected_clients < 1:
        raise AggregatorError(f"`expected_clients` must be an int >= 1, got {expected_clients!r}")
    if type(assumed_malicious) is not int or assumed_malicious < 0:
        raise AggregatorError(f"`assumed_malicious` must be an int >= 0, got {assumed_malicious!r}")
    if not (isinstance(trim_beta, int | float) and 0.0 <= trim_beta < 0.5):
        raise AggregatorError(f"`trim_beta` must be in [0, 0.5), got {trim_beta!r}")


def requirement(name: str, num_clients: int, assumed_malicious: int) -> str | None:
    """Return why ``name`` cannot aggregate ``num_clients`` replies robustly, or ``None``.

    The reason is one line naming the numbers, e.g. ``krum needs more than 2f+2 = 6 clients per
    round with f = 2 assumed malicious; got 5``.
    """
    if name not in AGGREGATORS:
        raise AggregatorError(f"unknown aggregation {name!r}; valid names are {list(AGGREGATORS)}")
    f = assumed_malicious
    if name == "fedavg":
        need, rule = 0, "0"
    elif name in ("median", "trimmed-mean"):
        need, rule = 2 * f, "2f"
    else:
        need, rule = 2 * f + 2, "2f+2"
    if num_clients > need:
        return None
    return (
        f"{name} needs more than {rule} = {need} clients per round with f = {f} "
        f"assumed malicious; got {num_clients}"
    )


class _Guard(FedAvg):
    """Base of the guarded strategies: skip a round when too few replies arrived.

    A skipped round logs a warning and leaves its reason in ``skipped``; otherwise the rule is
    fitted to the ``n`` replies (:meth:`_fit_to`) and the Flower strategy next in the MRO runs.
    """

    aggregator_name: str
    assumed_malicious: int
    skipped: str | None

    def _guard(self, name: str, assumed_malicious: int) -> None:
        self.aggregator_name = name
        self.assumed_malicious = assumed_malicious
        self.skipped = None

    def _fit_to(self, n: int) -> None:
        """Adjust the rule to the ``n`` replies this round aggregates (nothing by default)."""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate by the Flower strategy's rule, or skip (see the module docstring)."""
        replies = list(replies)
        n = sum(1 for r in replies if not r.has_error())
        self.skipped = requirement(self.aggregator_name, n, self.assumed_malicious)
        if self.skipped is not None:
            log.warning("round %d: aggregation skipped: %s", server_round, self.skipped)
            return None, None
        self._fit_to(n)
        return super().aggregate_train(server_round, replies)


class GuardedMedian(_Guard, FedMedian):
    """Flower's ``FedMedian``; skips a round with ``n <= 2f`` replies."""

    def __init__(self, *, assumed_malicious: int, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._guard("median", assumed_malicious)


class GuardedTrimmedAvg(_Guard, FedTrimmedAvg):
    """Flower's ``FedTrimmedAvg`` trimming at least ``f`` replies from each side.

    Each round trims ``max(floor(beta n), f)`` of the ``n`` values of every coordinate from
    each end (``beta`` alone may trim fewer than ``f`` when fewer replies arrive than expected);
    skips a round with ``n <= 2f`` replies.
    """

    def __init__(self, *, assumed_malicious: int, beta: float, **kwargs: object) -> None:
        super().__init__(beta=beta, **kwargs)  # type: ignore[arg-type]
        self._guard("trimmed-mean", assumed_malicious)
        self.configured_beta = beta

    def trimmed_per_side(self, n: int) -> int:
        """Return how many of ``n`` values are cut from each end of every coordinate."""
        return max(int(self.configured_beta * n), self.assumed_malicious)

    def _fit_to(self, n: int) -> None:
        cut = self.trimmed_per_side(n)
        # Flower cuts int(beta * n); (cut + 1/4) / n is < 1/2 (as n > 2 cut) and floors to cut.
        configured = int(self.configured_beta * n)
        self.beta = self.configured_beta if cut == configured else (cut + 0.25) / n


class SentMedian(_Guard, SentCoordinatewise):
    """``median`` of sparse updates: per coordinate over its senders; skips ``n <= 2f``."""

    def __init__(self, *, assumed_malicious: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._guard("median", assumed_malicious)

    def rule(self, deltas: Deltas) -> npt.NDArray[np.float64]:
        """Return the senders' median of each coordinate (``server.sent_coordinates``)."""
        return sent_median(deltas, assumed_malicious=self.assumed_malicious)


class SentTrimmedAvg(_Guard, SentCoordinatewise):
    """``trimmed-mean`` of sparse updates: per coordinate over its senders; skips ``n <= 2f``."""

    def __init__(self, *, assumed_malicious: int, beta: float, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._guard("trimmed-mean", assumed_malicious)
        self.beta = beta

    def rule(self, deltas: Deltas) -> npt.NDArray[np.float64]:
        """Return the senders' trimmed mean of each coordinate (``server.sent_coordinates``)."""
        return sent_trimmed_mean(deltas, assumed_malicious=self.assumed_malicious, beta=self.beta)


class GuardedKrum(_Guard, Krum):
    """Flower's ``Krum`` (one update selected); skips a round with ``n <= 2f + 2`` replies."""

    def __init__(self, *, assumed_malicious: int, **kwargs: object) -> None:
        super().__init__(num_malicious_nodes=assumed_malicious, **kwargs)  # type: ignore[arg-type]
        self._guard("krum", assumed_malicious)


class GuardedMultiKrum(_Guard, MultiKrum):
    """Flower's ``MultiKrum`` averaging the ``m = n - f`` updates of lowest Krum score.

    ``m`` follows the replies each round really has (Flower fixes it at construction, so a
    round with fewer replies would average them all, attackers included); skips a round with
    ``n <= 2f + 2`` replies.
    """

    def __init__(self, *, assumed_malicious: int, **kwargs: object) -> None:
        super().__init__(num_malicious_nodes=assumed_malicious, **kwargs)  # type: ignore[arg-type]
        self._guard("multikrum", assumed_malicious)

    def _fit_to(self, n: int) -> None:
        self.num_nodes_to_select = n - self.assumed_malicious


_Builder = Callable[[dict[str, object], int, float], FedAvg]

_SPARSE: Final[dict[str, _Builder]] = {
    "median": lambda kw, f, beta: SentMedian(assumed_malicious=f, **kw),
    "trimmed-mean": lambda kw, f, beta: SentTrimmedAvg(assumed_malicious=f, beta=beta, **kw),
}

_REGISTRY: Final[dict[str, _Builder]] = {
    "fedavg": lambda kw, f, beta: FedAvg(**kw),  # type: ignore[arg-type]
    "median": lambda kw, f, beta: GuardedMedian(assumed_malicious=f, **kw),
    "trimmed-mean": lambda kw, f, beta: GuardedTrimmedAvg(assumed_malicious=f, beta=beta, **kw),
    "krum": lambda kw, f, beta: GuardedKrum(assumed_malicious=f, **kw),
    "multikrum": lambda kw, f, beta: GuardedMultiKrum(assumed_malicious=f, **kw),
}


def build_aggregator(
    name: str,
    *,
    expected_clients: int,
    assumed_malicious: int,
    trim_beta: float = 0.2,
    codec_topk: float = 1.0,
) -> FedAvg:
    """Return the Flower strategy that aggregates a round's clean replies under ``name``.

    Args:
        name: One of ``AGGREGATORS``.
        expected_clients: Replies a round is expected to aggregate (clients sampled per round).
        assumed_malicious: ``f``, the Byzantine clients per round the aggregator must tolerate.
        trim_beta: Fraction trimmed from each side by ``trimmed-mean`` (at least ``f`` are).
        codec_topk: The ``codec.topk`` clients compress with. Below 1, ``median`` and
            ``trimmed-mean`` run over each coordinate's senders (``SentMedian``,
            ``SentTrimmedAvg``) and are refused unless ``expected_clients * codec_topk > 2f``
            (module docstring; docs/anomaly.md).

    Raises:
        AggregatorError: Unknown ``name`` (the message lists the valid ones), out-of-domain
            numbers, or ``expected_clients`` too few for ``name`` (one line naming the numbers,
            e.g. ``krum needs more than 2f+2 = 6 clients per round with f = 2 assumed
            malicious; got 5``), or ``median``/``trimmed-mean`` with too few senders of a
            coordinate on average.

    """
    if name not in _REGISTRY:
        raise AggregatorError(f"unknown aggregation {name!r}; valid names are {list(AGGREGATORS)}")
    _check_numbers(expected_clients, assumed_malicious, trim_beta)
    reason = requirement(name, expected_clients, assumed_malicious)
    if reason is not None:
        raise AggregatorError(reason)
    if not (isinstance(codec_topk, int | float) and 0.0 < codec_topk <= 1.0):
        raise AggregatorError(f"`codec_topk` must be in (0, 1], got {codec_topk!r}")
    sparse = name in _SPARSE and codec_topk < 1.0
    senders = expected_clients * codec_topk
    if sparse and senders <= 2 * assumed_malicious:
        raise AggregatorError(
            f"{name} with codec.topk = {codec_topk} and {expected_clients} clients per round: "
            f"each coordinate is sent {senders:.3g} times on average, and a coordinate-wise "
            f"rule robust to f = {assumed_malicious} needs it sent more than 2f = "
            f"{2 * assumed_malicious} times; raise codec.topk above "
            f"{2 * assumed_malicious / expected_clients:.3g}, sample more clients, or use krum, "
            f"multikrum or fedavg"
        )
    common_kwargs: dict[str, object] = {
        "fraction_train": 1.0,  # FedveilStrategy samples; the inner strategy only aggregates
        "fraction_evaluate": 0.0,
        "min_train_nodes": 1,
        "min_evaluate_nodes": 0,
        "min_available_nodes": 1,
        "weighted_by_key": protocol.WEIGHT,
    }
    # Flower warns that fraction_evaluate is 0; evaluation is central here by design.
    flower_log = logging.getLogger("flwr")
    level = flower_log.level
    flower_log.setLevel(logging.ERROR)
    try:
        builder = _SPARSE[name] if sparse else _REGISTRY[name]
        return builder(common_kwargs, assumed_malicious, float(trim_beta))
    finally:
        flower_log.setLevel(level)


def clip_update(delta: npt.NDArray[np.floating], bound: float) -> npt.NDArray[np.floating]:
    """Return ``delta`` scaled to L2 norm ``bound`` if it is longer, else an unchanged copy.

    The result has ``delta``'s float dtype (float64 for integer input) and never a larger norm
    than ``delta``: the scale ``bound / norm`` is computed in float64, and shrunk by a few ulps
    when rounding to the dtype would leave the norm above ``bound``.

    Raises:
        ValueError: ``bound`` is not a finite number > 0, or ``delta`` holds non-finite values.

    """
    if isinstance(bound, bool) or not isinstance(bound, int | float):
        raise ValueError(f"`bound` must be a number > 0, got {bound!r}")
    if not (math.isfinite(bound) and bound > 0):
        raise ValueError(f"`bound` must be a finite number > 0, got {bound!r}")
    array = np.asarray(delta)
    dtype = array.dtype if np.issubdtype(array.dtype, np.floating) else np.dtype(np.float64)
    out = array.astype(dtype, copy=True)
    wide = out.astype(np.float64)
    if not np.isfinite(wide).all():
        raise ValueError("`delta` holds non-finite values")
    norm = float(np.linalg.norm(wide))
    if norm <= bound:
        return out
    scale = bound / norm
    clipped = (wide * scale).astype(dtype)
    while float(np.linalg.norm(clipped.astype(np.float64))) > bound:
        scale *= 1.0 - 4 * float(np.finfo(dtype).eps)
        clipped = (wide * scale).astype(dtype)
    return clipped


def bound_local_weights(
    local: Mapping[str, npt.NDArray[np.floating]],
    global_weights: Mapping[str, npt.NDArray[np.floating]],
    bound: float,
) -> NamedArrays:
    """Return ``global + clip_update(local - global, bound)`` as named float32 arrays.

    The norm is that of the whole update (all tensors flattened together, in ``global_weights``
    order), as the codec and the anomaly scores see it.

    Raises:
        ValueError: The names or shapes of ``local`` and ``global_weights`` differ, or as
            :func:`clip_update`.

    """
    return map_update(local, global_weights, lambda flat: clip_update(flat, bound))
