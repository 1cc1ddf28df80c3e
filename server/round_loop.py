"""The round loop: plan, sample, train, check, aggregate, evaluate, account, record, checkpoint.

Flower's ``Strategy.start`` runs rounds too, but it cannot plan DP parameters per client, stop
cleanly when budgets run out, record each round as it ends, or resume from a checkpoint; this
loop drives the same strategy hooks and does all four. The strategy is the stack of wrappers in
``server.strategy`` around the configured aggregator; ``RunHooks.wrap_strategy`` may wrap it again
(a simulation's fault injection), sharing the round's ``RoundBook``. Requests carry only the
run-config keys a client needs (``FedveilConfig.to_client_flat``). Only nodes with a plan are
sampled, and each node's train replies are held to it. Ledger accounts are keyed by node id,
except on Flower's in-process simulation engine (``InMemoryGrid``), whose node ids change at
every start (a resume included): there they are keyed by the partition a node declares.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from flwr.serverapp import Grid
from flwr.superlink.grid import InMemoryGrid

from common import protocol
from common.codec import CodecParams
from common.config import ConfigError, FedveilConfig
from common.crypto.signing import derive_signing_key
from common.device import resolve_device
from common.sealing import AggregatorKeyPair, load_private_key
from common.task import task_of
from common.weights import flatten
from server.anomaly import AnomalyError, DirectionEvidence
from server.audit_black_box import BlackBoxAuditor
from server.charging import charge_round
from server.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from server.evaluation import CentralEvaluator
from server.ledger import CentralAccount, PrivacyLedger
from server.opening import UpdateOpener
from server.planning import (
    ClientPlan,
    check_budget_allows_a_round,
    expected_rounds,
    node_limits,
    plan_client,
    query_messages,
    read_plan_reply,
)
from server.root_set import server_examples
from server.rundir import RoundRecord, RunDirectory
from server.strategy.round_book import RoundBook
from server.strategy.sampling import BudgetAwareSampler, NotEnoughClients
from server.strategy.stack import StrategyStack, StrategyWrap, build_stack
from server.watermark import KEY_FILE, Watermarker, new_key, read_key

log = logging.getLogger(__name__)

RoundObserver = Callable[[RoundRecord, PrivacyLedger], None]
PlanObserver = Callable[[dict[str, ClientPlan]], None]


@dataclass(frozen=True)
class RunHooks:
    """What a caller adds to a run.

    Observers of the plan and of each finished round, and one more wrapper around the server's
    strategy stack (``server.strategy.stack.StrategyWrap``).
    """

    on_round: RoundObserver | None = None
    on_plan: PlanObserver | None = None
    wrap_strategy: StrategyWrap | None = None


_NOT_STARTED = "the round loop has not started: call run()"


@dataclass(frozen=True)
class RoundLoopResult:
    """How a run ended: rounds completed and, if it stopped early, why."""

    rounds_completed: int
    stopped_reason: str | None
    final_accuracy: float


def aggregator_keypair(config: FedveilConfig) -> AggregatorKeyPair:
    """Load the configured aggregator key, or make a fresh key pair for this run only."""
    if config.seal_private_key:
        return load_private_key(Path(config.seal_private_key).expanduser())
    return AggregatorKeyPair.generate()


class RoundLoop:
    """One run's server side: the global model, the strategy, the ledger and the run directory.

    ``run_tag`` is fedveil's own run id (the run directory's name); it stays the same across
    a resume, unlike Flower's run id, and binds every client's on-disk state to this run.
    """

    def __init__(
        self,
        grid: Grid,
        config: FedveilConfig,
        run_dir: RunDirectory,
        *,
        run_id: int,
        run_tag: str,
        hooks: RunHooks | None = None,
    ) -> None:
        self.grid = grid
        self.config = config
        self.run_dir = run_dir
        self.run_tag = run_tag
        self.hooks = hooks or RunHooks()
        # Simulation node ids are drawn afresh at every engine start, so they cannot key an
        # account that must survive a resume; deployments' ids are bound to each node's key.
        self.book = RoundBook(keyed_by_node=not isinstance(grid, InMemoryGrid))
        task = task_of(config)
        self.model = task.build_model().to(resolve_device(config.device))
        self.root_set, evaluation = server_examples(
            task,
            config.robust_root_examples,
            config.seed,
            lr=config.lr,
            max_grad_norm=config.dp_max_grad_norm,
        )
        self.evaluator = CentralEvaluator(evaluation)
        self.arrays = ArrayRecord(self.model.state_dict())
        # The task's seeded start, which every node builds too: the downlink's first base.
        self.initial = flatten({k: v.numpy() for k, v in self.arrays.items()})
        shapes = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        self.shapes = shapes
        self.ledger = PrivacyLedger(
            accountant=config.dp_accountant, delta=config.dp_delta, budget=config.dp_budget
        )
        self.sampler = BudgetAwareSampler(
            fraction=config.fraction_train,
            min_clients=config.min_train_clients,
            seed=config.seed,
            eligible=self._eligible,
        )
        keypair = aggregator_keypair(config)
        self.signer = derive_signing_key(keypair)
        self.opener = UpdateOpener(
            keypair,
            run_id=run_id,
            params=CodecParams(
                topk=config.codec_topk, bits=config.codec_bits, mask=config.codec_mask
            ),
            shapes=shapes,
        )
        self.input_shape = task.input_shape
        self.num_classes = task.num_classes
        self.watermarker: Watermarker | None = None
        self.stack: StrategyStack | None = None
        self._restored: Checkpoint | None = None
        self.completed = 0

    # ------------------------------------------------------------------ setup
    def _reference(self, arrays: ArrayRecord) -> np.ndarray:
        """Return the root set's update from the global ``arrays`` (``server.root_set``)."""
        if self.root_set is None:
            raise RuntimeError("no root set: `robust.root-examples` is 0")
        self.model.load_state_dict(arrays.to_torch_state_dict())
        return self.root_set.reference(self.model)

    def plan(self, nodes: list[int]) -> None:
        """Query nodes without a plan, calibrate their σ and show the plan before training."""
        self._adopt_plans()
        missing = [n for n in nodes if n not in self.book.planned]
        if not missing:
            return
        replies = self.grid.send_and_receive(
            query_messages(self.config, missing), timeout=self.config.round_timeout
        )
        rounds = expected_rounds(self.config, len(nodes))
        fresh: dict[str, ClientPlan] = {}
        for reply in replies:
            node = int(reply.metadata.src_node_id)
            try:
                label, rate, steps = read_plan_reply(reply)
            except ValueError as exc:
                log.warning("node %d gave no usable plan: %s", node, exc)
                continue
            known = self.book.node_clients.setdefault(node, label)
            if known != label:
                log.warning("node %d declares client %s, was %s: not planned", node, label, known)
                continue
            key = self.book.account_of(node)
            if key is None:
                continue
            limits = node_limits(reply.content.metric_records.get(protocol.METRICS))
            self.ledger.note_node(key, node=node, label=label, limits=limits)
            if key in self.ledger.plan or key in fresh:
                continue  # a resumed run keeps the σ it planned
            fresh[key] = plan_client(
                self.config,
                key,
                sample_rate=rate,
                steps_per_round=steps,
                planned_rounds=rounds,
                min_noise=limits.get(protocol.NODE_MIN_NOISE, 0.0),
            )
        # One node that cannot afford a round (a tiny data set under a fixed σ, say) is left
        # out by the sampler; only a run in which no client can train is refused.
        check_budget_allows_a_round(self.config, [*self.ledger.plan.values(), *fresh.values()])
        for key, planned in fresh.items():
            if planned.one_round_epsilon > self.config.dp_budget:
                log.warning(
                    "client %s is not sampled: one round costs it ε %.4f, past `dp.budget` %g",
                    key,
                    planned.one_round_epsilon,
                    self.config.dp_budget,
                )
        self.ledger.plan.update(fresh)
        self._adopt_plans()
        if fresh and self.hooks.on_plan is not None:
            self.hooks.on_plan(fresh)

    def _adopt_plans(self) -> None:
        """Give every node whose account has a plan its planned entry and σ."""
        planned: dict[int, tuple[float, float, int]] = {}
        for node in self.book.node_clients:
            key = self.book.account_of(node)
            plan = None if key is None else self.ledger.plan.get(key)
            if plan is not None:
                planned[node] = (plan.noise_multiplier, plan.sample_rate, plan.steps_per_round)
        self.book.planned = planned
        self._stack().sampling.assign_noise({node: e[0] for node, e in planned.items()})

    def _eligible(self, node: int) -> bool:
        """Return whether ``node`` has a plan and its account can train another round."""
        key = self.book.account_of(node)
        if key is None or node not in self.book.planned:
            return False
        return self.ledger.can_train(key)

    def _start_watermark(self) -> None:
        """Create (or, resuming, reload) the key and mark the initial model.

        Watermarking fine-tunes the global model, a function of DP outputs only, on a trigger
        set the server generates: post-processing, so it costs no privacy.
        """
        key_path = self.run_dir.path / KEY_FILE
        key = new_key(key_path) if self.completed == 0 else read_key(key_path)
        self.watermarker = Watermarker(
            key, self.input_shape, self.num_classes, anchor=self._anchor_images()
        )
        if self.completed == 0:
            self.model.load_state_dict(self.arrays.to_torch_state_dict())
            self.watermarker.embed_initial(self.model)
            self.arrays = ArrayRecord(self.model.state_dict())

    def _anchor_images(self) -> torch.Tensor | None:
        return None if self.root_set is None else self.root_set.images

    # ------------------------------------------------------------------ checkpoint
    @property
    def checkpoint_dir(self) -> Path:
        """Where this run's checkpoint lives."""
        return self.run_dir.path / "checkpoint"

    def write_checkpoint(self) -> None:
        """Save everything ``resume`` needs after the last completed round."""
        save_checkpoint(
            self.checkpoint_dir,
            Checkpoint(
                run_tag=self.run_tag,
                round=self.completed,
                arrays=_numpy_state(self.arrays),
                node_clients=dict(self.book.node_clients),
                trained_before=set(self.book.trained_before),
                ledger=self.ledger.to_json(),
                evidence=self._stack().screened.evidence.to_json(),
            ),
        )

    def restore(self) -> None:
        """Continue from the last checkpoint: global model, ledger, node identities."""
        ckpt = load_checkpoint(self.checkpoint_dir, self.shapes)
        if ckpt.run_tag != self.run_tag:
            raise ConfigError(
                f"checkpoint belongs to run {ckpt.run_tag}, not {self.run_tag}; "
                f"resume the run directory it came from"
            )
        self.arrays = ArrayRecord({k: Array(v) for k, v in ckpt.arrays.items()})
        self.ledger = PrivacyLedger.from_json(ckpt.ledger)
        self.ledger.budget = self.config.dp_budget
        self.completed = ckpt.round
        self._restored = ckpt
        self.run_dir.truncate_rounds(ckpt.round)
        log.info("resuming after round %d", ckpt.round)

    # ------------------------------------------------------------------ rounds
    def _stack(self) -> StrategyStack:
        if self.stack is None:
            raise RuntimeError(_NOT_STARTED)
        return self.stack

    def run(self) -> RoundLoopResult:
        """Run the remaining rounds; return how the run ended."""
        config = self.config
        if self.completed == 0:
            self.run_dir.write_config({**config.to_flat(), "run-tag": self.run_tag})
        if config.watermark_enabled:
            self._start_watermark()
        nodes = self.sampler.connected(self.grid)
        evidence = DirectionEvidence()
        if self._restored is not None:
            if self.book.keyed_by_node:
                # Node ids of an earlier simulation engine name nobody now; in a deployment they
                # still bind each node to the label it declared.
                self.book.node_clients.update(self._restored.node_clients)
            self.book.trained_before |= self._restored.trained_before
            try:
                evidence = DirectionEvidence.from_json(self._restored.evidence)
            except (AnomalyError, ValueError) as exc:
                raise CheckpointError(f"checkpoint's anomaly evidence is corrupt: {exc}") from None
        if config.central_dp_noise_multiplier > 0 and self.ledger.central is None:
            self.ledger.central = CentralAccount(
                noise_multiplier=config.central_dp_noise_multiplier, clip=config.central_dp_clip
            )
        self.stack = build_stack(
            config,
            len(nodes),
            sampler=self.sampler,
            opener=self.opener,
            signer=self.signer,
            book=self.book,
            reference=None if self.root_set is None else self._reference,
            evidence=evidence,
            wrap=self.hooks.wrap_strategy,
            audits=self.ledger.audits,
            initial=self.initial,
        )
        accuracy = float("nan")
        try:
            self.plan(nodes)
        except NotEnoughClients as exc:
            self.ledger.stopped_reason = str(exc)
        self.ledger.save(self.run_dir.path / self.run_dir.PRIVACY)
        for server_round in range(self.completed + 1, config.num_server_rounds + 1):
            if self.ledger.stopped_reason:
                break
            try:
                record = self.run_round(server_round)
            except NotEnoughClients as exc:
                self.ledger.stopped_reason = f"stopped before round {server_round}: {exc}"
                log.warning("%s", self.ledger.stopped_reason)
                break
            accuracy = record.accuracy
        self._score_black_box_audit()
        self.ledger.save(self.run_dir.path / self.run_dir.PRIVACY)
        self.run_dir.write_model(_numpy_state(self.arrays))
        return RoundLoopResult(self.completed, self.ledger.stopped_reason, accuracy)

    def _score_black_box_audit(self) -> None:
        """Score a black-box audit on the final model (a white-box one scores every round)."""
        auditor = self._stack().auditor
        if isinstance(auditor, BlackBoxAuditor):
            self.model.load_state_dict(self.arrays.to_torch_state_dict())
            self.ledger.audits.update(auditor.score(self.model))

    def run_round(self, server_round: int) -> RoundRecord:
        """Run one round end to end and record it."""
        config = self.config
        started = time.perf_counter()
        nodes = self.sampler.connected(self.grid)
        self.plan(nodes)
        strategy = self._stack().outermost
        request = protocol.config_record(config.to_client_flat(), server_round)
        request[protocol.RUN_TAG] = self.run_tag
        messages = strategy.configure_train(server_round, self.arrays, request, self.grid)
        replies = self.grid.send_and_receive(messages, timeout=config.round_timeout)
        new_arrays, _ = strategy.aggregate_train(server_round, replies)
        outcome = self.book.outcome
        charge_round(self.ledger, self.book, server_round)
        if new_arrays is not None:
            self.arrays = new_arrays
            if self.ledger.central is not None:
                self.ledger.central.release(
                    len(outcome.sampled) / max(len(nodes), 1),
                    delta=config.dp_delta,
                    accountant=config.dp_accountant,
                )
        self.model.load_state_dict(self.arrays.to_torch_state_dict())
        watermark_accuracy = None
        if self.watermarker is not None:
            watermark_accuracy = self.watermarker.embed(self.model, server_round)
            self.arrays = ArrayRecord(self.model.state_dict())
        evaluation = self.evaluator.evaluate(self.model)
        record = RoundRecord(
            round=server_round,
            accuracy=evaluation.accuracy,
            loss=evaluation.loss,
            watermark_accuracy=watermark_accuracy,
            clients=sorted(outcome.contributed),
            rejected=outcome.rejected,
            flagged=list(outcome.flagged),
            bytes_sealed=outcome.bytes_sealed,
            bytes_dense=outcome.bytes_dense,
            seconds=round(time.perf_counter() - started, 4),
            refused=sorted(node for node, _ in outcome.refused),
            faults=[{"node": n, "kind": k} for n, k in sorted(outcome.injected.items())],
            epsilon_max=max((a.epsilon for a in self.ledger.clients.values()), default=0.0),
            bytes_down=outcome.bytes_down,
        )
        self.run_dir.append_round(record)
        self.run_dir.write_model(_numpy_state(self.arrays))
        self.completed = server_round
        self.ledger.save(self.run_dir.path / self.run_dir.PRIVACY)
        self.write_checkpoint()
        if self.hooks.on_round is not None:
            self.hooks.on_round(record, self.ledger)
        return record


def _numpy_state(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in arrays.items()}
