"""One train request as public steps with one job each; ``run_training_round`` composes them.

1. ``read_request``: the round, the run config (``common.config.CLIENT_KEYS`` suffice), the
   aggregator's key, checked against a pinned fingerprint first, and the global model, rebuilt
   from the signed downlink (``client.downlink``); a downlink the node cannot use becomes the
   request's ``refusal``.
2. ``load_data``: a refused downlink ends the round here (nothing spent); a round trained
   before a restart is answered ``already-trained`` first; then
   the node's own ``data-path``, else its partition of the task's pool
   (``client.local_data``); data the task cannot use refuses the round, spending nothing.
3. ``check_budget``: the round's ``(σ, q, steps)`` and ε after it; a round past the node's own
   limits (``client.node_limits``: node config, the device owner's last word) or the budget, or
   one already trained before a restart, ends here with the reply that says so.
4. ``train_locally``: DP-SGD from the global model (a black-box audit's input canaries first
   take their slots in the data, ``client.input_canaries``).
5. ``record_round``: charge the round to the node's privacy state, durably.
6. ``seal_reply``: ``local - global``, error feedback, compression, sealed to this node's
   context (``common.sealing.SealContext``: run, round, ``context.node_id``).

Ordering contract: nothing is spent before step 3 says yes, and step 5 runs before step 6, so
a crash after training never forgets a round. Every step is post-processing-safe to compose:
what happens between 5 and 6 acts on an output that is already charged. Every reply to a
request whose downlink was applied names the reference the node now holds (``with_digest``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from client.canaries import requested_canaries
from client.downlink import read_model, with_digest
from client.input_canaries import with_input_canaries
from client.local_data import LocalData, client_id_of, load_local_data
from client.node_limits import NodeConfigError, NodeLimits
from client.privacy_state import ClientPrivacyState
from client.sealed_reply import aggregator_key, seal_trained_model
from client.state_store import NodeState
from client.trainer import DPSGDSettings, train_dp_sgd
from common import protocol, subspace
from common.accounting import (
    HistoryEntry,
    calibrate_noise_multiplier,
    in_domain,
    sample_rate,
    steps_per_round,
)
from common.audit_canaries import CanarySpec
from common.audit_inputs import InputCanarySpec
from common.codec import CodecParams
from common.config import FedveilConfig
from common.device import node_device, resolve_device
from common.envelope import DPFacts
from common.sealing import SealContext
from common.task import TaskError, task_of

log = logging.getLogger(__name__)

Weights = dict[str, npt.NDArray[np.float32]]


@dataclass(frozen=True)
class TrainRequest:
    """What a train request asks of this node, read and checked (``read_request``)."""

    config: FedveilConfig
    server_round: int
    run_id: int
    run_tag: str
    public_key: bytes
    global_arrays: ArrayRecord
    assigned_noise: float | None
    canaries: CanarySpec | InputCanarySpec | None = None
    downlink_digest: bytes | None = None
    refusal: RecordDict | None = None


@dataclass(frozen=True)
class RoundBudget:
    """The go-ahead to train one round: its history entry and the ε it brings the node to."""

    client_id: int
    node_state: NodeState
    state: ClientPrivacyState
    entry: HistoryEntry
    epsilon_after: float
    limits: NodeLimits


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


def _config_of(msg: Message) -> FedveilConfig:
    return FedveilConfig.from_flat(
        protocol.run_config_of(msg.content.config_records[protocol.CONFIG])
    )


def answer_plan_query(msg: Message, context: Context) -> RecordDict:
    """Return the DP facts the server needs to plan: q and steps per round (no data).

    A node whose data the task cannot use answers ``refused`` with the one-line reason and
    no facts; the server logs it and plans without this node.
    """
    config = _config_of(msg)
    try:
        limits = NodeLimits.of(context.node_config)
    except NodeConfigError as exc:
        return _refuse_node_config(exc, context)
    try:
        data = load_local_data(config, context)
    except TaskError as exc:
        return _refuse_data(exc, context)
    n = int(data.labels.shape[0])
    return RecordDict(
        {
            protocol.METRICS: MetricRecord(
                {
                    protocol.CLIENT_ID: float(data.client_id),
                    protocol.SAMPLE_RATE: sample_rate(n, config.batch_size),
                    protocol.STEPS: float(
                        steps_per_round(n, config.batch_size, config.local_epochs)
                    ),
                    **limits.metrics(),
                }
            )
        }
    )


def _assigned_noise(msg: Message) -> float | None:
    record = msg.content.config_records.get(protocol.DP)
    value = None if record is None else record.get(protocol.ASSIGNED_NOISE)
    if value is None:
        return None
    if type(value) is not float or not value > 0:
        raise ValueError(f"the server assigned an invalid noise multiplier {value!r}")
    return value


def read_request(msg: Message, context: Context) -> TrainRequest:
    """Read a train request; refuse it if the aggregator's key is not the pinned one.

    The key is checked here, before any privacy is spent on a round nobody should read. A
    downlink the node cannot use is not raised: it becomes ``refusal``, which ``load_data``
    returns, so every composition of the steps answers it with one line.
    """
    request = msg.content.config_records[protocol.CONFIG]
    server_round = request.get(protocol.SERVER_ROUND)
    if type(server_round) is not int or server_round < 1:
        raise ValueError(f"the request's `{protocol.SERVER_ROUND}` is {server_round!r}, not >= 1")
    run_id = int(msg.metadata.run_id)
    public_key = aggregator_key(msg.content.config_records[protocol.SEAL], context)
    config = _config_of(msg)
    received = read_model(msg, context, config=config, server_round=server_round)
    return TrainRequest(
        config=config.replace(device=node_device(config.device, context.node_config)),
        server_round=server_round,
        run_id=run_id,
        run_tag=str(request.get(protocol.RUN_TAG, run_id)),
        public_key=public_key,
        global_arrays=received.arrays,
        assigned_noise=_assigned_noise(msg),
        canaries=requested_canaries(msg.content.config_records.get(protocol.AUDIT)),
        downlink_digest=received.digest,
        refusal=received.refusal,
    )


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


NO_DATA_REASON = "refused: this node has no usable data for the task (its log says why)"
"""What a no-data refusal tells the server: the file, the problem and any values read stay on
the node (its log), since the reason travels in the clear."""


def _refuse_data(exc: TaskError, context: Context) -> RecordDict:
    """Return the ``refused`` reply of a node that has no usable data; nothing is spent.

    The node's owner gets one line naming the file and the problem (the node's log); the
    server gets only the category (``cause`` = ``no-data``).
    """
    log.warning("node %d refused: %s", context.node_id, " ".join(str(exc).split()))
    content = _reply(
        protocol.STATUS_REFUSED,
        NO_DATA_REASON,
        {protocol.CLIENT_ID: float(client_id_of(context))},
        None,
    )
    content.config_records[protocol.STATUS][protocol.CAUSE] = protocol.CAUSE_NO_DATA
    return content


def _refuse_node_config(exc: NodeConfigError, context: Context) -> RecordDict:
    """Return the ``refused`` reply of a node whose own limit is unusable; nothing is spent."""
    reason = f"refused: {exc}"
    log.warning("node %d %s", context.node_id, reason)
    content = _reply(
        protocol.STATUS_REFUSED, reason, {protocol.CLIENT_ID: float(client_id_of(context))}, None
    )
    status = content.config_records[protocol.STATUS]
    status[protocol.CAUSE] = protocol.CAUSE_NODE_CONFIG
    status[protocol.LIMIT] = exc.key
    return content


def _refuse_limit(
    server_round: int, facts: dict[str, float], limits: NodeLimits, broken: tuple[str, str]
) -> RecordDict:
    """Return the ``refused`` reply of a round past the node's own limit ``broken``."""
    key, reason = broken
    log.info("client %d %s", int(facts[protocol.CLIENT_ID]), reason)
    content = _reply(protocol.STATUS_REFUSED, reason, {**facts, **limits.metrics()}, None)
    status = content.config_records[protocol.STATUS]
    status[protocol.CAUSE] = protocol.CAUSE_NODE_LIMIT
    status[protocol.LIMIT] = key
    return content


def already_trained(request: TrainRequest, context: Context) -> RecordDict | None:
    """Return the ``already-trained`` reply if this node trained this round before a restart.

    Checked before the node's data is read: a round that was trained is reported (so the
    server charges it once) even if the data can no longer be read.
    """
    client_id = client_id_of(context)
    node_state = NodeState.for_node(context, request.config.client_state_dir, client_id)
    state = node_state.load_privacy(request.run_tag)
    return None if state is None else _trained_before(request, state, client_id)


def _trained_before(
    request: TrainRequest, state: ClientPrivacyState, client_id: int
) -> RecordDict | None:
    if request.server_round not in state.rounds:
        return None
    config = request.config
    spent = state.epsilon(delta=config.dp_delta, accountant=config.dp_accountant)
    done = state.history[state.rounds.index(request.server_round)]
    return _reply(
        protocol.STATUS_ALREADY_TRAINED,
        f"round {request.server_round} was already trained before a restart; not training it twice",
        _facts(client_id, done, spent),
        None,
    )


def _facts(client_id: int, entry: HistoryEntry, epsilon: float) -> dict[str, float]:
    return {
        protocol.WEIGHT: 1.0,
        protocol.CLIENT_ID: float(client_id),
        protocol.NOISE_MULTIPLIER: entry[0],
        protocol.SAMPLE_RATE: entry[1],
        protocol.STEPS: float(entry[2]),
        protocol.EPSILON: epsilon,
    }


def check_budget(
    request: TrainRequest, data: LocalData, context: Context
) -> RoundBudget | RecordDict:
    """Return the go-ahead for this round, or the reply that declines it.

    Declined: the node's own limits are unusable or the round would break one (σ below
    ``min-noise-multiplier``, past ``max-rounds``, ε past ``max-epsilon``), or ε would pass
    ``dp.budget`` (``refused``); or this node trained it before a restart lost the reply
    (``already-trained``, with that round's DP facts). Nothing is spent on a declined round.
    """
    decided = _budget_or_reply(request, data, context)
    if isinstance(decided, RoundBudget):
        return decided
    return with_digest(request.downlink_digest, decided)


def _budget_or_reply(
    request: TrainRequest, data: LocalData, context: Context
) -> RoundBudget | RecordDict:
    config = request.config
    n = int(data.labels.shape[0])
    node_state = NodeState.for_node(context, config.client_state_dir, data.client_id)
    # The server's plan assigns σ; without one (an unplanned node) the client calibrates its
    # own. Either way the client's own accountant and budget check below have the last word.
    state = node_state.load_privacy(request.run_tag) or ClientPrivacyState(
        run_tag=request.run_tag,
        noise_multiplier=request.assigned_noise or planned_noise_multiplier(config, n),
    )
    done = _trained_before(request, state, data.client_id)
    if done is not None:
        return done
    try:
        limits = NodeLimits.of(context.node_config)
    except NodeConfigError as exc:
        return _refuse_node_config(exc, context)
    spent = state.epsilon(delta=config.dp_delta, accountant=config.dp_accountant)
    entry: HistoryEntry = (
        request.assigned_noise or state.noise_multiplier,
        sample_rate(n, config.batch_size),
        steps_per_round(n, config.batch_size, config.local_epochs),
    )
    # σ and the round count are checked before ε: a σ below the owner's floor never reaches
    # the accountant.
    broken = limits.refuse_round(
        server_round=request.server_round,
        noise_multiplier=entry[0],
        rounds_trained=len(state.rounds),
    )
    if broken is None and not in_domain(entry):
        # A σ no accountant computes (e.g. 1e-300 from an altered request) is refused before
        # the accountant sees it: its ε is unbounded, or the computation would not end.
        reason = (
            f"refused: round {request.server_round} asks σ={entry[0]:.3g}, q={entry[1]:.3g}, "
            f"{entry[2]} steps, outside what an accountant computes; nothing was spent"
        )
        log.warning("client %d %s", data.client_id, reason)
        return _reply(protocol.STATUS_REFUSED, reason, _facts(data.client_id, entry, spent), None)
    after = 0.0
    if broken is None:
        after = state.epsilon_after(entry, delta=config.dp_delta, accountant=config.dp_accountant)
        broken = limits.refuse_epsilon(
            server_round=request.server_round, epsilon_spent=spent, epsilon_after=after
        )
    if broken is not None:
        node_state.save_privacy(state)
        return _refuse_limit(
            request.server_round, _facts(data.client_id, entry, spent), limits, broken
        )
    if after > config.dp_budget:
        reason = (
            f"refused: round {request.server_round} would take ε from {spent:.3f} to "
            f"{after:.3f}, past the budget {config.dp_budget}"
        )
        log.info("client %d %s", data.client_id, reason)
        node_state.save_privacy(state)
        facts = {**_facts(data.client_id, entry, spent), **limits.metrics()}
        return _reply(protocol.STATUS_REFUSED, reason, facts, None)
    return RoundBudget(data.client_id, node_state, state, entry, after, limits)


def train_locally(request: TrainRequest, data: LocalData, budget: RoundBudget) -> Weights:
    """Train the global model on ``data`` with DP-SGD; return the local weights by name."""
    config = request.config
    model = task_of(config).build_model()
    model.load_state_dict(request.global_arrays.to_torch_state_dict())
    outcome = train_dp_sgd(
        model,
        data.inputs,
        data.labels,
        DPSGDSettings(
            local_epochs=config.local_epochs,
            batch_size=config.batch_size,
            lr=config.lr,
            momentum=config.momentum,
            noise_multiplier=budget.entry[0],
            max_grad_norm=config.dp_max_grad_norm,
        ),
        canaries=request.canaries if isinstance(request.canaries, CanarySpec) else None,
        device=resolve_device(config.device),
        subspace=subspace.run_mask(
            config,
            request.run_id,
            request.server_round,
            sum(int(t.numel()) for t in model.state_dict().values()),
        ),
    )
    if outcome.entry != budget.entry:
        # What trained must be what is charged (e.g. data resized after the budget check).
        raise RuntimeError(f"DP-SGD took {outcome.entry}, the round was budgeted {budget.entry}")
    return {
        k: v.detach().cpu().numpy().astype(np.float32, copy=False)
        for k, v in model.state_dict().items()
    }


def record_round(request: TrainRequest, budget: RoundBudget) -> None:
    """Charge the trained round to the privacy state, in memory and on disk."""
    budget.state.record(request.server_round, budget.entry)
    budget.node_state.save_privacy(budget.state)


def seal_reply(
    request: TrainRequest, budget: RoundBudget, local: Weights, context: Context
) -> RecordDict:
    """Return the ``trained`` reply: ``local - global`` sealed for this node's context."""
    config = request.config
    sealed = seal_trained_model(
        local,
        request.global_arrays,
        facts=DPFacts(*budget.entry, budget.epsilon_after),
        config_params=CodecParams(
            topk=config.codec_topk,
            bits=config.codec_bits,
            mask=config.codec_mask,
            quantizer=config.codec_quantizer,
        ),
        error_feedback=config.codec_error_feedback,
        public_key=request.public_key,
        seal_context=SealContext(request.run_id, request.server_round, int(context.node_id)),
        node_state=budget.node_state,
        mask_seed=subspace.run_seed(config, request.run_id, request.server_round),
    )
    facts = {
        **_facts(budget.client_id, budget.entry, budget.epsilon_after),
        **budget.limits.metrics(),
    }
    reply = _reply(protocol.STATUS_TRAINED, "", facts, ConfigRecord({protocol.SEALED: sealed}))
    return with_digest(request.downlink_digest, reply)


def load_data(request: TrainRequest, context: Context) -> LocalData | RecordDict:
    """Return this node's data for the round, or the reply that ends the round without it.

    A refused downlink ends the round first (``TrainRequest.refusal``). A round trained before
    a restart is answered ``already-trained`` next, so unreadable data cannot hide it; data
    the task cannot use is refused (``_refuse_data``).
    """
    if request.refusal is not None:
        return request.refusal
    done = already_trained(request, context)
    if done is not None:
        return with_digest(request.downlink_digest, done)
    try:
        return load_local_data(request.config, context)
    except TaskError as exc:
        return with_digest(request.downlink_digest, _refuse_data(exc, context))


def run_training_round(msg: Message, context: Context) -> RecordDict:
    """Handle one train request and return the reply's content (steps 1-6 in order)."""
    request = read_request(msg, context)
    data = load_data(request, context)
    if not isinstance(data, LocalData):
        return data
    budget = check_budget(request, data, context)
    if not isinstance(budget, RoundBudget):
        return budget
    if isinstance(request.canaries, InputCanarySpec):
        # After the budget check, which counts the rows: slots keep the row count, so q too.
        data = with_input_canaries(data, request.canaries)
    local = train_locally(request, data, budget)
    record_round(request, budget)
    return seal_reply(request, budget, local, context)
