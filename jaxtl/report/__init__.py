"""Results -> report: ``report.md`` with plots, tables and an Answer section computed from the runs.

Reads ``results.json`` files only (schema: SPEC "Run outputs"); imports nothing from the rest
of jaxtl.

Example:
  >>> from jaxtl import report
  >>> path = report.write_report("out/sweep")  # doctest: +SKIP
"""

from jaxtl.report.results import ResultsError, drop_duplicate_runs, load_results, validate_record
from jaxtl.report.stats import Difference, Summary, mean_ci, t_critical, verdict, welch_difference
from jaxtl.report.write import write_report

__all__ = [
    "Difference",
    "ResultsError",
    "Summary",
    "drop_duplicate_runs",
    "load_results",
    "mean_ci",
    "t_critical",
    "validate_record",
    "verdict",
    "welch_difference",
    "write_report",
]
