"""Results -> report: ``report.md`` with plots, tables and an Answer section computed from the runs.

Reads ``results.json`` files only (schema: SPEC "Run outputs"); imports nothing from the rest
of jaxtl.

Example:
  >>> from jaxtl import report
  >>> path = report.write_report("out/sweep")  # doctest: +SKIP
"""

from jaxtl.report.results import ResultsError, drop_duplicate_runs, load_results, validate_record
from jaxtl.report.stats import (
    Contrast,
    Difference,
    Summary,
    contrast,
    holm,
    mean_ci,
    paired_t,
    sign_flip_p,
    t_critical,
    verdict,
    welch_difference,
)
from jaxtl.report.write import write_report

__all__ = [
    "Contrast",
    "Difference",
    "ResultsError",
    "Summary",
    "contrast",
    "drop_duplicate_runs",
    "holm",
    "load_results",
    "mean_ci",
    "paired_t",
    "sign_flip_p",
    "t_critical",
    "validate_record",
    "verdict",
    "welch_difference",
    "write_report",
]
