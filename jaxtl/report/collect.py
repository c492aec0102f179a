"""The runs a report is made of: every results.json under a directory, less what must not count.

Hidden directories are never read (``results.load_results``); of two files for one cell and seed
the latest is kept (``results.drop_duplicate_runs``); seeds made with other settings than the
cell's most recent ones are left out with a warning (``settings.one_setting_per_cell``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NamedTuple

from jaxtl.report.results import drop_duplicate_runs, load_results
from jaxtl.report.settings import LeftOut, one_setting_per_cell


class Runs(NamedTuple):
    """What ``collect_runs`` found.

    Attributes:
      records: the validated records the report uses, in path order.
      duplicates: older copies of a (cell, seed) that were ignored.
      left_out: per cell, runs made with other settings than the kept ones.
    """

    records: list[dict]
    duplicates: list[dict]
    left_out: list[LeftOut]

    def warnings(self) -> list[str]:
        """One line per cell with left-out runs.

        Example:
          >>> collect_runs("out").warnings()  # doctest: +SKIP
          []
        """
        return [left.line() for left in self.left_out]


def collect_runs(results_dir: str | Path, warn: bool = True) -> Runs:
    """Load the runs under ``results_dir`` that a report and ``results.csv`` use.

    Args:
      results_dir: a run directory, a sweep directory or any parent.
      warn: print each warning line on stderr ("jaxtl: warning: ...").

    Returns:
      The ``Runs``.

    Raises:
      ResultsError: no results found, or a record is malformed (one line naming file and key).

    Example:
      >>> runs = collect_runs("out/sweep")  # doctest: +SKIP
      >>> len(runs.records), runs.warnings()  # doctest: +SKIP
      (10, [])
    """
    records, duplicates = drop_duplicate_runs(load_results(results_dir))
    records, left_out = one_setting_per_cell(records)
    runs = Runs(records, duplicates, left_out)
    if warn:
        for line in runs.warnings():
            print(f"jaxtl: warning: {line}", file=sys.stderr)
    return runs
