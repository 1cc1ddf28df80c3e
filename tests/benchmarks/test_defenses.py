from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.defenses import FlagCounts, flag_counts, flag_scores


def _run(tmp_path: Path, rounds: list[dict[str, list[int]]]) -> Path:
    (tmp_path / "checkpoint").mkdir(parents=True)
    # Nodes 100..103 are partitions 0..3.
    state = {"node_clients": {str(100 + p): str(p) for p in range(4)}}
    (tmp_path / "checkpoint" / "state.json").write_text(json.dumps(state))
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({"round": i + 1, **r}) + "\n" for i, r in enumerate(rounds))
    )
    return tmp_path


def test_flag_scores_count_by_partition_over_rounds(tmp_path: Path) -> None:
    run = _run(
        tmp_path,
        [
            {"clients": [100, 101, 102, 103], "flagged": [103]},  # attacker 3 caught
            {"clients": [100, 101, 102, 103], "flagged": [103, 100]},  # plus one false alarm
            {"clients": [100, 101, 102, 103], "flagged": []},  # attacker missed
        ],
    )

    precision, recall, honest = flag_scores(run, frozenset({3}))

    assert precision == pytest.approx(2 / 3)
    assert recall == pytest.approx(2 / 3)
    assert honest == pytest.approx(1 / 9)


def test_an_excluded_attacker_still_took_part(tmp_path: Path) -> None:
    # With robust.exclude-flagged a flagged node is not among the round's `clients`.
    run = _run(tmp_path, [{"clients": [100, 101, 102], "flagged": [103]}])

    assert flag_scores(run, frozenset({3})) == (1.0, 1.0, 0.0)


def test_no_attackers_and_no_flags_is_perfect(tmp_path: Path) -> None:
    run = _run(tmp_path, [{"clients": [100, 101], "flagged": []}])
    assert flag_scores(run, frozenset()) == (1.0, 1.0, 0.0)


def test_flags_pool_over_runs_by_counts_not_by_averaging_rates(tmp_path: Path) -> None:
    one = _run(tmp_path / "a", [{"clients": [100, 101, 102, 103], "flagged": [103]}])
    two = _run(
        tmp_path / "b",
        [{"clients": [100, 101, 102, 103], "flagged": []}] * 3,
    )

    pooled = flag_counts(one, frozenset({3})) + flag_counts(two, frozenset({3}))

    assert pooled == FlagCounts(
        true_pos=1, flagged=1, attacker_rounds=4, honest_rounds=12, false_pos=0
    )
    assert pooled.rates() == (1.0, 0.25, 0.0)
