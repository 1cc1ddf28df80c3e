"""The white-box audit end to end on the trainer alone: honest runs pass, a broken one is caught.

One digits client trains a few rounds with ``client.trainer.train_dp_sgd`` and the server's
canaries; ``server.audit.WhiteBoxAuditor`` scores its updates. No Flower.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from common.accounting import (
    calibrate_noise_multiplier,
    epsilon_from_history,
    sample_rate,
    steps_per_round,
)
from common.audit import AuditResult
from common.config import ConfigError, FedveilConfig
from common.partition import PartitionSpec, task_partitions, task_pool
from common.subspace import round_mask
from common.task import task_of
from server.audit import (
    AuditedSubspace,
    WhiteBoxAuditor,
    build_auditor,
    canary_count,
    trainable_sizes,
)
from server.audit_file import AuditEntry
from server.json_checks import Fields, RunFileError
from tests.conftest import RUN_ID

ROUNDS = 5
TARGET_EPSILON = 2.0
DELTA = 1e-5


def _audited_run(seed: int, fraction: float | None = None) -> tuple[AuditResult, float]:
    """Train client 0 of 10 for ``ROUNDS`` rounds at the target ε; return the audit and ε.

    With ``fraction``, each round trains its shared subspace of that fraction (run ``RUN_ID``).
    """
    from client.trainer import DPSGDSettings, train_dp_sgd

    config = FedveilConfig.from_flat({"seed": seed})
    task = task_of(config)
    data = task_pool(task).select(task_partitions(task, PartitionSpec("iid", 10, seed, 0.5))[0])
    n = int(data.labels.shape[0])
    q = sample_rate(n, config.batch_size)
    steps = steps_per_round(n, config.batch_size, config.local_epochs)
    sigma = calibrate_noise_multiplier(
        target_epsilon=TARGET_EPSILON,
        delta=DELTA,
        sample_rate=q,
        steps=ROUNDS * steps,
        accountant="rdp",
    )
    model = task.build_model()
    sizes = trainable_sizes(model)
    audited = None if fraction is None else AuditedSubspace.of(model, RUN_ID, fraction)
    auditor = WhiteBoxAuditor(
        sizes,
        canaries=sum(sizes.values()),
        max_grad_norm=1.0,
        delta=DELTA,
        subspace=audited,
    )
    spec = auditor.canaries_for("0")
    settings = DPSGDSettings(config.local_epochs, config.batch_size, config.lr, 0.0, sigma, 1.0)
    size = sum(v.numel() for v in model.state_dict().values())
    for server_round in range(1, ROUNDS + 1):
        start = {k: v.clone() for k, v in model.state_dict().items()}
        model = task.build_model()
        model.load_state_dict(start)
        mask = None if fraction is None else round_mask(RUN_ID, server_round, size, fraction)
        train_dp_sgd(model, data.inputs, data.labels, settings, canaries=spec, subspace=mask)
        update = {k: (v - start[k]).numpy() for k, v in model.state_dict().items()}
        auditor.observe("0", update, server_round)
    accountant = epsilon_from_history([(sigma, q, ROUNDS * steps)], delta=DELTA, accountant="rdp")
    return auditor.result("0"), accountant


@pytest.mark.parametrize(("seed", "fraction"), [(0, None), (1, None), (0, 0.25)])
def test_an_honest_run_stays_below_the_accountants_epsilon(
    seed: int, fraction: float | None
) -> None:
    result, accountant = _audited_run(seed, fraction)
    assert accountant == pytest.approx(TARGET_EPSILON, rel=0.02)
    assert result.guesses > 0
    assert result.epsilon_lower_bound <= accountant


def test_a_trainer_adding_a_tenth_of_the_noise_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # The bug: Opacus's noise is drawn at a tenth of its std, while the trainer still reports
    # (and the accountant charges) the nominal σ. Nothing in the product can do this.
    import opacus.optimizers.optimizer as dp_optimizer

    real_noise = dp_optimizer._generate_noise

    def tenth(std: float, reference: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return real_noise(std / 10, reference, *args, **kwargs)

    monkeypatch.setattr(dp_optimizer, "_generate_noise", tenth)
    result, accountant = _audited_run(0)
    assert result.epsilon_lower_bound > accountant


def test_canary_count_auto_and_its_limit() -> None:
    assert canary_count(0, 4810) == 4810
    assert canary_count(0, 10**6) == 10_000
    assert canary_count(100, 4810) == 100
    with pytest.raises(ConfigError, match=r"privacy\.audit-canaries"):
        canary_count(4811, 4810)


def test_build_auditor_spans_the_tasks_trainable_parameters() -> None:
    config = FedveilConfig.from_flat({"privacy.audit": True, "privacy.audit-canaries": 64})
    auditor = build_auditor(config, RUN_ID)
    assert auditor.size == sum(p.numel() for p in task_of(config).build_model().parameters())
    assert auditor.canaries == 64


def test_each_client_keeps_canaries_of_its_own() -> None:
    auditor = WhiteBoxAuditor({"w": 100}, canaries=50, max_grad_norm=1.0, delta=DELTA)
    a, b = auditor.canaries_for("a"), auditor.canaries_for("b")
    assert auditor.canaries_for("a") == a
    assert a.directions_seed != b.directions_seed
    assert not np.array_equal(a.included(), b.included())


def test_an_update_from_a_client_sent_no_canaries_is_refused() -> None:
    auditor = WhiteBoxAuditor({"w": 100}, canaries=50, max_grad_norm=1.0, delta=DELTA)
    with pytest.raises(KeyError, match="sent no canaries"):
        auditor.observe("x", {"w": np.zeros(100)})


def test_audit_entry_round_trips_and_bad_counts_are_refused() -> None:
    entry = AuditEntry(1.25, 100, 10, 9, "white-box")
    doc = entry.to_json(3.5)
    assert doc["epsilon_accountant"] == 3.5
    assert AuditEntry.from_json(Fields("privacy.json"), doc, "client 0 audit") == entry
    with pytest.raises(RunFileError, match="correct <= guesses"):
        AuditEntry.from_json(Fields("privacy.json"), {**doc, "correct": 11}, "client 0 audit")


def test_the_ledger_writes_each_audit_beside_its_epsilon_and_reads_it_back() -> None:
    from server.ledger import PrivacyLedger

    ledger = PrivacyLedger(accountant="rdp", delta=DELTA, budget=8.0)
    ledger.account("0").epsilon = 2.5
    ledger.account("1").epsilon = 1.0
    ledger.audits["0"] = AuditEntry(0.8, 4810, 96, 90, "white-box")

    doc = ledger.to_json()

    assert doc["clients"]["0"]["audit"] == {
        "epsilon_lower_bound": 0.8,
        "epsilon_accountant": 2.5,
        "m": 4810,
        "guesses": 96,
        "correct": 90,
        "mode": "white-box",
    }
    assert doc["clients"]["1"]["audit"] is None
    assert PrivacyLedger.from_json(doc).audits == {"0": ledger.audits["0"]}
