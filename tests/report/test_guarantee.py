"""The privacy statement, the channels and the limits, and the optional content."""

from __future__ import annotations

from pathlib import Path

import pytest

from report.write import write_report
from tests.report.run_docs import DELTA, ROUNDS, RunDocs, Written, add_plan, eps

# Opacus warns when the optimal RDP order lies at an end of its list: tightness, not us.
pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the (largest|smallest) alpha")


def test_statement_comes_first_with_the_ledgers_numbers(written: Written) -> None:
    html = written.html
    largest = max(c["epsilon"] for c in written.docs.privacy["clients"].values())
    statement = html[html.index('<section id="statement">') : html.index("</section>")]
    assert f"(ε = {largest:.3f}, δ = 1e-05)-differentially private" in statement
    assert "Unit of privacy: one training example" in statement
    assert "Rényi-DP (RDP) accountant" in statement
    assert "L2 norm 1 (<code>dp.max-grad-norm</code>)" in statement
    assert "ε = 8 (<code>dp.budget</code>)" in statement
    assert "σ = 1.2 to 1.7" in statement
    order = [html.index(f'<section id="{s}">') for s in ("statement", "channels", "clients")]
    assert order == sorted(order)


def test_statement_shows_the_other_accountant(written: Written) -> None:
    histories = [[tuple(h) for h in c["history"]] for c in written.docs.privacy["clients"].values()]
    prv = max(eps(h, "prv") for h in histories)
    statement = written.html[: written.html.index('<section id="channels">')]
    assert "privacy-random-variable (PRV) accountant" in statement
    assert f"<strong>ε = {prv:.3f}</strong>" in statement


def test_every_channel_and_limit_is_named(written: Written) -> None:
    html = written.html
    for phrase in (
        "Model update (DP-SGD output)",
        "sealed with HPKE",
        "bound to the run, the round and the sending node",
        "DP facts: σ, q, steps, ε",
        "reveals ceil(n / 32)",
        "Partition id",
        "Example count",
        "Training metrics (loss, accuracy)",
        "Federated evaluation",
        "Hyper-parameter tuning",
        "torchcsprng",
        "No secure aggregation",
        "post-processing",
    ):
        assert phrase in html, phrase


# ----------------------------------------------------------------------- optional content


def test_plan_stopped_reason_central_and_watermark(docs: RunDocs, tmp_path: Path) -> None:
    add_plan(docs)
    docs.privacy["stopped_reason"] = "stopped before round 5: 1 client available, 2 needed"
    central_history = [(2.0, 1.0, 1)] * ROUNDS
    docs.privacy["central"] = {
        "epsilon": eps(central_history),
        "delta": DELTA,
        "noise_multiplier": 2.0,
        "clip": 0.5,
        "history": [list(h) for h in central_history],
    }
    for m in docs.metrics:
        m["watermark_accuracy"] = 0.9
    files = write_report(docs.write(tmp_path / "run"))
    html = files.html.read_text(encoding="utf-8")
    assert "planned ε" in html
    planned = docs.privacy["plan"]["2"]["planned_epsilon"]
    spent = docs.privacy["clients"]["2"]["epsilon"]
    assert f"<td>{planned:.3f}</td><td>2</td><td>{spent:.3f}</td>" in html
    assert "The run ended early:</strong> stopped before round 5" in html
    assert "User level: a client&#x27;s whole data set" in html
    assert f"(ε = {eps(central_history):.3f}, δ = 1e-05)-differentially private" in html
    assert "Only single examples are protected" not in html
    assert "planning query" in html
    assert "watermark.png" in {p.name for p in files.plots}


def test_a_server_root_set_is_named_as_server_data(docs: RunDocs, tmp_path: Path) -> None:
    plain = write_report(docs.write(tmp_path / "plain")).html.read_text(encoding="utf-8")
    docs.config["robust.root-examples"] = 100
    html = write_report(docs.write(tmp_path / "run")).html.read_text(encoding="utf-8")

    assert "Server-held data" not in plain
    assert "The server kept 100 examples of its own held-out split" in html
    assert "costs clients no privacy" in html


def test_run_stopped_before_its_first_round(docs: RunDocs, tmp_path: Path) -> None:
    docs.privacy["clients"] = {}
    docs.privacy["stopped_reason"] = "1 client available, 2 needed"
    run = docs.write(tmp_path / "run")
    (run / "metrics.jsonl").unlink()
    files = write_report(run)
    html = files.html.read_text(encoding="utf-8")
    assert "No client trained in this run, so no privacy was spent" in html
    assert files.plots == ()


@pytest.mark.parametrize(
    ("codec", "words"),
    [
        ({"codec.topk": 1.0, "codec.bits": 1, "codec.quantizer": "auto"}, "1-bit scaled signs"),
        ({"codec.topk": 0.1, "codec.bits": 8, "codec.mask": "topk"}, "keeping 10% of coord"),
        ({"codec.topk": 0.25, "codec.bits": 4, "codec.mask": "random"}, "a random 25% of"),
        (
            {"codec.topk": 0.1, "codec.bits": 8, "codec.mask": "subspace"},
            "shared random subspace (10% of coordinates), 8-bit stochastic",
        ),
    ],
)
def test_the_update_channel_names_the_codec_that_ran(
    docs: RunDocs, tmp_path: Path, codec: dict[str, object], words: str
) -> None:
    docs.config.update(codec)
    html = write_report(docs.write(tmp_path / "run")).html.read_text(encoding="utf-8")

    assert words in html
    subspace = "restricted to the round&#x27;s shared random subspace"
    assert (subspace in html) == (codec.get("codec.mask") == "subspace")
