"""One train request, start to finish: budget check, DP-SGD, accounting, reply records."""

from __future__ import annotations

import logging
import secrets

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from client.privacy_state import ClientPrivacyState
from client.sealed_reply import aggregator_key, remember_sealed, seal_trained_model
from client.state_store import NodeState
from client.trainer import DPSGDSettings, train_dp_sgd
from common import protocol
from common.accounting import calibrate_noise_multiplier, sample_rate, steps_per_round
from common.codec import CodecParams
from common.config import FedveilConfig
from common.data import FederatedData, load_data
from common.envelope import DPFacts
from common.models import create_model, model_for
from common.partition import PartitionSpec, cached_partitions
from common.sealing import SealContext
from simulations.adversary.attacks import UPDATE_ATTACKS, attacker_ids, flip_labels, poison_weights
from simulations.adversary.faults import SimulatedDrop, inject_fault

log = logging.getLogger(__name__)


def partition_of(context: Context) -> tuple[int, int]:
    """Return ``(partition_id, num_partitions)`` from the node config."""
    try:
        pid = int(context.node_config["partition-id"])
        count = int(context.node_config["num-partitions"])
    except (KeyError, ValueError, TypeError):
        raise ValueError(
            "node config lacks `partition-id` and `num-partitions`; start the SuperNode with "
            '--node-config "partition-id=0 num-partitions=N"'
        ) from None
    if not 0 <= pid < count:
        raise ValueError(f"node config `partition-id` {pid} is outside [0, {count})")
    return pid, count


def local_tensors(
    data: FederatedData, config: FedveilConfig, partition_id: int, num_partitions: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the client's training examples ``(n, 1, H, W)`` float32 and labels ``(n,)``."""
    spec = PartitionSpec(config.partitioning, num_partitions, config.seed, config.dirichlet_alpha)
    parts = cached_partitions(
        config.dataset, config.data_dir, config.seed, config.test_fraction, spec
    )
    return data.tensors(data.train, parts[partition_id])


def planned_noise_multiplier(config: FedveilConfig, num_examples: int) -> float:
    """Return σ: the given one, or one calibrated so that every round spends the target ε."""
    if config.dp_noise_multiplier > 0:
        return config.dp_noise_multiplier
    return calibrate_noise_multiplier(
        target_epsilon=config.dp_target_epsilon,
        delta=config.dp_delta,
        sample_rate=sample_rate(num_examples, config.batch_size),
        steps=config.num_server_rounds
        * steps_per_round(num_examples, config.batch_size, config.local_epochs),
        accountant=config.dp_accountant,
    )


def answer_plan_query(msg: Message, context: Context) -> RecordDict:
    """Return the DP facts the server needs to plan: q and steps per round (no data)."""
    config = FedveilConfig.from_flat(
        protocol.run_config_of(msg.content.config_records[protocol.CONFIG])
    )
    partition_id, num_partitions = partition_of(context)
    data = load_data(config.dataset, config.data_dir, config.seed, config.test_fraction)
    _, labels = local_tensors(data, config, partition_id, num_partitions)
    n = int(labels.shape[0])
    return RecordDict(
        {
            protocol.METRICS: MetricRecord(
                {
                    protocol.CLIENT_ID: float(partition_id),
                    protocol.SAMPLE_RATE: sample_rate(n, config.batch_size),
                    protocol.STEPS: float(
                        steps_per_round(n, config.batch_size, config.local_epochs)
                    ),
                }
            )
        }
    )


def _assigned_sigma(msg: Message) -> float | None:
    record = msg.content.config_records.get(protocol.DP)
    value = None if record is None else record.get(protocol.ASSIGNED_NOISE)
    if value is None:
        return None
    if type(value) is not float or not value > 0:
        raise ValueError(f"the server assigned an invalid noise multiplier {value!r}")
    return value


def _reply(
    status: str, reason: str, metrics: dict[str, float], update: ConfigRecord | None
) -> RecordDict:
    content = RecordDict(
        {
            protocol.METRICS: MetricRecord(metrics),  # type: ignore[arg-type]
            protocol.STATUS: ConfigRecord({"status": status, "reason": reason}),
        }
    )
    if update is not None:
        content[protocol.UPDATE] = update
    return content


def run_training_round(msg: Message, context: Context) -> RecordDict:
    """Handle one train request and return the reply's content."""
    request = msg.content.config_records[protocol.CONFIG]
    config = FedveilConfig.from_flat(protocol.run_config_of(request))
    server_round = int(request[protocol.SERVER_ROUND])  # type: ignore[arg-type]
    run_id = int(msg.metadata.run_id)
    run_tag = str(request.get(protocol.RUN_TAG, run_id))
    seal_request = msg.content.config_records[protocol.SEAL]
    # Check the aggregator's key before spending any privacy on a round nobody should read.
    public_key = aggregator_key(seal_request, context)
    if seal_request.get(protocol.FAULT) == "drop":
        raise SimulatedDrop(f"node dropped out of round {server_round} (fault injection)")
    partition_id, num_partitions = partition_of(context)
    data = load_data(config.dataset, config.data_dir, config.seed, config.test_fraction)
    images, labels = local_tensors(data, config, partition_id, num_partitions)
    # A simulated Byzantine client trains, accounts and seals like any other; only its data
    # (label-flip) or its update (the others) is malicious.
    attacker = config.attack_fraction > 0 and partition_id in attacker_ids(
        num_partitions, config.attack_fraction, config.seed
    )
    if attacker and config.attack_kind == "label-flip":
        labels = flip_labels(labels, data.num_classes)
    n = int(labels.shape[0])

    node_state = NodeState.for_node(context, config.client_state_dir, partition_id)
    # The server's plan assigns σ; without one (an unplanned node) the client calibrates its
    # own. Either way the client's own accountant and budget check below have the last word.
    assigned = _assigned_sigma(msg)
    state = node_state.load_privacy(run_tag) or ClientPrivacyState(
        run_tag=run_tag, noise_multiplier=assigned or planned_noise_multiplier(config, n)
    )
    sigma = assigned or state.noise_multiplier
    if server_round in state.rounds:
        done = state.history[state.rounds.index(server_round)]
        spent = state.epsilon(delta=config.dp_delta, accountant=config.dp_accountant)
        return _reply(
            protocol.STATUS_ALREADY_TRAINED,
            f"round {server_round} was already trained before a restart; not training it twice",
            {
                protocol.WEIGHT: 1.0,
                protocol.CLIENT_ID: float(partition_id),
                protocol.NOISE_MULTIPLIER: done[0],
                protocol.SAMPLE_RATE: done[1],
                protocol.STEPS: float(done[2]),
                protocol.EPSILON: spent,
            },
            None,
        )
    entry = (
        sigma,
        sample_rate(n, config.batch_size),
        steps_per_round(n, config.batch_size, config.local_epochs),
    )
    after = state.epsilon_after(entry, delta=config.dp_delta, accountant=config.dp_accountant)
    facts: dict[str, float] = {
        protocol.WEIGHT: 1.0,
        protocol.CLIENT_ID: float(partition_id),
        protocol.NOISE_MULTIPLIER: sigma,
        protocol.SAMPLE_RATE: entry[1],
        protocol.STEPS: float(entry[2]),
    }
    if after > config.dp_budget:
        spent = state.epsilon(delta=config.dp_delta, accountant=config.dp_accountant)
        reason = (
            f"refused: round {server_round} would take ε from {spent:.3f} to {after:.3f}, "
            f"past the budget {config.dp_budget}"
        )
        log.info("client %d %s", partition_id, reason)
        node_state.save_privacy(state)
        return _reply(protocol.STATUS_REFUSED, reason, {**facts, protocol.EPSILON: spent}, None)

    model = create_model(model_for(config.model, data.image_shape), data.num_classes, seed=0)
    model.load_state_dict(msg.content.array_records[protocol.ARRAYS].to_torch_state_dict())
    train_dp_sgd(
        model,
        images,
        labels,
        DPSGDSettings(
            local_epochs=config.local_epochs,
            batch_size=config.batch_size,
            lr=config.lr,
            momentum=config.momentum,
            noise_multiplier=sigma,
            max_grad_norm=config.dp_max_grad_norm,
        ),
    )
    # Charged before anything is sent: a crash after training must not forget this round.
    state.record(server_round, entry)
    node_state.save_privacy(state)
    local = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    if attacker and config.attack_kind in UPDATE_ATTACKS:
        global_weights = msg.content.array_records[protocol.ARRAYS]
        local = poison_weights(
            config.attack_kind,
            local,
            {k: v.numpy() for k, v in global_weights.items()},
            np.random.default_rng(secrets.randbits(128)),
        )

    def seal_as(node_id: int) -> bytes:
        return seal_trained_model(
            local,
            msg.content.array_records[protocol.ARRAYS],
            facts=DPFacts(sigma, entry[1], entry[2], after),
            config_params=CodecParams(
                topk=config.codec_topk, bits=config.codec_bits, mask=config.codec_mask
            ),
            error_feedback=config.codec_error_feedback and node_id == context.node_id,
            public_key=public_key,
            seal_context=SealContext(run_id, server_round, node_id),
            node_state=node_state,
        )

    sealed = seal_as(int(context.node_id))
    previous = remember_sealed(context, sealed)
    fault = str(seal_request.get(protocol.FAULT, ""))
    if fault:
        sealed = inject_fault(
            fault,
            sealed,
            previous=previous,
            seal_as=seal_as,
            target=int(seal_request.get(protocol.FAULT_TARGET, 0)),  # type: ignore[arg-type]
        )
    return _reply(
        protocol.STATUS_TRAINED,
        "",
        {**facts, protocol.EPSILON: after},
        ConfigRecord({protocol.SEALED: sealed}),
    )
