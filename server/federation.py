"""The round loop: sample, train, check, aggregate, evaluate, account, record.

Flower's ``Strategy.start`` runs rounds too, but it cannot stop cleanly when budgets run out nor
record each round as it ends; this loop drives the same strategy hooks and does both.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from common import protocol
from common.codec import CodecParams
from common.config import FedveilConfig
from common.data import load_data
from common.models import create_model, model_for
from common.sealing import AggregatorKeyPair, load_private_key
from server.evaluation import CentralEvaluator
from server.ledger import PrivacyLedger
from server.opening import UpdateOpener
from server.rundir import RoundRecord, RunDirectory
from server.sampling import BudgetAwareSampler, NotEnoughClients
from server.strategy import FaultRates, FedveilStrategy

log = logging.getLogger(__name__)

RoundObserver = Callable[[RoundRecord, PrivacyLedger], None]


@dataclass(frozen=True)
class FederationResult:
    """How a run ended: rounds completed and, if it stopped early, why."""

    rounds_completed: int
    stopped_reason: str | None
    final_accuracy: float


def build_inner_strategy(config: FedveilConfig) -> FedAvg:
    """Return the Flower strategy that aggregates clean replies (uniform weights)."""
    return FedAvg(
        fraction_train=config.fraction_train,
        fraction_evaluate=0.0,
        min_train_nodes=1,
        min_available_nodes=1,
        weighted_by_key=protocol.WEIGHT,
    )


def aggregator_keypair(config: FedveilConfig) -> AggregatorKeyPair:
    """Load the configured aggregator key, or make a fresh key pair for this run only."""
    if config.seal_private_key:
        return load_private_key(Path(config.seal_private_key).expanduser())
    return AggregatorKeyPair.generate()


def run_federation(
    grid: Grid,
    config: FedveilConfig,
    run_dir: RunDirectory,
    *,
    run_id: int,
    on_round: RoundObserver | None = None,
) -> FederationResult:
    """Run every round of ``config`` on ``grid``, writing ``run_dir`` as rounds finish."""
    data = load_data(config.dataset, config.data_dir, config.seed, config.test_fraction)
    model = create_model(
        model_for(config.model, data.image_shape), data.num_classes, seed=config.seed
    )
    evaluator = CentralEvaluator(data)
    arrays = ArrayRecord(model.state_dict())
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ledger = PrivacyLedger(
        accountant=config.dp_accountant, delta=config.dp_delta, budget=config.dp_budget
    )
    strategy = FedveilStrategy(
        build_inner_strategy(config),
        sampler=BudgetAwareSampler(
            fraction=config.fraction_train,
            min_clients=config.min_train_clients,
            seed=config.seed,
            eligible=lambda node: _eligible(node, strategy, ledger),
        ),
        expected_shapes=shapes,
        opener=UpdateOpener(
            aggregator_keypair(config),
            run_id=run_id,
            params=CodecParams(topk=config.codec_topk, bits=config.codec_bits),
            shapes=shapes,
        ),
        faults=FaultRates(
            tamper=config.faults_tamper,
            replay=config.faults_replay,
            misroute=config.faults_misroute,
        ),
    )
    run_dir.write_config(config.to_flat())
    ledger.save(run_dir.path / run_dir.PRIVACY)
    stopped: str | None = None
    completed, accuracy = 0, float("nan")
    for server_round in range(1, config.num_server_rounds + 1):
        started = time.perf_counter()
        try:
            messages = strategy.configure_train(
                server_round, arrays, protocol.config_record(config.to_flat(), server_round), grid
            )
        except NotEnoughClients as exc:
            stopped = str(exc)
            log.warning("run stops before round %d: %s", server_round, stopped)
            break
        replies = grid.send_and_receive(messages, timeout=config.round_timeout)
        new_arrays, _ = strategy.aggregate_train(server_round, replies)
        outcome = strategy.outcome
        for report in outcome.trained:
            acct = ledger.charge(report.client_id, server_round, report.entry, report.epsilon)
            if acct.mismatch:
                log.warning(
                    "client %s reported ε %.4f, ledger computes %.4f",
                    report.client_id,
                    report.epsilon,
                    acct.epsilon,
                )
        for node, _reason in outcome.refused:
            ledger.note_refusal(strategy.node_clients[node])
        if new_arrays is not None:
            arrays = new_arrays
        model.load_state_dict(arrays.to_torch_state_dict())
        evaluation = evaluator.evaluate(model)
        accuracy = evaluation.accuracy
        record = RoundRecord(
            round=server_round,
            accuracy=evaluation.accuracy,
            loss=evaluation.loss,
            watermark_accuracy=None,
            clients=sorted(outcome.contributed),
            rejected=outcome.rejected,
            flagged=[],
            bytes_sealed=outcome.bytes_sealed,
            bytes_dense=outcome.bytes_dense,
            seconds=round(time.perf_counter() - started, 4),
            refused=sorted(node for node, _ in outcome.refused),
            faults=[{"node": n, "kind": k} for n, k in sorted(outcome.injected.items())],
            epsilon_max=max((a.epsilon for a in ledger.clients.values()), default=0.0),
        )
        run_dir.append_round(record)
        ledger.save(run_dir.path / run_dir.PRIVACY)
        run_dir.write_model(_numpy_state(arrays))
        completed = server_round
        if on_round is not None:
            on_round(record, ledger)
    if completed == 0:
        # The contract promises a model file even when no round could run.
        run_dir.write_model(_numpy_state(arrays))
    return FederationResult(completed, stopped, accuracy)


def _eligible(node: int, strategy: FedveilStrategy, ledger: PrivacyLedger) -> bool:
    client = strategy.node_clients.get(node)
    if client is None:
        return True
    acct = ledger.account(client)
    if acct.exhausted:
        return False
    return not (acct.history and ledger.would_exceed(client, acct.history[-1]))


def _numpy_state(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in arrays.items()}
