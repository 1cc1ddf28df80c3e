"""Offline reporting: a run directory to report.html, report.md and plots."""
