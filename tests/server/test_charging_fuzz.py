"""Fuzz: no hostile reply stops a round, and every node that may have trained is charged.

Hypothesis drives the strategy's reply handling (``SealedUpdates``) and the ledger
(``charge_round``) over a few rounds of nodes that declare absurd but NaN-free DP facts, seal
facts other than their clear copy, spoof labels, fail after training with a traceback, send
garbage, refuse or stay silent.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.accounting import in_domain
from common.codec import CodecParams
from common.sealing import AggregatorKeyPair
from server.charging import charge_round
from server.ledger import PrivacyLedger
from server.ledger_file import PrivacyFile
from server.opening import UpdateOpener
from server.strategy.round_book import RoundBook
from server.strategy.sealed import SealedUpdates
from tests.server.hostile import KINDS, SPENT, Behaviour, Sealing, train_reply
from tests.server.strategy.fakes import ListGrid, RecordingStrategy

SHAPES = {"w": (4, 5), "b": (5,)}
SIZE = 25
RUN_ID = 9
PARAMS = CodecParams(topk=1.0, bits=32)
KEYPAIR = AggregatorKeyPair.generate()
GLOBAL = ArrayRecord({k: Array(np.zeros(s, np.float32)) for k, s in SHAPES.items()})
NODES = [11, 12, 13, 14, 15]
PLANNED = (1.1, 0.05, 40)
SEALING = Sealing(RUN_ID, PARAMS, SIZE, KEYPAIR.public_bytes)

absurd = st.floats(allow_nan=False)
behaviours = st.builds(
    Behaviour,
    kind=st.sampled_from(KINDS),
    facts=st.tuples(absurd, absurd, absurd),
    sealed_steps=st.integers(0, 2**32 - 1),
    epsilon=absurd,
    label=absurd,
)
rounds_of = st.lists(
    st.fixed_dictionaries(dict.fromkeys(NODES, behaviours)), min_size=1, max_size=3
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    rounds=rounds_of,
    labels=st.lists(st.integers(0, 2), min_size=len(NODES), max_size=len(NODES)),
    keyed_by_node=st.booleans(),
)
def test_no_hostile_reply_stops_a_round_and_every_node_that_trained_is_charged(
    task_identity: None, rounds: list[dict[int, Behaviour]], labels: list[int], keyed_by_node: bool
) -> None:
    ledger = PrivacyLedger(accountant="rdp", delta=1e-5, budget=None)
    book = RoundBook(keyed_by_node=keyed_by_node)
    book.node_clients = {node: str(label) for node, label in zip(NODES, labels, strict=True)}
    book.planned = dict.fromkeys(NODES, PLANNED)
    opener = UpdateOpener(KEYPAIR, run_id=RUN_ID, params=PARAMS, shapes=SHAPES)
    inner = RecordingStrategy()
    strategy = SealedUpdates(inner, opener=opener, book=book)

    for server_round, acts in enumerate(rounds, start=1):
        book.start(server_round, NODES)
        strategy.configure_train(server_round, GLOBAL, ConfigRecord(), ListGrid(NODES))
        replies = [
            reply
            for node, act in acts.items()
            if (
                reply := train_reply(
                    node,
                    act,
                    label=int(book.node_clients[node]),
                    planned=PLANNED,
                    server_round=server_round,
                    sealing=SEALING,
                )
            )
            is not None
        ]

        strategy.aggregate_train(server_round, replies)
        charge_round(ledger, book, server_round)

        outcome = book.outcome
        honest = sorted(n for n, act in acts.items() if act.kind == "honest")
        assert sorted(outcome.contributed) == honest
        assert [m.metadata.src_node_id for m in inner.aggregated] == outcome.contributed
        for node, act in acts.items():
            key = book.account_of(node)
            assert key is not None
            charged = server_round in ledger.account(key).rounds
            assert charged == (act.kind in SPENT), (node, act.kind)
        for rejection in outcome.rejected:
            assert "\n" not in rejection.detail and len(rejection.detail) <= 200
            assert not {"Traceback", "/home", "pid="} & set(rejection.detail.split())
            assert "/home" not in rejection.detail and "pid=" not in rejection.detail

    doc = ledger.to_json()
    assert PrivacyFile.from_json(doc).to_json() == doc  # privacy.json still reads back
    for acct in ledger.clients.values():
        assert math.isfinite(acct.epsilon)
        assert all(in_domain(entry) for entry in acct.history)
