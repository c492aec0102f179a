"""Number formatting and Markdown tables of per-cell means ± 95% CIs."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence

from jaxtl.report.cells import (
    SIZE_PARAM,
    Cell,
    context_label,
    context_of,
    labeller,
    size_label,
    size_of,
    size_order,
    summarize,
)
from jaxtl.report.stats import Summary

MISSING = "–"


def fmt_pct(s: Summary) -> str:
    """Accuracy in percent: "91.23 ± 1.20" (no ± for a single seed)."""
    if s.n == 0:
        return MISSING
    if math.isnan(s.half_width):
        return f"{100 * s.mean:.2f}"
    return f"{100 * s.mean:.2f} ± {100 * s.half_width:.2f}"


def fmt_sci(s: Summary) -> str:
    """Large or small quantities (FLOPs, seconds): "1.23e+12 ± 4.5e+09"."""
    if s.n == 0:
        return MISSING
    if math.isnan(s.half_width) or s.half_width == 0:
        return f"{s.mean:.3g}"
    return f"{s.mean:.3g} ± {s.half_width:.2g}"


def fmt_mib(s: Summary) -> str:
    """Bytes shown as MiB: "512.0 ± 3.1"."""
    if s.n == 0:
        return MISSING
    if math.isnan(s.half_width):
        return f"{s.mean / 2**20:.1f}"
    return f"{s.mean / 2**20:.1f} ± {s.half_width / 2**20:.1f}"


def seed_list(seeds: Sequence[int]) -> str:
    """Seeds in words: "0–19" for more than two consecutive ones, else "0, 2, 5"; "none".

    Example:
      >>> seed_list(range(20)), seed_list([3, 1]), seed_list([])
      ('0–19', '1, 3', 'none')
    """
    ordered = sorted(set(seeds))
    if len(ordered) > 2 and ordered[-1] - ordered[0] == len(ordered) - 1:
        return f"{ordered[0]}–{ordered[-1]}"
    return ", ".join(map(str, ordered)) or "none"


def fmt_count(s: Summary) -> str:
    """Parameter counts, mean only: "1,234,567"."""
    return MISSING if s.n == 0 else f"{round(s.mean):,}"


# (metric key, column header, formatter) of the per-cell statistics tables.
METRIC_COLUMNS: tuple[tuple[str, str, Callable[[Summary], str]], ...] = (
    ("acc_b", "acc B (%)", fmt_pct),
    ("acc_a", "acc A (%)", fmt_pct),
    ("acc_ood", "acc OOD (%)", fmt_pct),
    ("train_flops", "train FLOPs", fmt_sci),
    ("wall_time_s", "wall time (s)", fmt_sci),
    ("peak_memory_bytes", "peak mem (MiB)", fmt_mib),
    ("trainable_params", "trainable params", fmt_count),
)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table.

    Example:
      >>> print(markdown_table(["a", "b"], [["1", "2"]]))
      | a | b |
      |---|---|
      | 1 | 2 |
    """
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def stats_table(cells: list[Cell]) -> str:
    """One row per cell: mean ± 95% CI over seeds of every metric, with the seed count n.

    Columns whose metric was never measured are left out.

    Args:
      cells: cells of one experiment.

    Returns:
      The Markdown table.

    Example:
      >>> print(stats_table(group_cells(records)))  # doctest: +SKIP
    """
    label = labeller(cells)
    contexts = {context_of(c) for c in cells}
    has_size = any(SIZE_PARAM in c.params for c in cells)
    ordered = sorted(cells, key=lambda c: (context_of(c), label(c), size_order(size_of(c))))
    key_headers = (
        (["problem"] if len(contexts) > 1 else [])
        + ["strategy"]
        + (["data"] if has_size else [])
        + ["n"]
    )
    rows = []
    for cell in ordered:
        keys = ([context_label(context_of(cell))] if len(contexts) > 1 else []) + [label(cell)]
        keys += ([size_label(size_of(cell))] if has_size else []) + [str(len(cell.runs))]
        rows.append(keys + [fmt(summarize(cell, metric)) for metric, _, fmt in METRIC_COLUMNS])
    measured = [
        i
        for i in range(len(METRIC_COLUMNS))
        if any(row[len(key_headers) + i] != MISSING for row in rows)
    ]
    headers = key_headers + [METRIC_COLUMNS[i][1] for i in measured]
    return markdown_table(
        headers,
        [row[: len(key_headers)] + [row[len(key_headers) + i] for i in measured] for row in rows],
    )


def pivot(
    cells: list[Cell], row_of: Callable[[Cell], Hashable], col_of: Callable[[Cell], Hashable]
) -> tuple[list, list, dict]:
    """Arrange cells on a grid.

    Args:
      cells: the cells; (row_of(c), col_of(c)) must be distinct for distinct cells.
      row_of: row key of a cell.
      col_of: column key of a cell.

    Returns:
      ``(rows, cols, grid)``: keys in first-seen order and ``grid[(row, col)] -> Cell``.

    Example:
      >>> rows, cols, grid = pivot(cells, lambda c: c.params["shift"], size_of)  # doctest: +SKIP
    """
    rows: dict = {}
    cols: dict = {}
    grid = {}
    for cell in cells:
        r, c = row_of(cell), col_of(cell)
        rows.setdefault(r, None)
        cols.setdefault(c, None)
        grid[(r, c)] = cell
    return list(rows), list(cols), grid


def pivot_table(
    cells: list[Cell],
    row_of: Callable[[Cell], Hashable],
    col_of: Callable[[Cell], Hashable],
    corner: str,
    metric: str = "acc_b",
    fmt: Callable[[Summary], str] = fmt_pct,
    row_name: Callable[[Hashable], str] = str,
    col_name: Callable[[Hashable], str] = str,
) -> str:
    """Markdown grid of one metric's mean ± CI, e.g. acc_b by shift x tuned group.

    Example:
      >>> print(pivot_table(cells, lambda c: c.strategy, size_of, "strategy"))  # doctest: +SKIP
    """
    rows, cols, grid = pivot(cells, row_of, col_of)
    body = [
        [row_name(r)]
        + [fmt(summarize(grid[(r, c)], metric)) if (r, c) in grid else MISSING for c in cols]
        for r in rows
    ]
    return markdown_table([corner] + [col_name(c) for c in cols], body)
