"""The ClientApp a simulation runs: the honest handlers, plus the adversary's mods on request.

``simulated_client_app(config)`` registers ``client.app``'s ``train`` and ``query`` handlers in a
new ``ClientApp``. With any ``faults.*`` rate above 0 it installs ``fault_mod`` (the server's
strategy wrapper then instructs chosen nodes per round); with ``attack.fraction`` above 0 it
installs ``attack_mod`` for the partitions ``attacker_ids(sim.clients, attack.fraction, seed)``,
fixed for the whole run. Without either it behaves exactly as ``client.app.app``.
"""

from __future__ import annotations

from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from client.app import query, train
from common.config import FedveilConfig
from simulations.adversary.attacks import attacker_ids
from simulations.adversary.mod import attack_mod, fault_mod


def adversary_mods(config: FedveilConfig) -> list[Mod]:
    """Return the mods ``config`` asks for, outermost first (faults around attacks)."""
    mods: list[Mod] = []
    rates = (config.faults_tamper, config.faults_replay, config.faults_misroute, config.faults_drop)
    if any(rate > 0 for rate in rates):
        mods.append(fault_mod)
    if config.attack_fraction > 0:
        attackers = attacker_ids(config.sim_clients, config.attack_fraction, config.seed)
        if attackers:
            mods.append(attack_mod(config.attack_kind, attackers))
    return mods


def simulated_client_app(config: FedveilConfig) -> ClientApp:
    """Return the honest ClientApp with the attack and fault mods ``config`` asks for."""
    app = ClientApp(mods=adversary_mods(config))
    app.train()(train)
    app.query()(query)
    return app
