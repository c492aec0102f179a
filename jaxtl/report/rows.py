"""``results.csv``: one row per run the report uses, and ``load`` to get those rows back.

Columns, in this order (a column the runs never fill is still written, empty):

- ``experiment``, ``a`` (A's dataset, or "pretrained:FILE"), ``b``, ``model``, ``strategy``,
  ``options`` (JSON object of the options the user changed, ``{}`` for none), ``label``
  (strategy and options: ``lp_ft (lp_fraction=0.2)``), ``n_per_class`` (empty: all of B);
- every other param of the runs (``depth``, ``k``, ``shift``, ``tuned_group`` ...), sorted;
- ``seed``, ``protocol`` ("fixed" or "tuned"), ``selected_<knob>`` per tuned knob, sorted;
- ``acc_b``, ``acc_a``, ``acc_ood`` (fractions, empty: not measured), ``trainable_params``,
  ``total_params``, ``flops_per_step``, ``train_flops``, ``wall_time_s``,
  ``peak_memory_bytes``;
- ``input_shape`` ("32x32x3"), ``num_classes_b``, ``test_b_source``, ``test_b_examples``,
  ``source``, ``device``, ``finished_at``, ``fingerprint``, ``results_file``.

Runs in hidden directories, older duplicates and seeds left out for their settings (see
``jaxtl.report.collect``) are not rows, as they are not in the report.
"""

from __future__ import annotations

import csv
import importlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxtl.report.cells import CONTEXT_PARAMS, SIZE_PARAM, options_text
from jaxtl.report.collect import collect_runs
from jaxtl.report.results import cell_key
from jaxtl.report.task import a_name, b_name, checkpoint_spec, input_shape

CSV_FILE = "results.csv"
_LEADING = ("experiment", "a", "b", "model", "strategy", "options", "label", SIZE_PARAM)
_METRICS = (
    "acc_b",
    "acc_a",
    "acc_ood",
    "trainable_params",
    "total_params",
    "flops_per_step",
    "train_flops",
    "wall_time_s",
    "peak_memory_bytes",
)
_TRAILING = (
    "input_shape",
    "num_classes_b",
    "test_b_source",
    "test_b_examples",
    "source",
    "device",
    "finished_at",
    "fingerprint",
    "results_file",
)
_RESERVED = set(_LEADING + ("seed", "protocol") + _METRICS + _TRAILING)


def _param_column(name: str) -> str:
    """A param's column; ``param_<name>`` where the name is already a column."""
    return f"param_{name}" if name in _RESERVED else name


def columns(records: Sequence[dict]) -> list[str]:
    """The column names for ``records``, in the order of the module docstring.

    Example:
      >>> columns([{"params": {"k": 2}, "protocol": {"selected": {"lr": 0.01}}}])[8:12]
      ['k', 'seed', 'protocol', 'selected_lr']
    """
    params = sorted({p for r in records for p in r["params"]} - set(CONTEXT_PARAMS) - {SIZE_PARAM})
    knobs = sorted({k for r in records for k in (r["protocol"].get("selected") or {})})
    return [
        *_LEADING,
        *(_param_column(p) for p in params),
        "seed",
        "protocol",
        *(f"selected_{k}" for k in knobs),
        *_METRICS,
        *_TRAILING,
    ]


def run_row(record: dict) -> dict[str, Any]:
    """One record as a row (absent values are None).

    Example:
      >>> run_row(record)["label"]  # doctest: +SKIP
      'lp_ft (lp_fraction=0.2)'
    """
    params, task, options = record["params"], record.get("task") or {}, record.get("options") or {}
    shape = input_shape(record)
    test = task.get("test_b") or {}
    row: dict[str, Any] = {
        "experiment": record["experiment"],
        "a": a_name(record) or None,
        "b": b_name(record),
        "model": params.get("model"),
        "strategy": record["strategy"],
        "options": json.dumps(options, sort_keys=True),
        "label": record["strategy"] + (f" ({options_text(options)})" if options else ""),
        SIZE_PARAM: params.get(SIZE_PARAM),
    }
    for name, value in params.items():
        if name not in CONTEXT_PARAMS and name != SIZE_PARAM:
            row[_param_column(name)] = value
    row["seed"] = record["seed"]
    row["protocol"] = record["protocol"]["name"]
    for knob, value in (record["protocol"].get("selected") or {}).items():
        row[f"selected_{knob}"] = value
    row.update({metric: record["metrics"].get(metric) for metric in _METRICS})
    row.update(
        input_shape="x".join(map(str, shape)) if shape else None,
        num_classes_b=task.get("num_classes_b"),
        test_b_source=test.get("source"),
        test_b_examples=test.get("examples"),
        source=task.get("source") or checkpoint_spec(record),
        device=record["device"],
        finished_at=record["finished_at"],
        fingerprint=record.get("fingerprint"),
        results_file=record["source"],
    )
    return row


def result_rows(records: Sequence[dict]) -> tuple[list[str], list[dict[str, Any]]]:
    """``(columns, rows)`` for ``records``: every row has every column (None where unset).

    Example:
      >>> names, rows = result_rows(collect_runs("out").records)  # doctest: +SKIP
    """
    names = columns(records)
    ordered = sorted(records, key=lambda r: (*cell_key(r), r["seed"]))
    return names, [{n: row.get(n) for n in names} for row in map(run_row, ordered)]


def write_rows(records: Sequence[dict], path: str | Path) -> Path:
    """Write ``records`` as ``path`` (csv), atomically: a reader sees the old file or the new.

    Example:
      >>> write_rows(collect_runs("out").records, "out/results.csv")  # doctest: +SKIP
      PosixPath('out/results.csv')
    """
    path = Path(path)
    names, rows = result_rows(records)
    # A hidden name beside the target (same filesystem for os.replace); open() keeps the user's
    # umask, which mkstemp's 0600 would not.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=names)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def load(results_dir: str | Path) -> Any:
    """The rows of ``results.csv`` for ``results_dir``: a pandas DataFrame when pandas is
    importable, else a list of dicts (one per run, keys in column order).

    The rows are computed from the ``results.json`` files under ``results_dir`` (the same runs
    ``jaxtl report`` uses), so they need no report to have been written. pandas is not a
    dependency of jaxtl; install it for the DataFrame.

    Args:
      results_dir: a run directory, a sweep directory or any parent.

    Returns:
      ``pandas.DataFrame`` with the columns of the module docstring, or ``list[dict]``.

    Raises:
      ResultsError: no results found, or a record is malformed (one line naming file and key).

    Example:
      >>> from jaxtl import report
      >>> df = report.load("runs/tutorial")  # doctest: +SKIP
      >>> df.groupby("label").acc_b.mean()  # doctest: +SKIP
    """
    names, rows = result_rows(collect_runs(results_dir).records)
    try:
        pandas = importlib.import_module("pandas")
    except ImportError:
        return rows
    return pandas.DataFrame(rows, columns=names)
