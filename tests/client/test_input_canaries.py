"""Black-box input canaries in a node's data: server and client agree, slots only, n unchanged."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Message
from torch import nn

from client import training_round as steps
from client.canaries import requested_canaries
from client.input_canaries import with_input_canaries
from client.local_data import LocalData, load_local_data
from client.trainer import DPSGDSettings, train_dp_sgd
from common import protocol
from common.audit_inputs import BLANK_LABEL, InputCanarySpec
from common.config import FedveilConfig
from common.models import create_model
from server.audit_black_box import BlackBoxAuditor
from tests.conftest import client_context

SHAPE = (1, 4, 4)
CLASSES = 5


def _data(n: int) -> LocalData:
    generator = torch.Generator().manual_seed(3)
    inputs = torch.rand((n, *SHAPE), generator=generator) + 10.0  # outside the canaries' range
    labels = torch.randint(0, CLASSES, (n,), generator=generator)
    return LocalData(client_id=0, inputs=inputs, labels=labels, num_classes=CLASSES, source="t")


def _server_spec(canaries: int) -> InputCanarySpec:
    auditor = BlackBoxAuditor(
        SHAPE, CLASSES, low=-1.0, high=1.0, canaries=canaries, batch_size=10, delta=1e-5
    )
    return auditor.canaries_for("0", sample_rate=0.01)


def test_the_client_rebuilds_from_the_request_the_canaries_the_server_scores() -> None:
    server = _server_spec(30)
    client = requested_canaries(server.record())
    assert client == server
    assert isinstance(client, InputCanarySpec)
    data = _data(200)
    placed = with_input_canaries(data, client)
    slots = server.slots(200)
    included = server.included()
    # The server regenerates inputs and labels from the seed alone; the client trains on them.
    assert torch.equal(
        placed.inputs[slots[included]], torch.from_numpy(server.inputs(SHAPE))[included]
    )
    assert torch.equal(
        placed.labels[slots[included]], torch.from_numpy(server.labels(CLASSES))[included]
    )


def test_only_slots_change_included_ones_hold_canaries_the_rest_are_blank() -> None:
    spec = _server_spec(30)
    data = _data(200)
    before = (data.inputs.clone(), data.labels.clone())
    placed = with_input_canaries(data, spec)

    assert placed.inputs.shape == data.inputs.shape and placed.labels.shape == data.labels.shape
    assert placed.inputs.dtype == data.inputs.dtype and placed.labels.dtype == data.labels.dtype
    assert torch.equal(data.inputs, before[0]) and torch.equal(data.labels, before[1])
    slots, included = spec.slots(200), spec.included()
    assert 0 < included.sum() < 30
    assert len(set(slots.tolist())) == 30
    others = np.setdiff1d(np.arange(200), slots)
    assert torch.equal(placed.inputs[others], data.inputs[others])
    assert torch.equal(placed.labels[others], data.labels[others])
    assert (placed.labels[slots[~included]] == BLANK_LABEL).all()
    assert (placed.inputs[slots[included]] <= 1.0).all()  # canaries, not real examples
    assert (placed.labels[slots[included]] >= 0).all()
    # The same slots every round: the same canaries, the same real examples set aside.
    assert torch.equal(with_input_canaries(data, spec).inputs, placed.inputs)


def test_a_node_with_fewer_rows_than_canaries_places_what_fits() -> None:
    spec = _server_spec(30)
    placed = with_input_canaries(_data(12), spec)
    assert placed.labels.shape == (12,)
    slots = spec.slots(12)
    assert sorted(slots.tolist()) == list(range(12))
    included = spec.included()[:12]
    assert (placed.labels[slots[~included]] == BLANK_LABEL).all()
    assert (placed.inputs[slots[included]] <= 1.0).all()


@pytest.mark.filterwarnings("ignore:Full backward hook is firing", "ignore:Secure RNG")
def test_a_blank_row_adds_no_gradient_to_dp_sgd() -> None:
    # Without noise, DP-SGD on blank rows only must leave the model exactly as it was: a blank
    # row is then an absent example, as the audit's add/remove neighbours assume. Real rows
    # does move it, so the check can fail.
    settings = DPSGDSettings(2, 8, 0.5, 0.0, 0.0, 1.0)
    for real_rows, moved in ((0, False), (20, True)):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, CLASSES))
        start = {k: v.clone() for k, v in model.state_dict().items()}
        labels = torch.full((40,), BLANK_LABEL)
        labels[:real_rows] = 1
        train_dp_sgd(model, torch.randn(40, *SHAPE), labels, settings)
        same = all(torch.equal(v, start[k]) for k, v in model.state_dict().items())
        assert same is not moved


def test_a_record_of_an_unknown_mode_or_a_bad_range_is_refused() -> None:
    record = _server_spec(10).record()
    record[protocol.AUDIT_MODE] = "grey-box"
    with pytest.raises(ValueError, match="audit mode"):
        requested_canaries(record)
    record = _server_spec(10).record()
    record[protocol.AUDIT_INPUT_HIGH] = -5.0
    with pytest.raises(ValueError, match="range"):
        requested_canaries(record)


def test_a_black_box_request_trains_on_the_data_with_its_slots_filled(
    train_request: Callable[..., Message], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = FedveilConfig.from_flat({"num-server-rounds": 3, "sim.clients": 4})
    context = client_context(0, 4)
    spec = InputCanarySpec(11, 12, 20, -1.0, 1.0)
    msg = train_request(config, ArrayRecord(create_model("mlp", 10, seed=0).state_dict()), 1)
    msg.content.config_records[protocol.AUDIT] = spec.record()
    trained_on: list[LocalData] = []
    train_locally = steps.train_locally

    def spy(
        request: steps.TrainRequest, data: LocalData, budget: steps.RoundBudget
    ) -> steps.Weights:
        trained_on.append(data)
        return train_locally(request, data, budget)

    monkeypatch.setattr(steps, "train_locally", spy)
    reply = steps.run_training_round(msg, context)

    assert reply.config_records[protocol.STATUS]["status"] == protocol.STATUS_TRAINED
    [data] = trained_on
    expected = with_input_canaries(load_local_data(config, context), spec)
    assert torch.equal(data.inputs, expected.inputs) and torch.equal(data.labels, expected.labels)
