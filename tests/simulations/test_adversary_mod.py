"""The adversary's ClientApp mods: faults carried out from the fault record, attacks composed."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from client import training_round
from client.app import query, train
from client.privacy_state import STATE_KEY, ClientPrivacyState
from common import protocol
from common.codec import CodecParams
from common.config import FedveilConfig
from common.envelope import DPFacts, UpdateRejected, open_client_update
from common.models import create_model
from common.sealing import AggregatorKeyPair, SealContext
from simulations.adversary.attacks import GAUSSIAN_NORM_RATIO, SCALE_FACTOR
from simulations.adversary.faults import (
    FAULT_RECORD,
    FAULTS,
    Fault,
    SimulatedDrop,
    take_fault,
    tampered,
)
from simulations.adversary.mod import REPLAY_KEY, attack_mod, fault_mod
from tests.conftest import NODE_ID, RUN_ID, client_context
from tests.simulations.known_step import STEP, known_step

CONFIG = FedveilConfig.from_flat({"num-server-rounds": 3, "sim.clients": 4})
# Every coordinate kept as raw float32 and no residual: the update opens exactly as computed.
EXACT = CONFIG.replace(codec_topk=1.0, codec_bits=32, codec_error_feedback=False)
SIZE = 4810  # DigitsMLP parameters


def _global() -> ArrayRecord:
    return ArrayRecord(create_model("mlp", 10, seed=0).state_dict())


def _app(*mods: Mod) -> ClientApp:
    app = ClientApp(mods=list(mods))
    app.train()(train)
    app.query()(query)
    return app


def _with_fault(msg: Message, kind: str, target: int = 0) -> Message:
    msg.content[FAULT_RECORD] = Fault(kind, target).to_record()
    return msg


def _open(
    reply: Message, key: AggregatorKeyPair, rnd: int, config: FedveilConfig = CONFIG
) -> tuple[DPFacts, np.ndarray]:
    sealed = reply.content.config_records[protocol.UPDATE][protocol.SEALED]
    assert isinstance(sealed, bytes)
    return open_client_update(
        sealed,
        keypair=key,
        expected=SealContext(RUN_ID, rnd, NODE_ID),
        params=CodecParams(topk=config.codec_topk, bits=config.codec_bits),
        size=SIZE,
    )


@pytest.fixture
def trained_labels(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """Replace DP-SGD by a known step (+STEP on every weight); collect the labels trained on."""
    seen: list[torch.Tensor] = []
    monkeypatch.setattr(training_round, "train_dp_sgd", known_step(seen))
    return seen


# --- faults -----------------------------------------------------------------------------------


def _fixed_reply(sealed: bytes) -> Callable[[Message, Context], Message]:
    def handler(msg: Message, context: Context) -> Message:
        content = RecordDict({protocol.UPDATE: ConfigRecord({protocol.SEALED: sealed})})
        return Message(content=content, reply_to=msg)

    return handler


def _sealed_of(reply: Message) -> bytes:
    value = reply.content.config_records[protocol.UPDATE][protocol.SEALED]
    assert isinstance(value, bytes)
    return value


def test_fault_record_is_taken_out_before_the_handler(
    train_request: Callable[..., Message],
) -> None:
    seen: list[bool] = []

    def handler(msg: Message, context: Context) -> Message:
        seen.append(FAULT_RECORD in msg.content.config_records)
        return _fixed_reply(b"sealed")(msg, context)

    msg = _with_fault(train_request(CONFIG, _global(), 1), "tamper")
    fault_mod(msg, client_context(0, 4), handler)

    assert seen == [False]


def test_tamper_flips_the_last_byte_only(train_request: Callable[..., Message]) -> None:
    msg = _with_fault(train_request(CONFIG, _global(), 1), "tamper")

    reply = fault_mod(msg, client_context(0, 4), _fixed_reply(b"abc"))

    assert _sealed_of(reply) == b"abb"
    assert tampered(b"\x00\xff") == b"\x00\xfe"


def test_replay_sends_what_the_node_sent_in_an_earlier_round(
    train_request: Callable[..., Message],
) -> None:
    ctx = client_context(0, 4)
    first = fault_mod(train_request(CONFIG, _global(), 1), ctx, _fixed_reply(b"one"))
    second = fault_mod(
        _with_fault(train_request(CONFIG, _global(), 2), "replay"), ctx, _fixed_reply(b"two")
    )
    third = fault_mod(
        _with_fault(train_request(CONFIG, _global(), 3), "replay"), ctx, _fixed_reply(b"three")
    )

    assert [_sealed_of(r) for r in (first, second, third)] == [b"one", b"one", b"two"]
    assert ctx.state.config_records[REPLAY_KEY][protocol.SEALED] == b"three"


def test_replay_without_an_earlier_update_is_refused(
    train_request: Callable[..., Message],
) -> None:
    msg = _with_fault(train_request(CONFIG, _global(), 1), "replay")
    with pytest.raises(ValueError, match="earlier round"):
        fault_mod(msg, client_context(0, 4), _fixed_reply(b"one"))


def test_misroute_trains_as_this_node_and_seals_for_the_target(
    train_request: Callable[..., Message], aggregator: AggregatorKeyPair
) -> None:
    ctx = client_context(0, 4)
    msg = _with_fault(train_request(CONFIG, _global(), 1), "misroute", target=NODE_ID + 5)

    reply = fault_mod(msg, ctx, _fixed_reply(b"never called"))

    sealed = reply.content.config_records[protocol.UPDATE][protocol.SEALED]
    assert isinstance(sealed, bytes)
    params = CodecParams(topk=CONFIG.codec_topk, bits=CONFIG.codec_bits)
    facts, _ = open_client_update(
        sealed,
        keypair=aggregator,
        expected=SealContext(RUN_ID, 1, NODE_ID + 5),
        params=params,
        size=SIZE,
    )
    assert facts.steps > 0
    state = ClientPrivacyState.from_record(ctx.state.config_records[STATE_KEY])
    assert state.rounds == [1]  # trained and charged as this node
    assert REPLAY_KEY not in ctx.state.config_records  # not this node's own send


def test_drop_raises_before_training_and_spends_nothing(
    train_request: Callable[..., Message],
) -> None:
    ctx = client_context(0, 4)
    msg = _with_fault(train_request(CONFIG, _global(), 1), "drop")

    with pytest.raises(SimulatedDrop):
        _app(fault_mod)(msg, ctx)
    assert STATE_KEY not in ctx.state.config_records


@pytest.mark.parametrize("fault", ["tamper", "replay", "misroute"])
def test_faulty_updates_are_rejected_with_their_reason(
    fault: str, train_request: Callable[..., Message], aggregator: AggregatorKeyPair
) -> None:
    app, ctx = _app(fault_mod), client_context(3, 4)
    first = app(train_request(CONFIG, _global(), 1), ctx)
    _open(first, aggregator, 1)  # an honest round opens
    reply = app(_with_fault(train_request(CONFIG, _global(), 2), fault, NODE_ID + 5), ctx)

    with pytest.raises(UpdateRejected) as rejected:
        _open(reply, aggregator, 2)
    assert rejected.value.reason == fault
    state = ClientPrivacyState.from_record(ctx.state.config_records[STATE_KEY])
    assert state.rounds == [1, 2]  # a faulty node still trained and was charged


def test_fault_instructions_are_checked() -> None:
    assert FAULTS == ("tamper", "replay", "misroute", "drop")
    with pytest.raises(ValueError, match="unknown fault"):
        Fault("reorder", 0)
    with pytest.raises(ValueError, match="node id"):
        Fault("misroute", -1)
    content = RecordDict({FAULT_RECORD: Fault("misroute", 2**64 - 5).to_record()})
    assert take_fault(content) == Fault("misroute", 2**64 - 5)
    assert FAULT_RECORD not in content.config_records
    assert take_fault(content) is None


def test_non_train_messages_pass_through(task_identity: None) -> None:
    from flwr.app import MessageType

    query_msg = Message(
        content=RecordDict({FAULT_RECORD: Fault("drop", 0).to_record()}),
        dst_node_id=NODE_ID,
        message_type=MessageType.QUERY,
    )
    seen: list[Message] = []

    def handler(msg: Message, context: Context) -> Message:
        seen.append(msg)
        return Message(content=RecordDict(), reply_to=msg)

    fault_mod(query_msg, client_context(0, 4), handler)
    attack_mod("sign-flip", {0})(query_msg, client_context(0, 4), handler)

    assert seen == [query_msg, query_msg]
    assert FAULT_RECORD in query_msg.content.config_records


# --- attacks ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("sign-flip", -STEP), ("scale", SCALE_FACTOR * STEP), ("label-flip", STEP)],
)
def test_attackers_send_the_poisoned_update_others_the_honest_one(
    kind: str,
    expected: float,
    trained_labels: list[torch.Tensor],
    train_request: Callable[..., Message],
    aggregator: AggregatorKeyPair,
) -> None:
    app = _app(attack_mod(kind, {1}))

    attacker = app(train_request(EXACT, _global(), 1), client_context(1, 4))
    honest = app(train_request(EXACT, _global(), 1), client_context(0, 4))

    _, bad = _open(attacker, aggregator, 1, EXACT)
    _, good = _open(honest, aggregator, 1, EXACT)
    np.testing.assert_allclose(bad, expected, rtol=1e-4)
    np.testing.assert_allclose(good, STEP, rtol=1e-4)


def test_gaussian_attacker_sends_noise_of_three_times_the_norm(
    trained_labels: list[torch.Tensor],
    train_request: Callable[..., Message],
    aggregator: AggregatorKeyPair,
) -> None:
    reply = _app(attack_mod("gaussian", {1}))(
        train_request(EXACT, _global(), 1), client_context(1, 4)
    )

    _, noise = _open(reply, aggregator, 1, EXACT)
    honest_norm = STEP * np.sqrt(SIZE)
    assert np.linalg.norm(noise) == pytest.approx(GAUSSIAN_NORM_RATIO * honest_norm, rel=0.1)
    assert abs(float(noise.mean())) < 0.1 * float(noise.std())


def test_label_flip_trains_on_flipped_labels(
    trained_labels: list[torch.Tensor], train_request: Callable[..., Message]
) -> None:
    app = _app(attack_mod("label-flip", {1}))

    app(train_request(EXACT, _global(), 1), client_context(1, 4))
    app(train_request(EXACT, _global(), 1), client_context(0, 4))

    honest_attacker_labels = training_round.load_local_data(EXACT, client_context(1, 4)).labels
    honest_other_labels = training_round.load_local_data(EXACT, client_context(0, 4)).labels
    assert torch.equal(trained_labels[0], 9 - honest_attacker_labels)
    assert torch.equal(trained_labels[1], honest_other_labels)


def test_an_attacker_trains_accounts_and_seals_like_any_client(
    train_request: Callable[..., Message], aggregator: AggregatorKeyPair
) -> None:
    ctx = client_context(1, 4)
    app = _app(attack_mod("sign-flip", {1}))

    replies = [app(train_request(CONFIG, _global(), r), ctx) for r in (1, 2)]

    eps = [_open(r, aggregator, i + 1)[0].epsilon for i, r in enumerate(replies)]
    state = ClientPrivacyState.from_record(ctx.state.config_records[STATE_KEY])
    assert state.rounds == [1, 2]
    assert 0 < eps[0] < eps[1]
    budget = CONFIG.replace(dp_noise_multiplier=1.0, dp_budget=1e-3)
    refused = app(train_request(budget, _global(), 1), client_context(1, 4))
    status = refused.content.config_records[protocol.STATUS]["status"]
    assert status == protocol.STATUS_REFUSED  # an attacker never passes its budget either


def test_an_attacker_without_usable_data_refuses_like_an_honest_node(
    train_request: Callable[..., Message],
) -> None:
    node = Context(
        run_id=RUN_ID,
        node_id=NODE_ID,
        node_config={"partition-id": 1, "num-partitions": 4, "data-path": "/no/such/file.npz"},
        state=RecordDict(),
        run_config={},
    )

    reply = _app(attack_mod("sign-flip", {1}))(train_request(CONFIG, _global(), 1), node)

    status = reply.content.config_records[protocol.STATUS]
    assert (status["status"], status[protocol.CAUSE]) == ("refused", protocol.CAUSE_NO_DATA)
    assert STATE_KEY not in node.state.config_records


def test_unknown_attack_is_refused() -> None:
    with pytest.raises(ValueError, match="sign-flip"):
        attack_mod("backdoor", {0})
