"""Research benchmarks over fedveil's public pieces (not installed; run from a checkout)."""
