"""``deployment.footprint``: per-message ClientApp measurements and their summary."""

from __future__ import annotations

from deployment.footprint import footprint_summary


def test_footprint_summary() -> None:
    samples = [
        {"peak_rss_mib": 600.0, "seconds": 20.0},
        {"peak_rss_mib": 620.5, "seconds": 30.0},
        {"peak_rss_mib": 610.0, "seconds": 25.0},
    ]

    assert footprint_summary(samples) == {
        "messages": 3,
        "peak_rss_mib_max": 620.5,
        "peak_rss_mib_median": 610.0,
        "seconds_median": 25.0,
    }
    assert footprint_summary([]) == {"messages": 0}
