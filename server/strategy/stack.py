"""The server's strategy stack for a config: the aggregator and the wrappers around it.

``build_stack`` composes
``BudgetAwareSampling(CompressedDownlink(SealedUpdates(ScreenedUpdates(aggregator))))``
(ordering contract in ``server.strategy``); ``wrap`` may add one more wrapper outside, such as
a simulation's fault injection, which shares the stack's ``RoundBook``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, Strategy

from common import subspace
from common.codec import Float32Array
from common.config import FedveilConfig
from common.crypto.signing import SigningKey
from server.aggregation import build_aggregator
from server.anomaly import DirectionEvidence
from server.audit import Auditor, build_auditor
from server.audit_file import AuditEntry
from server.opening import UpdateOpener
from server.strategy.audit import AuditedUpdates
from server.strategy.downlink import CompressedDownlink
from server.strategy.round_book import RoundBook
from server.strategy.sampling import BudgetAwareSampler, BudgetAwareSampling
from server.strategy.screening import ReferenceFn, ScreenedUpdates, Screening
from server.strategy.sealed import SealedUpdates

StrategyWrap = Callable[[Strategy, RoundBook], Strategy]
"""Wraps the server's stack once more; gets the ``RoundBook`` its wrappers share."""


def sample_size(config: FedveilConfig, num_clients: int) -> int:
    """Clients sampled per round out of ``num_clients``."""
    return min(num_clients, max(config.min_train_clients, int(config.fraction_train * num_clients)))


def sent_fraction(config: FedveilConfig) -> float:
    """Return the fraction of coordinates each client sends (what coordinate-wise rules see).

    ``codec.topk``, except under a shared subspace: every client sends the same coordinates,
    and all others are zero for all of them, so a coordinate-wise rule sees every client.
    """
    return config.codec_topk if subspace.fraction_of(config) is None else 1.0


def build_inner_strategy(config: FedveilConfig, num_clients: int) -> Strategy:
    """Return the Flower strategy that aggregates clean replies (uniform weights).

    ``aggregation`` picks it (``server.aggregation``: Flower's FedAvg, FedMedian,
    FedTrimmedAvg, Krum, MultiKrum). With ``central-dp.noise-multiplier`` > 0 it is wrapped in
    Flower's server-side fixed-clipping DP wrapper (user-level DP), which only fits a mean.
    """
    aggregator = build_aggregator(
        config.aggregation,
        expected_clients=sample_size(config, num_clients),
        assumed_malicious=config.robust_assumed_malicious,
        trim_beta=config.robust_trim_beta,
        codec_topk=sent_fraction(config),
    )
    if config.central_dp_noise_multiplier <= 0:
        return aggregator
    return DifferentialPrivacyServerSideFixedClipping(
        aggregator,
        noise_multiplier=config.central_dp_noise_multiplier,
        clipping_norm=config.central_dp_clip,
        num_sampled_clients=sample_size(config, num_clients),
    )


@dataclass(frozen=True)
class StrategyStack:
    """The built stack: ``outermost`` is what the round loop drives; the rest hold state.

    ``auditor`` is the audit's (``privacy.audit``), ``None`` without one.
    """

    outermost: Strategy
    sampling: BudgetAwareSampling
    screened: ScreenedUpdates
    auditor: Auditor | None = None


def build_stack(
    config: FedveilConfig,
    num_clients: int,
    *,
    sampler: BudgetAwareSampler,
    opener: UpdateOpener,
    signer: SigningKey,
    book: RoundBook,
    reference: ReferenceFn | None,
    evidence: DirectionEvidence,
    wrap: StrategyWrap | None = None,
    audits: dict[str, AuditEntry] | None = None,
    initial: Float32Array | None = None,
) -> StrategyStack:
    """Compose the stack for ``config`` with ``num_clients`` connected.

    With ``privacy.audit``, ``AuditedUpdates`` sits just inside ``SealedUpdates`` and records
    each client's audit in ``audits`` (the ledger's map). ``initial`` is the task's seeded
    initial model, flat, which nodes build themselves (``CompressedDownlink``'s first base).
    """
    screening = Screening(
        norm_bound=config.robust_norm_bound,
        exclude_flagged=config.robust_exclude_flagged,
        reference=reference,
    )
    screened = ScreenedUpdates(
        build_inner_strategy(config, num_clients),
        screening=screening,
        book=book,
        evidence=evidence,
    )
    opened: Strategy = screened
    auditor = build_auditor(config, opener.run_id) if config.privacy_audit else None
    if auditor is not None:
        opened = AuditedUpdates(
            screened,
            auditor=auditor,
            book=book,
            audits={} if audits is None else audits,
        )
    sampling = BudgetAwareSampling(
        CompressedDownlink(
            SealedUpdates(opened, opener=opener, book=book),
            signer=signer,
            run_id=opener.run_id,
            bits=config.codec_downlink_bits,
            shapes=opener.shapes,
            book=book,
            initial=initial,
            subspace_fraction=subspace.fraction_of(config),
        ),
        sampler=sampler,
        book=book,
    )
    outermost = sampling if wrap is None else wrap(sampling, book)
    return StrategyStack(outermost, sampling, screened, auditor)
