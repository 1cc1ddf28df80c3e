"""The privacy report: files written, numbers shown, and bad run directories refused untouched."""

from __future__ import annotations

import base64
import copy
import functools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from common.accounting import HistoryEntry, epsilon_from_history
from common.weights import save_safetensors
from report.write import ReportError, ReportFiles, write_report

# Opacus warns when the optimal RDP order lies at an end of its list: tightness, not us.
pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the (largest|smallest) alpha")

DELTA = 1e-5
BUDGET = 8.0
ROUNDS = 4
# Three clients with different (σ, q); client 2 sits out round 2 and round 4.
CLIENT_PLANS: dict[str, tuple[float, float, int, list[int]]] = {
    "0": (1.7, 1 / 3, 6, [1, 2, 3, 4]),
    "1": (1.6, 1 / 4, 8, [1, 2, 3, 4]),
    "2": (1.2, 1 / 5, 10, [1, 3]),
}
NODE_OF = {"0": 101, "1": 202, "2": 303}


def eps(history: Sequence[HistoryEntry], accountant: str = "rdp") -> float:
    return _eps(tuple(history), accountant)


@functools.cache
def _eps(history: tuple[HistoryEntry, ...], accountant: str) -> float:
    # PRV takes ~0.5 s a history: compute each one once for the whole module.
    return epsilon_from_history(history, delta=DELTA, accountant=accountant)


@dataclass
class RunDocs:
    """The four files of a run directory, as documents a test may alter before writing."""

    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    privacy: dict[str, Any]
    model: dict[str, Any] = field(
        default_factory=lambda: {
            "fc.weight": np.zeros((10, 64), dtype=np.float32),
            "fc.bias": np.zeros(10, dtype=np.float32),
        }
    )

    def write(self, path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(self.config, indent=2))
        (path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in self.metrics))
        (path / "privacy.json").write_text(json.dumps(self.privacy, indent=2))
        save_safetensors(path / "model.safetensors", self.model)
        return path


def build_docs(accountant: str = "rdp") -> RunDocs:
    """A synthetic run whose ledger adds up: ε computed with common.accounting."""
    config = {
        "num-server-rounds": ROUNDS,
        "seed": 0,
        "dataset": "digits",
        "partitioning": "dirichlet",
        "local-epochs": 2,
        "batch-size": 32,
        "lr": 1.0,
        "dp.delta": DELTA,
        "dp.max-grad-norm": 1.0,
        "dp.accountant": accountant,
        "dp.budget": BUDGET,
        "codec.topk": 0.1,
        "codec.bits": 8,
        "codec.error-feedback": True,
        "sim.clients": 3,
    }
    clients = {}
    for cid, (sigma, q, steps, rounds) in CLIENT_PLANS.items():
        history = [(sigma, q, steps)] * len(rounds)
        e = eps(history, accountant)
        clients[cid] = {
            "epsilon": e,
            "budget": BUDGET,
            "exhausted": False,
            "history": [list(h) for h in history],
            "rounds": rounds,
            "reported_epsilon": e,
            "mismatch": False,
        }
    metrics = []
    for r in range(1, ROUNDS + 1):
        nodes = [NODE_OF[cid] for cid, plan in CLIENT_PLANS.items() if r in plan[3]]
        rejected = [{"node": 202, "reason": "open-failed", "detail": "tampered"}] if r == 2 else []
        metrics.append(
            {
                "round": r,
                "accuracy": 0.5 + 0.1 * r,
                "loss": 2.0 / r,
                "watermark_accuracy": None,
                "clients": [n for n in nodes if not (r == 2 and n == 202)],
                "rejected": rejected,
                "flagged": [101] if r == 3 else [],
                "bytes_sealed": 1000 * len(nodes),
                "bytes_dense": 20000 * len(nodes),
                "seconds": 0.5,
                "refused": [],
                "faults": [],
                "epsilon_max": 0.0,
            }
        )
    privacy = {
        "unit": "example",
        "accountant": accountant,
        "delta": DELTA,
        "clients": clients,
        "central": None,
    }
    return RunDocs(config=config, metrics=metrics, privacy=privacy)


@pytest.fixture(scope="module")
def base_docs() -> RunDocs:
    return build_docs()


@pytest.fixture
def docs(base_docs: RunDocs) -> RunDocs:
    return copy.deepcopy(base_docs)


@dataclass(frozen=True)
class Written:
    run: Path
    files: ReportFiles
    html: str
    docs: RunDocs


@pytest.fixture(scope="module")
def written(base_docs: RunDocs, tmp_path_factory: pytest.TempPathFactory) -> Written:
    run = base_docs.write(tmp_path_factory.mktemp("report") / "run")
    files = write_report(run)
    return Written(run, files, files.html.read_text(encoding="utf-8"), base_docs)


def client_row(html: str, cid: str) -> list[str]:
    """The cells of the per-client table's row for ``cid``."""
    table = html[html.index('<section id="clients">') :]
    table = table[: table.index("</table>")]
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table):
        cells = re.findall(r"<td>(.*?)</td>", row)
        if cells and cells[0] == cid:
            return cells
    raise AssertionError(f"no row for client {cid}")


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for folders)."""
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


# ----------------------------------------------------------------------- what is written


def test_writes_html_markdown_and_plots(written: Written) -> None:
    files = written.files
    assert files.html == written.run / "report.html"
    assert files.markdown == written.run / "report.md"
    assert {p.name for p in files.plots} == {
        "epsilon.png",
        "accuracy.png",
        "bytes.png",
        "clients.png",
    }
    for path in (files.html, files.markdown, *files.plots):
        assert path.is_file() and path.stat().st_size > 0
    assert sorted(p.name for p in written.run.iterdir() if p.name.startswith(".")) == []


def test_plots_are_valid_non_trivial_pngs(written: Written) -> None:
    for path in written.files.plots:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            width, height = img.size
            colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
        assert width >= 600 and height >= 300, path.name
        assert path.stat().st_size > 5_000, path.name
        assert colours is not None and len(colours) > 20, path.name


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


def test_every_client_has_a_row_with_both_accountants(written: Written) -> None:
    for cid, c in written.docs.privacy["clients"].items():
        history = [tuple(h) for h in c["history"]]
        cells = client_row(written.html, cid)
        assert cells[3] == str(len(c["rounds"]))  # rounds trained
        assert cells[4] == str(sum(h[2] for h in history))  # steps
        assert cells[5] == f"{c['epsilon']:.3f}"
        assert cells[6] == f"{eps(history, 'prv'):.3f}"
        assert cells[8] == "8"
        assert cells[9] == "ok"


def test_epsilon_over_rounds_is_reconstructed_from_history_and_rounds(written: Written) -> None:
    clients = written.docs.privacy["clients"]
    section = written.html[written.html.index('<section id="over-time">') :]
    for r in range(1, ROUNDS + 1):
        cumulative = []
        for c in clients.values():
            k = sum(1 for x in c["rounds"] if x <= r)
            cumulative.append(eps([tuple(h) for h in c["history"][:k]]))
        charged = sum(1 for c in clients.values() if r in c["rounds"])
        row = (
            f"<tr><td>{r}</td><td>{charged}</td><td>{min(cumulative):.3f}</td>"
            f"<td>{max(cumulative):.3f}</td></tr>"
        )
        assert row in section


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


def test_html_is_self_contained_and_embeds_the_plots(written: Written) -> None:
    html = written.html
    assert "<script" not in html and "<link" not in html
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", html)
    embedded = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    on_disk = {p.read_bytes() for p in written.files.plots}
    assert {base64.b64decode(b) for b in embedded} == on_disk
    assert html.count('<figure id="plot-') == len(written.files.plots)


def test_markdown_has_the_statement_tables_and_plot_links(written: Written) -> None:
    md = written.files.markdown.read_text(encoding="utf-8")
    largest = max(c["epsilon"] for c in written.docs.privacy["clients"].values())
    assert md.startswith("# fedveil run run: privacy and training report\n")
    assert f"**(ε = {largest:.3f}, δ = 1e-05)-differentially private**" in md
    for p in written.files.plots:
        assert f"](plots/{p.name})" in md
    assert "| 2 | 202 | open-failed | tampered |" in md


def test_rewriting_gives_identical_files(written: Written, tmp_path: Path) -> None:
    again = write_report(written.docs.write(tmp_path / "run"))
    assert again.html.read_text(encoding="utf-8") == written.html
    assert [p.read_bytes() for p in again.plots] == [p.read_bytes() for p in written.files.plots]


# ----------------------------------------------------------------------- optional content


def test_plan_stopped_reason_central_and_watermark(docs: RunDocs, tmp_path: Path) -> None:
    docs.privacy["plan"] = {
        cid: {
            "client_id": cid,
            "noise_multiplier": sigma,
            "sample_rate": q,
            "steps_per_round": steps,
            "planned_rounds": ROUNDS,
            "planned_epsilon": eps([(sigma, q, steps * ROUNDS)]),
            "one_round_epsilon": eps([(sigma, q, steps)]),
        }
        for cid, (sigma, q, steps, _) in CLIENT_PLANS.items()
    }
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


def test_statuses_budget_reached_and_mismatch(docs: RunDocs, tmp_path: Path) -> None:
    clients = docs.privacy["clients"]
    clients["0"]["exhausted"] = True  # it refused a round
    clients["1"]["reported_epsilon"] = 0.5
    clients["1"]["mismatch"] = True
    # One more round like its last would pass this budget, so the server no longer samples it.
    clients["2"]["budget"] = clients["2"]["epsilon"] + 0.01
    html = write_report(docs.write(tmp_path / "run")).html.read_text(encoding="utf-8")
    assert client_row(html, "0")[-1] == "budget reached"
    assert client_row(html, "1")[-1] == "reported ε mismatch"
    assert client_row(html, "1")[7] == "0.500"
    assert client_row(html, "2")[-1] == "budget reached"
    assert html.count('<tr class="warn">') == 1


def test_over_budget_is_shown_not_hidden(docs: RunDocs, tmp_path: Path) -> None:
    docs.privacy["clients"]["1"]["budget"] = 1.0
    html = write_report(docs.write(tmp_path / "run")).html.read_text(encoding="utf-8")
    assert client_row(html, "1")[-1] == "over budget"
    assert client_row(html, "0")[-1] == "ok"


def test_a_server_root_set_is_named_as_server_data(docs: RunDocs, tmp_path: Path) -> None:
    plain = write_report(docs.write(tmp_path / "plain")).html.read_text(encoding="utf-8")
    docs.config["robust.root-examples"] = 100
    html = write_report(docs.write(tmp_path / "run")).html.read_text(encoding="utf-8")

    assert "Server-held data" not in plain
    assert "The server kept 100 examples of its own held-out split" in html
    assert "costs clients no privacy" in html


def test_prv_ledger_shows_rdp_beside_it(tmp_path: Path) -> None:
    docs = build_docs("prv")
    docs.privacy["clients"] = {"2": docs.privacy["clients"]["2"]}
    html = write_report(docs.write(tmp_path / "run")).html.read_text(encoding="utf-8")
    history = [tuple(h) for h in docs.privacy["clients"]["2"]["history"]]
    assert "Accountant: privacy-random-variable (PRV) accountant" in html
    assert f"<strong>ε = {eps(history, 'rdp'):.3f}</strong>" in html
    assert client_row(html, "2")[5:7] == [f"{eps(history, 'prv'):.3f}", f"{eps(history):.3f}"]


def test_run_stopped_before_its_first_round(docs: RunDocs, tmp_path: Path) -> None:
    docs.privacy["clients"] = {}
    docs.privacy["stopped_reason"] = "1 client available, 2 needed"
    run = docs.write(tmp_path / "run")
    (run / "metrics.jsonl").unlink()
    files = write_report(run)
    html = files.html.read_text(encoding="utf-8")
    assert "No client trained in this run, so no privacy was spent" in html
    assert files.plots == ()


# ----------------------------------------------------------------------- bad run directories

Mutation = Callable[[RunDocs, Path], None]


def _drop(name: str) -> Mutation:
    return lambda d, run: (run / name).unlink()


def _privacy(change: Callable[[dict[str, Any]], None]) -> Mutation:
    def mutate(d: RunDocs, run: Path) -> None:
        change(d.privacy)
        (run / "privacy.json").write_text(json.dumps(d.privacy))

    return mutate


def _write(name: str, text: str) -> Mutation:
    def mutate(d: RunDocs, run: Path) -> None:
        (run / name).write_text(text)

    return mutate


def _client0(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda p: p["clients"]["0"].__setitem__(key, value)


BAD: dict[str, tuple[Mutation, str, str]] = {
    "no config": (_drop("config.json"), "config.json", "missing"),
    "no ledger": (_drop("privacy.json"), "privacy.json", "missing"),
    "no model": (_drop("model.safetensors"), "model.safetensors", "missing"),
    "no metrics": (_drop("metrics.jsonl"), "metrics.jsonl", "missing"),
    "ledger from another version": (
        _write("privacy.json", json.dumps({"version": 2, "ledger": {"clients": []}})),
        "privacy.json",
        "unknown keys ['ledger', 'version']",
    ),
    "ledger lacks clients": (
        _privacy(lambda p: p.pop("clients")),
        "privacy.json",
        "lacks clients",
    ),
    "client lacks rounds": (
        _privacy(lambda p: p["clients"]["1"].pop("rounds")),
        "privacy.json",
        "client 1 lacks rounds",
    ),
    "history entry of two": (
        _privacy(_client0("history", [[1.1, 0.3]] * 4)),
        "privacy.json",
        "client 0 history[0] must be [noise_multiplier, sample_rate, steps]",
    ),
    "unknown accountant": (
        _privacy(lambda p: p.__setitem__("accountant", "gdp")),
        "privacy.json",
        "accountant must be one of",
    ),
    "clients as a list": (
        _privacy(lambda p: p.__setitem__("clients", [])),
        "privacy.json",
        "clients must be an object",
    ),
    "epsilon 5 % off": (
        _privacy(
            lambda p: p["clients"]["1"].__setitem__("epsilon", p["clients"]["1"]["epsilon"] * 1.05)
        ),
        "privacy.json",
        "client 1 epsilon",
    ),
    "history longer than rounds": (
        _privacy(lambda p: p["clients"]["2"]["rounds"].pop()),
        "privacy.json",
        "client 2 has 2 history entries but 1 rounds",
    ),
    "charged in a round that never finished": (
        _privacy(_client0("rounds", [1, 2, 3, 9])),
        "privacy.json",
        "charged in rounds [9]",
    ),
    "central epsilon off": (
        _privacy(
            lambda p: p.__setitem__(
                "central", {"epsilon": 0.1, "delta": DELTA, "history": [[2.0, 1.0, 1]] * 4}
            )
        ),
        "privacy.json",
        "central epsilon",
    ),
    "delta differs from config": (
        _privacy(lambda p: p.__setitem__("delta", 1e-6)),
        "privacy.json",
        "dp.delta",
    ),
    "metrics line lacks keys": (
        _write("metrics.jsonl", '{"round": 1, "accuracy": 0.5}\n'),
        "metrics.jsonl",
        "line 1 lacks loss",
    ),
    "metrics line not JSON": (
        _write("metrics.jsonl", "{not json\n"),
        "metrics.jsonl",
        "line 1 is not JSON",
    ),
    "model not safetensors": (
        _write("model.safetensors", "garbage, not a model"),
        "model.safetensors",
        "not a safetensors file",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_run_directory_is_refused_and_left_untouched(
    case: str, docs: RunDocs, tmp_path: Path
) -> None:
    mutate, file_name, problem = BAD[case]
    run = docs.write(tmp_path / "run")
    (run / "report.html").write_text("an earlier report")
    mutate(docs, run)
    before = snapshot(run)

    with pytest.raises(ReportError) as info:
        write_report(run)

    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(run / file_name) + ":"), message
    assert problem in message, message
    assert snapshot(run) == before


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="not a directory"):
        write_report(tmp_path / "absent")


def test_error_is_a_value_error() -> None:
    assert issubclass(ReportError, ValueError)


def test_a_reported_epsilon_that_differs_is_a_mismatch_even_if_unflagged(
    docs: RunDocs, tmp_path: Path
) -> None:
    docs.privacy["clients"]["2"]["reported_epsilon"] = 0.25  # the ledger did not flag it

    html = write_report(docs.write(tmp_path / "run")).html.read_text(encoding="utf-8")

    assert client_row(html, "2")[-1] == "reported ε mismatch"
    assert "Clients 2 reported an ε that differs from the ledger&#x27;s." in html


def test_the_package_exports_the_entry_point() -> None:
    import report
    import report.write

    assert report.write_report is report.write.write_report
    assert report.ReportError is ReportError and report.ReportFiles is ReportFiles
