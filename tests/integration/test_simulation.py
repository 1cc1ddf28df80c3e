"""End to end: ``fedveil simulate`` runs Flower's simulation engine and keeps the contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.integration.cli import fedveil, simulate_args
from tests.integration.run_files import metrics_rows, privacy, recomputed_epsilon

CONTRACT = REPO.parent / "shared" / "checks" / "run_contract.py"

pytestmark = pytest.mark.slow


def _simulate(out: Path, *sets: str) -> subprocess.CompletedProcess[str]:
    return fedveil(*simulate_args(out, *sets), timeout=600)


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "faulty"
    done = _simulate(
        out,
        "sim.clients=4",
        "num-server-rounds=3",
        "faults.tamper=0.25",
        "faults.replay=0.25",
        "faults.misroute=0.25",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == str(out)  # the run directory, printed last
    return out


def test_run_directory_keeps_the_contract(faulty_run: Path) -> None:
    if CONTRACT.is_file():
        check = subprocess.run(
            [sys.executable, str(CONTRACT), str(faulty_run)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert check.returncode == 0, check.stdout
    rows = metrics_rows(faulty_run)
    assert [r["round"] for r in rows] == [1, 2, 3]
    config = json.loads((faulty_run / "config.json").read_text())
    assert config["sim.clients"] == 4 and config["seed"] == 0


def test_every_epsilon_recomputes_from_its_history(faulty_run: Path) -> None:
    ledger = privacy(faulty_run)
    assert len(ledger["clients"]) == 4
    for client in ledger["clients"].values():
        assert client["epsilon"] == pytest.approx(recomputed_epsilon(client, ledger), rel=1e-9)
        assert client["epsilon"] <= client["budget"]
        assert len(client["history"]) == len(client["rounds"]) <= 3


def test_injected_faults_are_rejected_exactly_with_their_reason(faulty_run: Path) -> None:
    rows = metrics_rows(faulty_run)
    kinds = set()
    for row in rows:
        injected = {(f["node"], f["kind"]) for f in row["faults"]}
        rejected = {(r["node"], r["reason"]) for r in row["rejected"]}
        assert injected == rejected
        assert not set(row["clients"]) & {node for node, _ in injected}
        assert row["bytes_sealed"] < row["bytes_dense"] / 5
        kinds |= {k for _, k in injected}
    assert kinds == {"tamper", "replay", "misroute"}


def test_every_epsilon_agrees_with_an_independent_accountant(faulty_run: Path) -> None:
    """Google's dp-accounting, a second implementation, finds every ε within 2 %."""
    import dp_accounting
    from opacus.accountants import RDPAccountant

    ledger = privacy(faulty_run)
    for cid, client in ledger["clients"].items():
        event = dp_accounting.ComposedDpEvent(
            [
                dp_accounting.SelfComposedDpEvent(
                    dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(s)), int(n)
                )
                for s, q, n in client["history"]
            ]
        )
        if ledger["accountant"] == "rdp":
            reference = dp_accounting.rdp.RdpAccountant(orders=RDPAccountant.DEFAULT_ALPHAS)
        else:
            reference = dp_accounting.pld.PLDAccountant()
        reference.compose(event)
        assert client["epsilon"] == pytest.approx(
            reference.get_epsilon(ledger["delta"]), rel=0.02
        ), cid


def test_random_mask_updates_are_opened_by_a_server_that_was_not_told_the_mask(
    tmp_path: Path,
) -> None:
    """The mask is self-described in the payload: the server checks k, bits and size only."""
    out = tmp_path / "random-mask"
    done = _simulate(
        out,
        "sim.clients=3",
        "num-server-rounds=2",
        "codec.mask=random",
        "codec.topk=0.2",
        "codec.bits=4",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = metrics_rows(out)
    assert [r["round"] for r in rows] == [1, 2]
    for row in rows:
        assert row["rejected"] == [] and len(row["clients"]) == 3
        # 20 % of the coordinates at 4 bits and a 16-byte seed: about a tenth of dense float32.
        assert row["bytes_sealed"] < row["bytes_dense"] / 8


def test_a_watermarked_run_embeds_every_round_and_its_model_verifies(tmp_path: Path) -> None:
    """The round loop embeds after each aggregation; the released model carries the mark."""
    from server.watermark import KEY_FILE, TARGET_ACCURACY, generate_key, write_key

    out = tmp_path / "marked"
    done = _simulate(
        out,
        "sim.clients=3",
        "num-server-rounds=2",
        "watermark.enabled=true",
        "robust.root-examples=50",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    key = out / KEY_FILE
    assert key.stat().st_mode & 0o777 == 0o600
    rows = metrics_rows(out)
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["watermark_accuracy"] >= TARGET_ACCURACY for r in rows)

    other = tmp_path / "other.key"
    write_key(other, generate_key())
    model = str(out / "model.safetensors")
    for key_file, status in ((key, 0), (other, 1)):
        done = fedveil("watermark", "verify", model, "--key", str(key_file), timeout=None)
        assert done.returncode == status, done.stdout + done.stderr
