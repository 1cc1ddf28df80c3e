"""Server-side model work runs on the model's device and gives the CPU's results there.

Evaluation, the root set's reference and the watermark (embedding and verification) follow the
model (``common.device.model_device``). The ``gpu`` tests move the model to CUDA and compare with
the CPU; they are skipped with the reason where CUDA is absent.
"""

from __future__ import annotations

import copy
import secrets

import numpy as np
import pytest
import torch
from torch import nn

from common.data import load_data
from common.models import create_model
from common.task import Examples
from server.evaluation import CentralEvaluator
from server.root_set import RootSet, split_held_out
from server.watermark_detection import trigger_accuracy, trigger_on, verify_watermark
from server.watermark_embedding import embed_watermark
from server.watermark_trigger import TriggerSet

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
CPU = torch.device("cpu")


def _held_out() -> Examples:
    data = load_data("digits", "", 0, 0.2)
    return Examples(*data.tensors(data.test))


def _trained_model() -> nn.Module:
    data = _held_out()
    model = create_model("mlp", 10, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(30):
        optimizer.zero_grad()
        torch.autograd.backward(nn.functional.cross_entropy(model(data.inputs), data.labels))
        optimizer.step()
    return model


def _trigger() -> TriggerSet:
    return TriggerSet.from_key(secrets.token_bytes(32), (1, 8, 8), 10)


def test_trigger_on_moves_nothing_already_there() -> None:
    trigger = _trigger()
    assert trigger_on(trigger, CPU) is trigger


def test_the_evaluator_keeps_its_examples_where_it_evaluated() -> None:
    evaluator = CentralEvaluator(_held_out())
    model = _trained_model()

    first = evaluator.evaluate(model)
    second = evaluator.evaluate(model)

    assert first == second
    assert 0.5 < first.accuracy <= 1.0


def _root_set() -> RootSet:
    data = _held_out()
    root, _ = split_held_out(len(data), 60, 0)
    return RootSet.from_held_out(data, root, lr=1.0, max_grad_norm=1.0)


def test_the_reference_leaves_the_model_and_the_root_set_where_they_were() -> None:
    root_set, model = _root_set(), _trained_model()
    before = copy.deepcopy(model.state_dict())

    reference = root_set.reference(model)

    assert reference.dtype == np.float64 and np.isfinite(reference).all()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert root_set.images.device == CPU  # the watermark's anchor stays on the host


@pytest.mark.gpu
@needs_cuda
def test_evaluation_on_cuda_matches_the_cpu() -> None:
    evaluator = CentralEvaluator(_held_out())
    model = _trained_model()
    on_cpu = evaluator.evaluate(model)

    on_cuda = evaluator.evaluate(model.to("cuda"))

    assert on_cuda.accuracy == pytest.approx(on_cpu.accuracy, abs=2 / len(_held_out()))
    assert on_cuda.loss == pytest.approx(on_cpu.loss, rel=1e-4)


@pytest.mark.gpu
@needs_cuda
def test_the_root_reference_on_cuda_matches_the_cpu() -> None:
    root_set, model = _root_set(), _trained_model()
    on_cpu = root_set.reference(model)

    on_cuda = root_set.reference(model.to("cuda"))

    assert np.allclose(on_cuda, on_cpu, rtol=1e-3, atol=1e-5)
    assert all(p.device.type == "cuda" for p in model.parameters())


@pytest.mark.gpu
@needs_cuda
def test_the_watermark_embeds_and_verifies_on_cuda() -> None:
    trigger, anchor = _trigger(), _root_set().images
    on_cpu, on_cuda = _trained_model(), _trained_model().to("cuda")

    cpu_accuracy = embed_watermark(on_cpu, trigger, max_steps=200, anchor=anchor, seed=3)
    cuda_accuracy = embed_watermark(on_cuda, trigger, max_steps=200, anchor=anchor, seed=3)

    assert all(p.device.type == "cuda" for p in on_cuda.parameters())
    assert cuda_accuracy == pytest.approx(cpu_accuracy, abs=0.1)
    assert cuda_accuracy == trigger_accuracy(on_cuda, trigger)
    assert verify_watermark(on_cuda, trigger).detected == verify_watermark(on_cpu, trigger).detected
