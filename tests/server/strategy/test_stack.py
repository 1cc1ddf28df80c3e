"""build_stack: sampling, downlink, sealing, screening, then the aggregator; one RoundBook."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, Strategy

from common.codec import CodecParams
from common.config import FedveilConfig
from common.crypto.signing import derive_signing_key
from common.sealing import AggregatorKeyPair
from server.anomaly import DirectionEvidence
from server.opening import UpdateOpener
from server.strategy.downlink import CompressedDownlink
from server.strategy.round_book import RoundBook
from server.strategy.sampling import BudgetAwareSampler, BudgetAwareSampling
from server.strategy.screening import ScreenedUpdates
from server.strategy.sealed import SealedUpdates
from server.strategy.stack import StrategyStack, build_stack
from tests.server.strategy.fakes import ListGrid

SHAPES: dict[str, tuple[int, ...]] = {"w": (3,)}
ARRAYS = ArrayRecord({"w": Array(np.ones(3, np.float32))})


def _stack(config: FedveilConfig, book: RoundBook, **kwargs: object) -> StrategyStack:
    keypair = AggregatorKeyPair.generate()
    return build_stack(
        config,
        4,
        sampler=BudgetAwareSampler(fraction=1.0, min_clients=1, seed=0, eligible=lambda n: True),
        opener=UpdateOpener(keypair, run_id=1, params=CodecParams(1.0, 8), shapes=SHAPES),
        signer=derive_signing_key(keypair),
        book=book,
        reference=None,
        evidence=DirectionEvidence(),
        **kwargs,  # type: ignore[arg-type]
    )


def test_the_wrappers_nest_in_the_documented_order_and_share_one_book() -> None:
    book = RoundBook()

    stack = _stack(FedveilConfig.from_flat({}), book)

    assert isinstance(stack.outermost, BudgetAwareSampling) and stack.outermost is stack.sampling
    downlink = stack.sampling.strategy
    assert isinstance(downlink, CompressedDownlink)
    sealed = downlink.strategy
    assert isinstance(sealed, SealedUpdates) and sealed.strategy is stack.screened
    assert isinstance(stack.screened, ScreenedUpdates)
    assert stack.sampling.book is downlink.book is sealed.book is stack.screened.book is book


def test_flowers_central_dp_wrapper_sees_the_global_arrays_itself() -> None:
    config = FedveilConfig.from_flat({"central-dp.noise-multiplier": 1.0})
    stack = _stack(config, RoundBook())
    central = stack.screened.strategy
    assert isinstance(central, DifferentialPrivacyServerSideFixedClipping)

    stack.outermost.configure_train(1, ARRAYS, ConfigRecord(), ListGrid([1, 2, 3, 4]))

    assert central.current_arrays is ARRAYS


def test_a_wrap_goes_outside_the_stack_with_its_book() -> None:
    book = RoundBook()
    seen: list[tuple[Strategy, RoundBook]] = []

    def wrap(strategy: Strategy, shared: RoundBook) -> Strategy:
        seen.append((strategy, shared))
        return strategy

    stack = _stack(FedveilConfig.from_flat({}), book, wrap=wrap)

    assert seen == [(stack.sampling, book)]
