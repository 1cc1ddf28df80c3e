"""One train round: the ClientApp end to end, and its public steps one at a time."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from client import training_round as steps
from client.app import app
from client.local_data import load_local_data
from client.privacy_state import STATE_KEY, ClientPrivacyState
from common import protocol
from common.accounting import epsilon_from_history, sample_rate, steps_per_round
from common.codec import CodecParams
from common.config import CLIENT_KEYS, FedveilConfig
from common.envelope import UpdateRejected, open_client_update
from common.models import create_model
from common.sealing import AggregatorKeyPair, SealContext, fingerprint
from common.task import task_of
from examples.tabular_csv.make_data import write_dataset
from examples.tabular_csv.task import FEATURES
from server.planning import read_plan_reply
from tests.conftest import NODE_ID, RUN_ID, client_context

CONFIG = FedveilConfig.from_flat({"num-server-rounds": 3, "sim.clients": 4})
PARAMS = CodecParams(topk=CONFIG.codec_topk, bits=CONFIG.codec_bits)
SIZE = 4810  # DigitsMLP parameters


def _global() -> ArrayRecord:
    return ArrayRecord(create_model("mlp", 10, seed=0).state_dict())


def _status(reply: Message) -> str:
    return str(reply.content.config_records[protocol.STATUS]["status"])


def _sealed(reply: Message) -> bytes:
    value = reply.content.config_records[protocol.UPDATE][protocol.SEALED]
    assert isinstance(value, bytes)
    return value


def _open(reply: Message, key: AggregatorKeyPair, rnd: int, node: int = NODE_ID):  # type: ignore[no-untyped-def]
    return open_client_update(
        _sealed(reply),
        keypair=key,
        expected=SealContext(RUN_ID, rnd, node),
        params=PARAMS,
        size=SIZE,
    )


def test_reply_is_a_sealed_compressed_update_with_dp_facts(
    train_request: Callable[..., Message], aggregator: AggregatorKeyPair
) -> None:
    reply = app(train_request(CONFIG, _global(), 1), client_context(1, 4))

    assert _status(reply) == protocol.STATUS_TRAINED
    assert protocol.ARRAYS not in reply.content.array_records  # nothing travels in the clear
    assert len(_sealed(reply)) < 4 * SIZE / 5
    facts, delta = _open(reply, aggregator, 1)
    metrics = reply.content.metric_records[protocol.METRICS]
    assert set(metrics) == set(protocol.REPLY_METRICS)
    assert metrics[protocol.WEIGHT] == 1.0  # no raw example count leaves the client
    assert (facts.noise_multiplier, facts.sample_rate, facts.steps) == (
        metrics[protocol.NOISE_MULTIPLIER],
        metrics[protocol.SAMPLE_RATE],
        metrics[protocol.STEPS],
    )
    assert facts.epsilon == pytest.approx(
        epsilon_from_history(
            [(facts.noise_multiplier, facts.sample_rate, facts.steps)],
            delta=CONFIG.dp_delta,
            accountant="rdp",
        )
    )
    assert np.count_nonzero(delta) == int(np.ceil(CONFIG.codec_topk * SIZE))


def test_update_cannot_be_opened_for_another_node_or_round(
    train_request: Callable[..., Message], aggregator: AggregatorKeyPair
) -> None:
    reply = app(train_request(CONFIG, _global(), 2), client_context(1, 4))

    with pytest.raises(UpdateRejected) as other_node:
        _open(reply, aggregator, 2, node=NODE_ID + 1)
    with pytest.raises(UpdateRejected) as other_round:
        _open(reply, aggregator, 3)
    assert (other_node.value.reason, other_round.value.reason) == ("misroute", "replay")


def test_privacy_state_accumulates_across_rounds(train_request: Callable[..., Message]) -> None:
    ctx = client_context(0, 4)
    eps = []
    for rnd in (1, 2, 3):
        reply = app(train_request(CONFIG, _global(), rnd), ctx)
        eps.append(reply.content.metric_records[protocol.METRICS][protocol.EPSILON])
    state = ClientPrivacyState.from_record(ctx.state.config_records[STATE_KEY])

    assert state.rounds == [1, 2, 3]
    assert eps[0] < eps[1] < eps[2]  # never a fresh accountant per round
    # Calibrated for 3 rounds: the third lands at, not past, the target.
    assert eps[2] <= CONFIG.dp_target_epsilon
    assert eps[2] == pytest.approx(CONFIG.dp_target_epsilon, rel=0.02)


def test_client_refuses_to_pass_its_budget(train_request: Callable[..., Message]) -> None:
    # σ fixed, so each round costs the same; a budget of ~2 rounds must stop the third.
    config = CONFIG.replace(dp_noise_multiplier=1.0, dp_budget=100.0)
    probe = client_context(2, 4)
    one = app(train_request(config, _global(), 1), probe)
    two = app(train_request(config, _global(), 2), probe)
    eps_two = two.content.metric_records[protocol.METRICS][protocol.EPSILON]
    assert one.content.metric_records[protocol.METRICS][protocol.EPSILON] < eps_two

    tight = config.replace(dp_budget=eps_two * 1.001)
    ctx = client_context(2, 4)
    replies = [app(train_request(tight, _global(), r), ctx) for r in (1, 2, 3)]

    assert [_status(r) for r in replies] == ["trained", "trained", "refused"]
    refused = replies[2].content
    assert protocol.UPDATE not in refused.config_records
    assert "budget" in str(refused.config_records[protocol.STATUS]["reason"])
    state = ClientPrivacyState.from_record(ctx.state.config_records[STATE_KEY])
    assert state.rounds == [1, 2]
    assert state.epsilon(delta=tight.dp_delta, accountant="rdp") <= tight.dp_budget


def test_pinned_fingerprint_mismatch_refuses_before_training(
    train_request: Callable[..., Message], aggregator: AggregatorKeyPair
) -> None:
    other = fingerprint(AggregatorKeyPair.generate().public_bytes)
    ctx = client_context(0, 4, **{protocol.PINNED_FINGERPRINT: other})

    with pytest.raises(ValueError, match="does not match the pinned"):
        app(train_request(CONFIG, _global(), 1), ctx)
    assert STATE_KEY not in ctx.state.config_records  # no privacy spent

    pinned = client_context(0, 4, **{protocol.PINNED_FINGERPRINT: aggregator.fingerprint()})
    assert _status(app(train_request(CONFIG, _global(), 1), pinned)) == "trained"


def test_state_from_another_run_is_refused(train_request: Callable[..., Message]) -> None:
    ctx = client_context(0, 4)
    ctx.state[STATE_KEY] = ClientPrivacyState(run_tag="other", noise_multiplier=1.0).to_record()
    with pytest.raises(Exception, match="belongs to run"):
        app(train_request(CONFIG, _global(), 1), ctx)


def test_a_node_config_naming_no_data_refuses_naming_the_keys(
    train_request: Callable[..., Message], caplog: pytest.LogCaptureFixture
) -> None:
    ctx = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    with caplog.at_level(logging.WARNING, logger="client.training_round"):
        reply = app(train_request(CONFIG, _global(), 1), ctx)

    assert _refused_reason(reply) == steps.NO_DATA_REASON
    said = _node_log(caplog)
    assert "data-path" in said and "partition-id" in said
    assert STATE_KEY not in ctx.state.config_records  # no privacy spent


def _client_keys_only(msg: Message, config: FedveilConfig, rnd: int) -> Message:
    """Carry only ``CLIENT_KEYS`` in the config record, as the server sends a train request."""
    msg.content[protocol.CONFIG] = protocol.config_record(config.to_client_flat(), rnd)
    return msg


def test_client_needs_only_the_client_keys(
    train_request: Callable[..., Message], aggregator: AggregatorKeyPair
) -> None:
    config = CONFIG.replace(attack_fraction=1.0, aggregation="median")  # server-only keys
    msg = _client_keys_only(train_request(config, _global(), 1), config, 1)

    assert set(protocol.run_config_of(msg.content.config_records[protocol.CONFIG])) == set(
        CLIENT_KEYS
    )
    reply = app(msg, client_context(1, 4))

    assert _status(reply) == protocol.STATUS_TRAINED
    _open(reply, aggregator, 1)


def test_unknown_records_change_nothing(
    train_request: Callable[..., Message], aggregator: AggregatorKeyPair
) -> None:
    msg = train_request(CONFIG, _global(), 1)
    msg.content["something.else"] = ConfigRecord({"kind": "tamper", "target": NODE_ID + 1})

    reply = app(msg, client_context(1, 4))

    facts, _ = _open(reply, aggregator, 1)
    assert facts.epsilon > 0


@pytest.mark.parametrize("bad", [0, -1, 1.0, "1", None])
def test_read_request_refuses_a_bad_round(
    bad: object, train_request: Callable[..., Message]
) -> None:
    msg = train_request(CONFIG, _global(), 1)
    record = msg.content.config_records[protocol.CONFIG]
    if bad is None:
        del record[protocol.SERVER_ROUND]
    else:
        record[protocol.SERVER_ROUND] = bad  # type: ignore[assignment]

    with pytest.raises(ValueError, match=protocol.SERVER_ROUND):
        steps.read_request(msg, client_context(0, 4))


def test_read_request_reads_round_run_and_key(
    train_request: Callable[..., Message], aggregator: AggregatorKeyPair
) -> None:
    request = steps.read_request(train_request(CONFIG, _global(), 3), client_context(0, 4))

    assert (request.server_round, request.run_id, request.run_tag) == (3, RUN_ID, str(RUN_ID))
    assert request.public_key == aggregator.public_bytes
    assert request.assigned_noise is None
    assert request.config == CONFIG


def test_steps_compose_into_a_round_charged_before_it_is_sealed(
    train_request: Callable[..., Message], aggregator: AggregatorKeyPair
) -> None:
    ctx = client_context(2, 4)
    request = steps.read_request(train_request(CONFIG, _global(), 1), ctx)
    data = load_local_data(request.config, ctx)

    budget = steps.check_budget(request, data, ctx)
    assert isinstance(budget, steps.RoundBudget)
    assert STATE_KEY not in ctx.state.config_records  # deciding spends nothing
    local = steps.train_locally(request, data, budget)
    assert set(local) == set(request.global_arrays)
    steps.record_round(request, budget)
    charged = ClientPrivacyState.from_record(ctx.state.config_records[STATE_KEY])
    assert charged.rounds == [1]
    content = steps.seal_reply(request, budget, local, ctx)

    reply = Message(content=content, reply_to=train_request(CONFIG, _global(), 1))
    facts, _ = _open(reply, aggregator, 1)
    assert facts.epsilon == pytest.approx(budget.epsilon_after)
    again = steps.check_budget(request, data, ctx)  # the same round asked again
    assert isinstance(again, RecordDict)
    assert str(again.config_records[protocol.STATUS]["status"]) == protocol.STATUS_ALREADY_TRAINED


# ---------------------------------------------------------------- a node's own data (data-path)
TABULAR = "examples.tabular_csv.task"


def _tabular(tmp_path: Path) -> FedveilConfig:
    write_dataset(tmp_path, seed=0, train=40, test=20, node_sizes=(30,))
    return CONFIG.replace(task=TABULAR, data_dir=str(tmp_path))


def _own_data(path: Path) -> Context:
    return Context(
        run_id=RUN_ID,
        node_id=NODE_ID,
        node_config={"data-path": str(path)},
        state=RecordDict(),
        run_config={},
    )


def test_a_node_trains_on_its_own_csv_file(
    tmp_path: Path, train_request: Callable[..., Message], aggregator: AggregatorKeyPair
) -> None:
    config = _tabular(tmp_path)
    model = task_of(config).build_model()
    size = sum(p.numel() for p in model.state_dict().values())

    reply = app(
        train_request(config, ArrayRecord(model.state_dict()), 1),
        _own_data(tmp_path / "node-0.csv"),
    )

    assert _status(reply) == protocol.STATUS_TRAINED
    facts, delta = open_client_update(
        _sealed(reply),
        keypair=aggregator,
        expected=SealContext(RUN_ID, 1, NODE_ID),
        params=PARAMS,
        size=size,
    )
    assert facts.sample_rate == sample_rate(30, config.batch_size)  # node-0.csv's 30 rows
    assert np.count_nonzero(delta) > 0


def _refused_reason(reply: Message) -> str:
    assert _status(reply) == protocol.STATUS_REFUSED
    assert protocol.UPDATE not in reply.content.config_records
    return str(reply.content.config_records[protocol.STATUS]["reason"])


def _node_log(caplog: pytest.LogCaptureFixture) -> str:
    """The one line a refusing node writes to its own log (never sent to the server)."""
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "not found"),
        ("temperature_c,label\n60,0\n", "missing columns"),
        ("{header}\n{row},7\n", "outside [0, 3]"),
    ],
    ids=["missing-file", "wrong-columns", "labels-out-of-range"],
)
def test_a_node_with_unusable_data_refuses_naming_the_file(
    tmp_path: Path,
    train_request: Callable[..., Message],
    caplog: pytest.LogCaptureFixture,
    content: str | None,
    problem: str,
) -> None:
    config = _tabular(tmp_path)
    path = tmp_path / "mine.csv"
    if content is not None:
        header, row = ",".join(FEATURES), ",".join(str(c) for c, _ in FEATURES.values())
        path.write_text(content.format(header=f"{header},label", row=row))
    ctx = _own_data(path)
    model = task_of(config).build_model()

    with caplog.at_level(logging.WARNING, logger="client.training_round"):
        reply = app(train_request(config, ArrayRecord(model.state_dict()), 1), ctx)

    said = _node_log(caplog)
    assert str(path) in said and problem in said
    # The server learns only that the node has no usable data: no path, no values read.
    assert _refused_reason(reply) == steps.NO_DATA_REASON
    assert STATE_KEY not in ctx.state.config_records  # no privacy spent
    metrics = reply.content.metric_records[protocol.METRICS]
    assert metrics[protocol.CLIENT_ID] == float(NODE_ID)
    status = reply.content.config_records[protocol.STATUS]
    assert status[protocol.CAUSE] == protocol.CAUSE_NO_DATA


def test_a_planning_query_of_a_node_without_data_is_a_refusal_the_server_reads(
    tmp_path: Path, train_request: Callable[..., Message]
) -> None:
    config = _tabular(tmp_path)
    query = train_request(config, _global(), 1)
    missing = tmp_path / "absent.csv"

    answer = Message(content=steps.answer_plan_query(query, _own_data(missing)), reply_to=query)

    with pytest.raises(ValueError, match="no usable data") as refused:
        read_plan_reply(answer)
    assert "absent.csv" not in str(refused.value) and "\n" not in str(refused.value)
    good = Message(
        content=steps.answer_plan_query(query, _own_data(tmp_path / "node-0.csv")), reply_to=query
    )
    assert read_plan_reply(good) == (
        str(NODE_ID),
        sample_rate(30, config.batch_size),
        steps_per_round(30, config.batch_size, config.local_epochs),
    )


def test_a_task_module_missing_on_the_node_refuses_the_round(
    train_request: Callable[..., Message], caplog: pytest.LogCaptureFixture
) -> None:
    config = CONFIG.replace(task="no_such_fedveil_task.task")

    with caplog.at_level(logging.WARNING, logger="client.training_round"):
        reply = app(train_request(config, _global(), 1), client_context(0, 4))

    assert _refused_reason(reply) == steps.NO_DATA_REASON
    assert "no_such_fedveil_task.task" in _node_log(caplog)


def test_a_round_trained_before_a_restart_is_reported_even_if_the_data_is_gone(
    tmp_path: Path, train_request: Callable[..., Message]
) -> None:
    config = _tabular(tmp_path)
    path = tmp_path / "mine.csv"
    path.write_text((tmp_path / "node-0.csv").read_text())
    ctx = _own_data(path)
    arrays = ArrayRecord(task_of(config).build_model().state_dict())
    assert _status(app(train_request(config, arrays, 1), ctx)) == protocol.STATUS_TRAINED

    path.unlink()  # the reply was lost, then the data file went away
    again = app(train_request(config, arrays, 1), ctx)

    assert _status(again) == protocol.STATUS_ALREADY_TRAINED
    facts = again.content.metric_records[protocol.METRICS]
    assert facts[protocol.STEPS] >= 1 and facts[protocol.EPSILON] > 0


@pytest.mark.parametrize("quantizer", ["stochastic", "sign"])
def test_the_update_is_quantized_as_the_config_names(
    quantizer: str, train_request: Callable[..., Message], monkeypatch: pytest.MonkeyPatch
) -> None:
    # At 1 bit `auto` means the scaled sign; a run that names `stochastic` must get it.
    seen: list[CodecParams] = []
    real = steps.seal_trained_model

    def spy(*args: object, config_params: CodecParams, **kwargs: object) -> bytes:
        seen.append(config_params)
        return real(*args, config_params=config_params, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(steps, "seal_trained_model", spy)
    config = CONFIG.replace(codec_bits=1, codec_quantizer=quantizer)
    reply = app(train_request(config, _global(), 1), client_context(1, 4))

    assert _status(reply) == protocol.STATUS_TRAINED
    assert [p.quantizer for p in seen] == [quantizer]
