"""The simulation's ClientApp, and the deployed one that has no adversary in it."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from flwr.app import ArrayRecord, Message

from client import training_round
from client.app import app as deployed_app
from client.privacy_state import STATE_KEY, ClientPrivacyState
from common import protocol
from common.codec import CodecParams
from common.config import FedveilConfig
from common.envelope import open_client_update
from common.models import create_model
from common.sealing import AggregatorKeyPair, SealContext
from simulations.adversary.attacks import attacker_ids
from simulations.adversary.client import adversary_mods, simulated_client_app
from simulations.adversary.faults import FAULT_RECORD, FAULTS, Fault, SimulatedDrop
from simulations.adversary.mod import fault_mod
from tests.conftest import NODE_ID, RUN_ID, client_context
from tests.simulations.known_step import known_step

CONFIG = FedveilConfig.from_flat({"num-server-rounds": 3, "sim.clients": 4})
EXACT = CONFIG.replace(codec_topk=1.0, codec_bits=32, codec_error_feedback=False)
SIZE = 4810  # DigitsMLP parameters


def _global() -> ArrayRecord:
    return ArrayRecord(create_model("mlp", 10, seed=0).state_dict())


def _open(reply: Message, key: AggregatorKeyPair, rnd: int, config: FedveilConfig) -> np.ndarray:
    sealed = reply.content.config_records[protocol.UPDATE][protocol.SEALED]
    assert isinstance(sealed, bytes)
    _, delta = open_client_update(
        sealed,
        keypair=key,
        expected=SealContext(RUN_ID, rnd, NODE_ID),
        params=CodecParams(topk=config.codec_topk, bits=config.codec_bits),
        size=SIZE,
    )
    return delta


@pytest.fixture
def stand_in_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace DP-SGD by a known step: +STEP on every weight."""
    monkeypatch.setattr(training_round, "train_dp_sgd", known_step())


@pytest.mark.parametrize("kind", FAULTS)
def test_deployed_app_ignores_a_fault_record(
    kind: str, train_request: Callable[..., Message], aggregator: AggregatorKeyPair
) -> None:
    ctx = client_context(0, 4)
    deployed_app(train_request(CONFIG, _global(), 1), ctx)
    msg = train_request(CONFIG, _global(), 2)
    msg.content[FAULT_RECORD] = Fault(kind, NODE_ID + 5).to_record()

    reply = deployed_app(msg, ctx)  # an honest node: no drop, no altered update

    assert reply.content.config_records[protocol.STATUS]["status"] == protocol.STATUS_TRAINED
    _open(reply, aggregator, 2, CONFIG)  # opens for this node and this round
    state = ClientPrivacyState.from_record(ctx.state.config_records[STATE_KEY])
    assert state.rounds == [1, 2]


def test_without_attacks_or_faults_the_app_is_the_honest_one(
    train_request: Callable[..., Message], aggregator: AggregatorKeyPair
) -> None:
    assert adversary_mods(CONFIG) == []
    app = simulated_client_app(CONFIG)

    reply = app(train_request(CONFIG, _global(), 1), client_context(0, 4))

    assert _open(reply, aggregator, 1, CONFIG).shape == (SIZE,)


def test_fault_rates_install_the_fault_mod(train_request: Callable[..., Message]) -> None:
    config = CONFIG.replace(faults_drop=0.5)
    assert adversary_mods(config) == [fault_mod]
    msg = train_request(config, _global(), 1)
    msg.content[FAULT_RECORD] = Fault("drop", 0).to_record()

    with pytest.raises(SimulatedDrop):
        simulated_client_app(config)(msg, client_context(0, 4))


def test_attackers_are_the_configs_and_only_they_attack(
    stand_in_training: None, train_request: Callable[..., Message], aggregator: AggregatorKeyPair
) -> None:
    config = EXACT.replace(attack_fraction=0.5, attack_kind="sign-flip", seed=3)
    attackers = attacker_ids(config.sim_clients, config.attack_fraction, config.seed)
    assert len(attackers) == 2
    app = simulated_client_app(config)

    signs = {
        pid: float(
            np.sign(
                _open(app(train_request(config, _global(), 1), ctx), aggregator, 1, config).mean()
            )
        )
        for pid, ctx in ((p, client_context(p, 4)) for p in range(4))
    }

    assert {pid for pid, sign in signs.items() if sign < 0} == attackers
    assert {pid for pid, sign in signs.items() if sign > 0} == set(range(4)) - attackers


def test_faults_wrap_attacks(train_request: Callable[..., Message]) -> None:
    config = CONFIG.replace(attack_fraction=0.5, faults_tamper=0.1)
    mods = adversary_mods(config)

    assert len(mods) == 2 and mods[0] is fault_mod
