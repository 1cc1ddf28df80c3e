"""Offline reporting: a run directory to ``report.html``, ``report.md`` and ``plots/*.png``.

``write_report(run_dir)`` is the entry point; it raises ``ReportError`` (a ``ValueError``) with
one line naming the file and the problem when the run directory cannot be reported on.
"""

from report.write import ReportError, ReportFiles, write_report

__all__ = ["ReportError", "ReportFiles", "write_report"]
