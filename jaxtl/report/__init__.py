"""Results -> report: ``report.md`` with plots, tables and an Answer section computed from the runs,
``results.csv`` with one row per run, and the comparison of two runs' primary claims.

Reads ``results.json`` files only (the schema is in ``jaxtl.report.results``); imports nothing
from the rest of jaxtl.

Example:
  >>> from jaxtl import report
  >>> path = report.write_report("out/sweep")  # doctest: +SKIP
  >>> rows = report.load("out/sweep")  # doctest: +SKIP
  >>> report.write_comparison(report.compare_studies("out/a", "out/b"), "out/b/comparison.md")
  ... # doctest: +SKIP
"""

from jaxtl.report.collect import Runs, collect_runs
from jaxtl.report.replication import Comparison, compare_studies, write_comparison
from jaxtl.report.results import ResultsError, drop_duplicate_runs, load_results, validate_record
from jaxtl.report.rows import load
from jaxtl.report.stats import (
    Contrast,
    Difference,
    Summary,
    contrast,
    contrast_mde,
    holm,
    mean_ci,
    minimum_detectable_effect,
    paired_t,
    sign_flip_p,
    t_critical,
    verdict,
    welch_difference,
)
from jaxtl.report.write import write_report

__all__ = [
    "Comparison",
    "Contrast",
    "Difference",
    "ResultsError",
    "Runs",
    "Summary",
    "collect_runs",
    "compare_studies",
    "contrast",
    "contrast_mde",
    "drop_duplicate_runs",
    "holm",
    "load",
    "load_results",
    "mean_ci",
    "minimum_detectable_effect",
    "paired_t",
    "sign_flip_p",
    "t_critical",
    "validate_record",
    "verdict",
    "welch_difference",
    "write_comparison",
    "write_report",
]
