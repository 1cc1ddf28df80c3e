"""``deployment.material``: the signing pin every node gets comes from the aggregator's key."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.crypto.signing import derive_signing_key
from common.sealing import AggregatorKeyPair, write_keypair
from deployment.errors import DeployError
from deployment.layout import Layout
from deployment.material import aggregator_key_path, prepare_material, signing_fingerprint


def test_the_signing_pin_is_the_key_derived_from_the_aggregator_key(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "work")

    sealing_pin = prepare_material(layout, 2, tls=False, auth=False, key="")
    pin = signing_fingerprint(aggregator_key_path(layout, ""))

    keypair = AggregatorKeyPair.generate()
    write_keypair(tmp_path / "other", keypair)
    assert pin != sealing_pin and pin.startswith("sha256:")
    assert pin == signing_fingerprint(aggregator_key_path(layout, ""))  # stable across restarts
    assert signing_fingerprint(tmp_path / "other" / "aggregator.key") == (
        derive_signing_key(keypair).fingerprint()
    )


def test_a_damaged_key_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "aggregator.key"
    bad.write_text("not a key")
    bad.chmod(0o600)

    with pytest.raises(DeployError) as caught:
        signing_fingerprint(bad)

    assert "\n" not in str(caught.value) and "aggregator.key" in str(caught.value)
