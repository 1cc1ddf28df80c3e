"""``python -m simulations.bench``: what fedveil's privacy costs, as ratios to plain Flower.

One invocation runs the same task (model, data, partition, clients, rounds, seed) twice, each in
its own process so that memory is measured per variant:

(a) ``plain``: Flower's own ``FedAvg`` with ``strategy.start`` and a minimal Message-API
    ClientApp, plain SGD (its own step size, ``PLAIN_LR``), no DP, no codec, no sealing
    (``simulations.plain_flower``);
(b) ``fedveil``: the full stack via ``simulations.simulate.simulate`` (DP-SGD, codec, sealing,
    opening and validation, aggregation, ledger, checkpoints).

and then times one DP-SGD step against a non-private step for each of Opacus's grad-sample
modes (hooks, functorch, ew = expanded weights, ghost clipping) on the models fedveil ships
(``mlp`` on 8x8 digits, ``cnn`` on 28x28), one thread, as one simulated client has.

Printed and written as JSON (``--out DIR``/``bench.json``), fedveil over plain:

- ``steady_round_time``: mean round seconds of rounds 2.. (round 1 also starts the engine and
  imports torch in each actor); a round is from sampling to the end of central evaluation;
- ``wall_time``: the whole variant's process, start to exit (imports, Ray, every round);
- ``uplink_bytes_per_round``: bytes the clients' replies carry per round (sealed update bytes
  for fedveil; ArrayRecord bytes for plain);
- ``peak_tree_rss``: the peak of the summed RSS of the variant's process tree (the driver, Ray's
  processes, the actors), sampled from ``/proc`` every ``--sample-every`` seconds; shared pages
  count once per process, so ``peak_tree_pss`` (proportional set size) is given beside it;
- ``client_cpu_per_call``: CPU seconds of one ClientApp train call (the actor's process
  time, which other jobs on a shared machine do not inflate as they do wall time);
- ``dp_step``: per model and mode, DP-SGD step CPU seconds / non-private step CPU seconds;
- ``seal_open_share`` (a share, not a ratio): the clients' codec encode + HPKE seal seconds
  divided by the actors that run in parallel, plus the server's open (HPKE open, decode,
  validate), over the steady rounds' seconds; ``seal_path_share`` also counts the rest of
  ``seal_trained_model`` (flattening, the error-feedback residual written to disk).

Measured in place: the ClientApp runs behind a thin wrapper that times ``train_dp_sgd``,
``encode_update``, ``seal_client_update`` and the accountant inside each actor and sends the
timings back in an extra record of the reply, which the driver strips on receipt (so it also
works on a remote Ray cluster); the server's ``send_and_receive``, ``UpdateOpener.open``,
evaluation, ledger and checkpoint writes are timed the same way. The same probes give the
round breakdown printed under the table.

``--quick``: digits, 10 clients, 3 rounds, fewer step samples (sized for under 3 minutes on
an idle 2-core machine; other jobs on the machine stretch it). Without it: digits, 10
clients, 6 rounds, more step samples.
``--config``/``--set`` take any fedveil scenario (e.g. ``simulations/presets/scale.toml``);
``--only fedveil`` skips the baseline (scale runs); ``--ray-address`` runs both variants on an
existing Ray cluster.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from common.config import ConfigError, FedveilConfig, load_toml, parse_assignment
from deployment.processes import pss_bytes, rss_bytes, subtree

VARIANTS = ("plain", "fedveil")
MODES = ("hooks", "functorch", "ew", "ghost")
STEP_MODELS = (("mlp", (1, 8, 8)), ("cnn", (1, 28, 28)))
TRACE_RECORD = "fedveil-bench-trace"

QUICK = {"dataset": "digits", "sim.clients": 10, "num-server-rounds": 3}
FULL = {"dataset": "digits", "sim.clients": 10, "num-server-rounds": 6}
PLAIN_LR, PLAIN_MOMENTUM = 0.05, 0.9
"""The baseline's own SGD step: DP-SGD's large step (``lr`` 1.0 on a noised mean of clipped
gradients) makes plain SGD diverge on MNIST. Same batches and steps, so the same work per step."""


class BenchError(RuntimeError):
    """A variant failed or produced no usable numbers."""


# ----------------------------------------------------------------------------- process memory


class TreeSampler:
    """Samples the summed RSS and PSS of a process tree in a thread; keeps the peaks."""

    def __init__(self, root: int, every: float) -> None:
        self.root = root
        self.every = every
        self.peak_rss = 0
        self.peak_pss = 0
        self.peak_processes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every)

    def sample(self) -> None:
        """Take one sample of the tree."""
        pids = subtree(self.root)
        self.peak_rss = max(self.peak_rss, sum(rss_bytes(p) for p in pids))
        self.peak_pss = max(self.peak_pss, sum(pss_bytes(p) for p in pids))
        self.peak_processes = max(self.peak_processes, len(pids))
        self.samples += 1

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ----------------------------------------------------------------------------- in-place probes

_probe_seconds: dict[str, float] = {}
_probes_installed: set[str] = set()


def _timed(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _probe_seconds[label] = _probe_seconds.get(label, 0.0) + time.perf_counter() - t0

    wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
    return wrapper


def _patch(owner: Any, name: str, label: str) -> None:
    key = f"{id(owner)}.{name}"
    if key not in _probes_installed:
        setattr(owner, name, _timed(label, getattr(owner, name)))
        _probes_installed.add(key)


def _take_probes() -> dict[str, float]:
    taken = dict(_probe_seconds)
    _probe_seconds.clear()
    return taken


_ray_node: list[str] = []


def _node_of_this_actor() -> str:
    """Return the Ray node this process runs on (short id), to show where actors ran."""
    if not _ray_node:
        try:
            import ray

            _ray_node.append(ray.get_runtime_context().get_node_id()[:12])
        except Exception:  # not in a Ray worker: nothing to show
            _ray_node.append("")
    return _ray_node[0]


def _with_trace(reply: Message, kind: str, **fields: float) -> Message:
    """Attach this call's timings to the reply, in a record the driver strips on receipt.

    In band rather than through files or environment variables, so that it also works when
    the actors run on a Ray cluster started elsewhere. The driver's probe on
    ``send_and_receive`` removes the record before any strategy sees the reply.
    """
    if not reply.has_error():
        reply.content[TRACE_RECORD] = ConfigRecord(
            {"kind": kind, "pid": os.getpid(), "ray_node": _node_of_this_actor(), **fields}
        )
    return reply


def _install_fedveil_client_probes() -> None:
    import client.sealed_reply as sealed_reply
    import client.training_round as training_round
    from client.privacy_state import ClientPrivacyState

    _patch(training_round, "train_dp_sgd", "train")
    _patch(training_round, "seal_trained_model", "seal_total")
    _patch(sealed_reply, "encode_update", "encode")
    _patch(sealed_reply, "seal_client_update", "hpke_seal")
    _patch(ClientPrivacyState, "epsilon_after", "account")


traced_fedveil_app = ClientApp()
traced_plain_app = ClientApp()


@traced_fedveil_app.train()
def _fedveil_train(msg: Message, context: Context) -> Message:
    from client.app import train

    _install_fedveil_client_probes()
    _take_probes()
    t0, c0 = time.perf_counter(), time.process_time()
    reply = train(msg, context)
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    round_ = int(msg.content.config_records["config"].get("server-round", 0))  # type: ignore[arg-type]
    return _with_trace(reply, "client", round=round_, total=total, cpu=cpu, **_take_probes())


@traced_fedveil_app.query()
def _fedveil_query(msg: Message, context: Context) -> Message:
    from client.app import query

    t0 = time.perf_counter()
    reply = query(msg, context)
    return _with_trace(reply, "query", total=time.perf_counter() - t0)


@traced_plain_app.train()
def _plain_train(msg: Message, context: Context) -> Message:
    from simulations.plain_flower import train

    t0, c0 = time.perf_counter(), time.process_time()
    reply = train(msg, context)
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    round_ = int(msg.content.config_records["config"].get("server-round", 0))  # type: ignore[arg-type]
    return _with_trace(reply, "client", round=round_, total=total, cpu=cpu)


class _ServerProbes:
    """Per-round server timings in the driver process (the ServerApp runs there)."""

    def __init__(self) -> None:
        self.current = 0
        self.rounds: dict[int, dict[str, float]] = {}
        self.plan_seconds = 0.0
        self.traces: list[dict[str, Any]] = []

    def collect(self, replies: Iterable[Message]) -> list[Message]:
        """Strip the client timings from ``replies`` and keep them."""
        kept = list(replies)
        for reply in kept:
            if reply.has_error() or TRACE_RECORD not in reply.content.config_records:
                continue
            record = reply.content.config_records[TRACE_RECORD]
            del reply.content[TRACE_RECORD]
            self.traces.append({**dict(record), "node": int(reply.metadata.src_node_id)})
        return kept

    def add(self, label: str, seconds: float) -> None:
        slot = self.rounds.setdefault(self.current, {})
        slot[label] = slot.get(label, 0.0) + seconds

    def wrap(self, owner: Any, name: str, label: str, *, sets_round: bool = False) -> None:
        original = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if sets_round:
                self.current = int(args[1])
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.add(label, time.perf_counter() - t0)

        setattr(owner, name, wrapper)


def _install_server_probes(variant: str, probes: _ServerProbes) -> None:
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    from server.evaluation import CentralEvaluator

    probes.wrap(InMemoryGrid, "send_and_receive", "send_and_receive")
    timed_send = InMemoryGrid.send_and_receive

    def send_and_receive(self: Any, messages: Any, *, timeout: float | None = None) -> Any:
        return probes.collect(timed_send(self, messages, timeout=timeout))

    InMemoryGrid.send_and_receive = send_and_receive  # type: ignore[method-assign]
    probes.wrap(CentralEvaluator, "evaluate", "evaluate")
    if variant == "plain":
        from simulations.plain_flower import MeasuredFedAvg

        probes.wrap(MeasuredFedAvg, "aggregate_train", "aggregate", sets_round=True)
        original = MeasuredFedAvg.configure_train

        def configure(self: Any, server_round: int, *args: Any, **kwargs: Any) -> Any:
            probes.current = server_round
            return original(self, server_round, *args, **kwargs)

        MeasuredFedAvg.configure_train = configure  # type: ignore[method-assign]
        return
    from server.federation import Federation
    from server.ledger import PrivacyLedger
    from server.opening import UpdateOpener
    from server.rundir import RunDirectory
    from server.strategy import FedveilStrategy

    probes.wrap(Federation, "run_round", "round_total", sets_round=True)
    probes.wrap(Federation, "_checkpoint", "checkpoint")
    probes.wrap(FedveilStrategy, "aggregate_train", "aggregate")
    probes.wrap(UpdateOpener, "open", "open")
    probes.wrap(RunDirectory, "write_model", "write_model")
    probes.wrap(RunDirectory, "append_round", "append_round")
    probes.wrap(PrivacyLedger, "save", "ledger_save")
    probes.wrap(PrivacyLedger, "charge", "ledger_charge")
    original_plan = Federation.plan

    def plan(self: Any, nodes: list[int]) -> None:
        t0 = time.perf_counter()
        try:
            original_plan(self, nodes)
        finally:
            seconds = time.perf_counter() - t0
            # Nodes that connect late are planned inside round 1, whose seconds already count
            # it; only the query before any round adds to the first round's time.
            if probes.current:
                probes.add("plan", seconds)
            else:
                probes.plan_seconds += seconds

    Federation.plan = plan  # type: ignore[method-assign]


# ----------------------------------------------------------------------------- one variant


BackendConfig = dict[str, dict[str, int | float | bool | str]]


def ray_backend(config: FedveilConfig, address: str) -> BackendConfig:
    """Backend config for an existing Ray cluster: ``ray.init(address=...)``, no local sizes.

    ``ray.init`` refuses ``num_cpus`` when it connects to a running cluster, so ``init_args``
    carries only the address; the cluster's own ``--num-cpus`` sizes the actor pool.
    """
    return {
        "client_resources": {"num_cpus": config.sim_cpus_per_client, "num_gpus": 0.0},
        "init_args": {"address": address, "logging_level": "ERROR", "log_to_driver": False},
        "actor": {"tensorflow": 0},
    }


def run_child(variant: str, config: FedveilConfig, out: Path, ray_address: str) -> dict[str, Any]:
    """Run one variant in this process; return its numbers (called in the child process)."""
    probes = _ServerProbes()
    _install_server_probes(variant, probes)
    started = time.perf_counter()
    rounds: list[dict[str, Any]]
    if variant == "plain":
        import simulations.plain_flower  # noqa: F401 (import time is measured apart)

        import_done = time.perf_counter()
        backend = ray_backend(config, ray_address) if ray_address else None
        plain_config = replace(config, lr=PLAIN_LR, momentum=PLAIN_MOMENTUM)
        plain_run = _run_plain_traced(plain_config, out / "run", backend)
        rounds = [
            {
                "round": r.round,
                "accuracy": r.accuracy,
                "seconds": r.seconds,
                "uplink_bytes": r.bytes_dense,
                "clients": len(r.clients),
            }
            for r in plain_run.rounds
        ]
    else:
        from rich.console import Console

        import client.app
        import simulations.simulate as simulate_module

        import_done = time.perf_counter()
        if ray_address:

            def cluster_backend(config: FedveilConfig, *, verbose: bool) -> BackendConfig:
                return ray_backend(config, ray_address)

            simulate_module.backend_config = cluster_backend
        client.app.app = traced_fedveil_app
        simulate_module.simulate(config, out / "run", Console(file=open(os.devnull, "w")))  # noqa: SIM115
        rows: list[Any] = simulate_module.read_metrics(out / "run")
        rounds = [
            {
                "round": int(r["round"]),
                "accuracy": float(r["accuracy"]),
                "seconds": float(r["seconds"]),
                "uplink_bytes": int(r["bytes_sealed"]),
                "dense_bytes": int(r["bytes_dense"]),
                "clients": len(r["clients"]),
            }
            for r in rows
        ]
    finished = time.perf_counter()
    return {
        "variant": variant,
        "rounds": rounds,
        "import_seconds": import_done - started,
        "simulation_seconds": finished - import_done,
        "server": {str(k): v for k, v in probes.rounds.items()},
        "plan_seconds": probes.plan_seconds,
        "clients": [t for t in probes.traces if t["kind"] == "client"],
        "queries": [t for t in probes.traces if t["kind"] == "query"],
    }


def _run_plain_traced(config: FedveilConfig, out: Path, backend: BackendConfig | None) -> Any:
    import simulations.plain_flower as plain

    original = plain.app
    plain.app = traced_plain_app
    try:
        return plain.run_plain(config, out, backend=backend)
    finally:
        plain.app = original


@dataclass
class VariantRun:
    """A variant's child-process numbers and what the parent measured around it."""

    variant: str
    child: dict[str, Any]
    wall_seconds: float
    peak_rss: int
    peak_pss: int
    peak_processes: int


def run_variant(
    variant: str, config: FedveilConfig, out: Path, *, ray_address: str, sample_every: float
) -> VariantRun:
    """Run one variant in a child process while sampling its process tree's memory."""
    out.mkdir(parents=True, exist_ok=True)
    result = out / "result.json"
    (out / "config.json").write_text(json.dumps(config.to_flat()))
    cmd = [
        sys.executable,
        "-m",
        "simulations.bench",
        "--child",
        variant,
        "--child-dir",
        str(out),
    ]
    if ray_address:
        cmd += ["--ray-address", ray_address]
    log_path = out / "child.log"
    started = time.perf_counter()
    with log_path.open("w") as log_fh:
        proc = subprocess.Popen(cmd, stdout=log_fh, stderr=subprocess.STDOUT)  # noqa: S603
        with TreeSampler(proc.pid, sample_every) as sampler:
            code = proc.wait()
    wall = time.perf_counter() - started
    if code != 0 or not result.exists():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise BenchError(f"the {variant} variant failed (exit {code}); log {log_path}:\n{tail}")
    return VariantRun(
        variant,
        json.loads(result.read_text()),
        wall,
        sampler.peak_rss,
        sampler.peak_pss,
        sampler.peak_processes,
    )


# ----------------------------------------------------------------------------- DP-SGD step time


def step_times(
    model_name: str,
    image_shape: tuple[int, int, int],
    *,
    batch_size: int,
    blocks: int,
    steps_per_block: int,
    threads: int = 1,
) -> dict[str, float]:
    """CPU seconds of one optimizer step, non-private and per Opacus grad-sample mode.

    CPU time of this (one-threaded) process, not wall time, so that other jobs on a shared
    machine do not inflate some samples; modes are timed in interleaved blocks (each block runs
    every mode ``steps_per_block`` times), so what drift remains hits all modes alike. Returns
    the median over blocks of the mean step time within a block. Fixed batches (no Poisson
    sampling) of random inputs: the step's cost does not depend on the pixel values.
    """
    import warnings

    import torch
    from opacus import PrivacyEngine
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from common.models import create_model

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, *image_shape, generator=gen)
    y = torch.randint(0, 10, (batch_size,), generator=gen)
    steps: dict[str, Callable[[], None]] = {}
    for mode in ("nonprivate", *MODES):
        model = create_model(model_name, 10, seed=0)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        criterion: Any = nn.CrossEntropyLoss()
        if mode != "nonprivate":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # secure_mode is off: noise is not the point
                engine = PrivacyEngine(accountant="rdp")
            loader = DataLoader(TensorDataset(x, y), batch_size=batch_size)
            kwargs: dict[str, Any] = {
                "module": model,
                "optimizer": optimizer,
                "data_loader": loader,
                "noise_multiplier": 1.0,
                "max_grad_norm": 1.0,
                "poisson_sampling": False,
                "grad_sample_mode": mode,
            }
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if mode == "ghost":
                    model, optimizer, criterion, _ = engine.make_private(
                        criterion=criterion, **kwargs
                    )
                else:
                    model, optimizer, _ = engine.make_private(**kwargs)
        steps[mode] = _step_fn(model, optimizer, criterion, x, y)
    samples: dict[str, list[float]] = {m: [] for m in steps}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fn in steps.values():
            for _ in range(3):
                fn()
        for _ in range(blocks):
            for mode, fn in steps.items():
                # One sample per block: a single small step is too short for CPU-time clocks.
                t0 = time.process_time()
                for _ in range(steps_per_block):
                    fn()
                samples[mode].append((time.process_time() - t0) / steps_per_block)
    return {m: statistics.median(s) for m, s in samples.items()}


def _step_fn(model: Any, optimizer: Any, criterion: Any, x: Any, y: Any) -> Callable[[], None]:
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()

    return step


def client_round_times(config: FedveilConfig, *, repeats: int) -> dict[str, float]:
    """CPU seconds of one client's local training: fedveil's ``train_dp_sgd`` vs plain SGD.

    The same partition (client 0 of the task's split), the same epochs, batch size and lr, one
    thread. This includes what a step bench leaves out: ``make_private`` each round, Poisson
    sampling through a DataLoader, the accountant.
    """
    import warnings

    import torch

    from client.trainer import DPSGDSettings, train_dp_sgd
    from common.data import load_data
    from common.models import create_model, model_for
    from simulations.plain_flower import local_data, train_sgd

    torch.set_num_threads(1)
    data = load_data(config.dataset, config.data_dir, config.seed, config.test_fraction)
    name = model_for(config.model, data.image_shape)
    images, labels = local_data(config, 0, config.sim_clients)
    settings = DPSGDSettings(
        local_epochs=config.local_epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        momentum=config.momentum,
        noise_multiplier=1.0,
        max_grad_norm=config.dp_max_grad_norm,
    )
    dp: list[float] = []
    plain: list[float] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(repeats + 1):
            model = create_model(name, data.num_classes, seed=0)
            t0 = time.process_time()
            train_dp_sgd(model, images, labels, settings)
            t1 = time.process_time()
            model = create_model(name, data.num_classes, seed=0)
            t2 = time.process_time()
            train_sgd(
                model,
                images,
                labels,
                epochs=config.local_epochs,
                batch_size=config.batch_size,
                lr=config.lr,
                momentum=config.momentum,
                generator=torch.Generator().manual_seed(i),
            )
            t3 = time.process_time()
            if i > 0:  # the first pair warms up imports and caches
                dp.append(t1 - t0)
                plain.append(t3 - t2)
    return {
        "examples": int(labels.shape[0]),
        "dp_seconds": statistics.median(dp),
        "plain_seconds": statistics.median(plain),
    }


# ----------------------------------------------------------------------------- summary


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def summarize(run: VariantRun, actors: int) -> dict[str, Any]:
    """Reduce a variant's rounds, probes and memory to the benchmark's figures."""
    rounds = run.child["rounds"]
    if not rounds:
        raise BenchError(f"{run.variant}: no round finished")
    steady = rounds[1:] or rounds
    steady_ids = {r["round"] for r in steady}
    clients = [c for c in run.child["clients"] if c["round"] in steady_ids]
    server = [run.child["server"].get(str(r), {}) for r in steady_ids]
    steady_seconds = sum(r["seconds"] for r in steady)
    breakdown: dict[str, float] = {}
    for label in sorted({k for s in server for k in s}):
        breakdown[f"server_{label}"] = sum(s.get(label, 0.0) for s in server) / len(steady)
    for label in sorted(
        {k for c in clients for k in c if k not in ("kind", "round", "node", "pid", "ray_node")}
    ):
        breakdown[f"client_{label}"] = _mean([c.get(label, 0.0) for c in clients])
    seal_open = seal_path = None
    if run.variant == "fedveil" and steady_seconds > 0:
        # Clients seal in parallel (one per actor); the server opens one reply after another.
        opened = sum(s.get("open", 0.0) for s in server)
        sealed = sum(c.get("encode", 0.0) + c.get("hpke_seal", 0.0) for c in clients)
        path = sum(c.get("seal_total", 0.0) for c in clients)
        seal_open = (sealed / max(actors, 1) + opened) / steady_seconds
        seal_path = (path / max(actors, 1) + opened) / steady_seconds
    return {
        "rounds": len(rounds),
        # Round 1 of the baseline also starts the actors; fedveil's plan query does that first.
        "first_round_seconds": rounds[0]["seconds"] + run.child["plan_seconds"],
        "steady_round_seconds": steady_seconds / len(steady),
        "wall_seconds": run.wall_seconds,
        "import_seconds": run.child["import_seconds"],
        "simulation_seconds": run.child["simulation_seconds"],
        "plan_seconds": run.child["plan_seconds"],
        "uplink_bytes_per_round": _mean([float(r["uplink_bytes"]) for r in rounds]),
        "clients_per_round": _mean([float(r["clients"]) for r in rounds]),
        "final_accuracy": rounds[-1]["accuracy"],
        "peak_tree_rss": run.peak_rss,
        "peak_tree_pss": run.peak_pss,
        "peak_processes": run.peak_processes,
        "seal_open_share": seal_open,
        "seal_path_share": seal_path,
        "breakdown": breakdown,
        "round_seconds": [r["seconds"] for r in rounds],
        "actor_processes": len({c["pid"] for c in run.child["clients"]}),
        "ray_nodes": sorted({c["ray_node"] for c in run.child["clients"] if c["ray_node"]}),
    }


def ratios(
    plain: dict[str, Any] | None,
    fedveil: dict[str, Any],
    steps: dict[str, dict[str, float]],
) -> dict[str, Any]:
    """Fedveil over plain for every figure that has both, plus DP-step ratios per mode."""
    out: dict[str, Any] = {}
    if plain is not None:
        for key, field in (
            ("steady_round_time", "steady_round_seconds"),
            ("wall_time", "wall_seconds"),
            ("uplink_bytes_per_round", "uplink_bytes_per_round"),
            ("peak_tree_rss", "peak_tree_rss"),
            ("peak_tree_pss", "peak_tree_pss"),
        ):
            out[key] = fedveil[field] / plain[field] if plain[field] else float("nan")
        pc, fc = plain["breakdown"].get("client_cpu"), fedveil["breakdown"].get("client_cpu")
        if pc and fc:
            out["client_cpu_per_call"] = fc / pc
    if steps:
        out["dp_step"] = {
            model: {m: t[m] / t["nonprivate"] for m in MODES if m in t}
            for model, t in steps.items()
        }
    out["seal_open_share"] = fedveil["seal_open_share"]
    return out


def _fmt_bytes(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n / 1024:,.1f} KiB"


def render(report: dict[str, Any]) -> str:
    """Return the human-readable tables of a benchmark report."""
    lines: list[str] = []
    task = report["task"]
    lines.append(
        f"task: {task['dataset']}, {task['sim.clients']} clients, "
        f"{task['num-server-rounds']} rounds, fraction-train {task['fraction-train']}, "
        f"{task['partitioning']}, seed {task['seed']}; load {report['load']}"
    )
    v = report["variants"]
    r = report["ratios"]
    plain = v.get("plain")
    fed = v["fedveil"]
    lines.append(f"{'figure':28s} {'plain':>14s} {'fedveil':>14s} {'ratio':>8s}")
    rows = (
        ("steady round (s)", "steady_round_seconds", "steady_round_time", "{:.3f}"),
        ("plan + first round (s)", "first_round_seconds", None, "{:.2f}"),
        ("whole run wall (s)", "wall_seconds", "wall_time", "{:.1f}"),
        ("uplink bytes / round", "uplink_bytes_per_round", "uplink_bytes_per_round", "bytes"),
        ("peak tree RSS", "peak_tree_rss", "peak_tree_rss", "bytes"),
        ("peak tree PSS", "peak_tree_pss", "peak_tree_pss", "bytes"),
        ("final accuracy", "final_accuracy", None, "{:.4f}"),
    )
    for label, field, ratio_key, fmt in rows:

        def cell(d: dict[str, Any] | None, field: str = field, fmt: str = fmt) -> str:
            if d is None:
                return "-"
            return _fmt_bytes(d[field]) if fmt == "bytes" else fmt.format(d[field])

        ratio = f"{r[ratio_key]:.2f}x" if ratio_key and ratio_key in r else ""
        lines.append(f"{label:28s} {cell(plain):>14s} {cell(fed):>14s} {ratio:>8s}")
    if plain is not None and "client_cpu_per_call" in r:
        lines.append(
            f"{'client CPU per train call (s)':28s} {plain['breakdown']['client_cpu']:>14.3f} "
            f"{fed['breakdown']['client_cpu']:>14.3f} {r['client_cpu_per_call']:>7.2f}x"
        )
    lines.append(
        f"seal+open share of the steady round time: {100 * r['seal_open_share']:.2f} % "
        f"(encode + HPKE seal per client / {report['actors']} actors + server open); with the "
        f"error-feedback residual write: {100 * fed['seal_path_share']:.2f} %"
    )
    if fed["plan_seconds"]:
        lines.append(f"planning query before round 1: {fed['plan_seconds']:.2f} s")
    if "dp_step" in r:
        lines.append(f"DP-SGD step / non-private step (1 thread, batch {report['step_batch']}):")
        for model, modes in r["dp_step"].items():
            base = report["steps"][model]["nonprivate"] * 1e3
            cells = "  ".join(f"{m} {x:.2f}x" for m, x in modes.items())
            lines.append(f"  {model:4s} (non-private {base:.2f} ms): {cells}")
    if report.get("client_round"):
        cr = report["client_round"]
        lines.append(
            f"one client's local training ({cr['examples']} examples): DP-SGD "
            f"{cr['dp_seconds'] * 1e3:.1f} ms vs plain {cr['plain_seconds'] * 1e3:.1f} ms "
            f"({cr['dp_seconds'] / cr['plain_seconds']:.1f}x)"
        )
    for name, d in (("plain", plain), ("fedveil", fed)):
        if d is None:
            continue
        parts = "  ".join(f"{k} {1e3 * x:.1f}" for k, x in d["breakdown"].items())
        lines.append(f"{name} steady-round breakdown (ms; client_* per client call): {parts}")
    return "\n".join(lines)


def check_ratios(report: dict[str, Any]) -> list[str]:
    """Return the ratio fields that are not positive and finite (empty when all are)."""
    bad: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            bad.append(prefix)

    walk("", report["ratios"])
    return bad


# ----------------------------------------------------------------------------- entry point


def build_config(args: argparse.Namespace) -> FedveilConfig:
    """Defaults, then ``--quick``'s or the full task, then ``--config``, then ``--set``."""
    flat: dict[str, Any] = dict(QUICK if args.quick else FULL)
    if args.data_dir:
        flat["data-dir"] = args.data_dir
    if args.config:
        flat.update(load_toml(Path(args.config)))
    for text in args.assignments:
        key, value = parse_assignment(text)
        flat[key] = value
    flat.setdefault("out-dir", tempfile.gettempdir())
    return FedveilConfig.from_flat(flat)


def build_parser() -> argparse.ArgumentParser:
    """Return the benchmark's argument parser."""
    p = argparse.ArgumentParser(
        prog="fedveil bench",
        description="fedveil's full stack vs plain Flower FedAvg on the same task, as ratios.",
    )
    p.add_argument("--quick", action="store_true", help="digits, 3 rounds, short step bench")
    p.add_argument("--config", help="a fedveil TOML scenario (applied after the built-in task)")
    p.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--data-dir", default="", help="folder of MNIST etc. (sets `data-dir`)")
    p.add_argument("--out", type=Path, help="folder for bench.json and the runs (default: temp)")
    p.add_argument("--only", choices=VARIANTS, help="run one variant (no ratios to the other)")
    p.add_argument("--no-steps", action="store_true", help="skip the DP-SGD step bench")
    p.add_argument("--ray-address", default="", help="run on an existing Ray cluster")
    p.add_argument("--sample-every", type=float, default=0.25, help="memory sampling period (s)")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--child-dir", type=Path, help=argparse.SUPPRESS)
    return p


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the tables and write ``bench.json``. Exit 0, or 1 on failure."""
    args = build_parser().parse_args(argv)
    if args.child:
        # Run from the importable module, not ``__main__``: Ray pickles the traced ClientApp
        # by reference only when its module can be imported by name in the actors.
        import importlib

        module = importlib.import_module("simulations.bench")
        folder: Path = args.child_dir
        config = FedveilConfig.from_flat(json.loads((folder / "config.json").read_text()))
        result = module.run_child(args.child, config, folder, args.ray_address)
        (folder / "result.json").write_text(json.dumps(result, indent=1))
        return 0
    try:
        config = build_config(args)
    except ConfigError as exc:
        print(f"fedveil bench: error: {exc}", file=sys.stderr)
        return 2
    out: Path = args.out or Path(tempfile.mkdtemp(prefix="fedveil-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    load_before = _load()
    started = time.perf_counter()
    variants = [args.only] if args.only else list(VARIANTS)
    actors = max(1, int((os.cpu_count() or 1) // config.sim_cpus_per_client))
    summaries: dict[str, dict[str, Any]] = {}
    try:
        for variant in variants:
            print(f"running {variant} ...", file=sys.stderr, flush=True)
            run = run_variant(
                variant,
                config,
                out / variant,
                ray_address=args.ray_address,
                sample_every=args.sample_every,
            )
            summaries[variant] = summarize(run, actors)
    except BenchError as exc:
        print(f"fedveil bench: {exc}", file=sys.stderr)
        return 1
    steps: dict[str, dict[str, float]] = {}
    client_round: dict[str, float] | None = None
    batch = config.batch_size
    if not args.no_steps:
        print("timing DP-SGD steps ...", file=sys.stderr, flush=True)
        blocks, per_block = (6, 10) if args.quick else (12, 20)
        for model, shape in STEP_MODELS:
            steps[model] = step_times(
                model, shape, batch_size=batch, blocks=blocks, steps_per_block=per_block
            )
        client_round = client_round_times(config, repeats=3 if args.quick else 7)
    fed = summaries.get("fedveil")
    report: dict[str, Any] = {
        "task": config.to_flat(),
        "quick": args.quick,
        "load": {"before": load_before, "after": _load()},
        "cpus": os.cpu_count(),
        "actors": actors,
        "ray_address": args.ray_address or None,
        "variants": summaries,
        "steps": steps,
        "step_batch": batch,
        "client_round": client_round,
        "bench_seconds": time.perf_counter() - started,
    }
    if fed is not None:
        report["ratios"] = ratios(summaries.get("plain"), fed, steps)
        print(render(report))
    (out / "bench.json").write_text(json.dumps(report, indent=1))
    print(out / "bench.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
