"""Group runs into cells (everything but the seed) and name them for tables and plots."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import NamedTuple

from jaxtl.report.results import cell_key
from jaxtl.report.stats import Summary, mean_ci
from jaxtl.report.task import a_name

SIZE_PARAM = "n_per_class"
# Params that say *which transfer problem* a run belongs to, rather than how it was trained.
CONTEXT_PARAMS = ("dataset_a", "dataset_b", "model")
# Strategies whose final phase keeps some parameters frozen (Q1 "frozen" side).
FROZEN_STRATEGIES = ("linear_probe", "freeze_first_k", "surgical")
# Parameter-efficient strategies: they train a few parameters everywhere instead of a frozen
# prefix, so they are neither Q1's "frozen" side nor Q3's "trains everything" side.
PEFT_STRATEGIES = ("bitfit", "norm_only", "lora")
# The experiment that compares them; its problems are exploratory (outside the Q1-Q3 families).
PEFT_EXPERIMENT = "peft"


class Cell(NamedTuple):
    """All seeds of one (experiment, strategy, params, options) combination.

    ``options`` are the strategy options the user set to other than their defaults; two runs of
    one strategy with different options are two cells, never pooled.
    """

    experiment: str
    strategy: str
    params: dict
    runs: tuple[dict, ...]
    options: dict


def group_cells(records: Iterable[dict]) -> list[Cell]:
    """Group records that differ only in their seed.

    Args:
      records: validated records (see ``load_results``).

    Returns:
      Cells sorted by experiment, strategy, params and options, runs sorted by seed.

    Example:
      >>> [c.strategy for c in group_cells(records)]  # doctest: +SKIP
      ['full_ft', 'linear_probe']
    """
    groups: dict[tuple[str, str, str, str], list[dict]] = {}
    for record in records:
        groups.setdefault(cell_key(record), []).append(record)
    return [
        Cell(
            experiment,
            strategy,
            json.loads(params),
            tuple(sorted(runs, key=lambda r: r["seed"])),
            json.loads(options),
        )
        for (experiment, strategy, params, options), runs in sorted(groups.items())
    ]


def metric_values(cell: Cell, metric: str) -> list[float]:
    """Per-seed values of ``metric``, skipping runs where it was not measured (null).

    Example:
      >>> metric_values(cell, "acc_b")  # doctest: +SKIP
      [0.91, 0.92, 0.9]
    """
    return [float(r["metrics"][metric]) for r in cell.runs if r["metrics"][metric] is not None]


def summarize(cell: Cell, metric: str) -> Summary:
    """Mean and 95% CI of ``metric`` over the cell's seeds.

    Example:
      >>> summarize(cell, "acc_b").n  # doctest: +SKIP
      3
    """
    return mean_ci(metric_values(cell, metric))


def size_of(cell: Cell) -> int | None:
    """Target-data size (examples per class); None means all of the data."""
    return cell.params.get(SIZE_PARAM)


def size_order(size: int | None) -> float:
    """Sort key placing "all" (None) after every explicit size."""
    return float("inf") if size is None else float(size)


def size_label(size: int | None) -> str:
    """Human label of a data size: "10/class" or "all"."""
    return "all" if size is None else f"{size}/class"


def context_of(cell: Cell) -> tuple:
    """Hashable key of the transfer problem (A, B, model) a cell belongs to.

    A checkpoint source without A's data is named by its spec, so "pretrained:FILE → B".
    """
    values = {p: str(cell.params[p]) for p in CONTEXT_PARAMS if p in cell.params}
    if "dataset_a" in values and not values["dataset_a"]:
        values["dataset_a"] = a_name(cell.runs[0])
    return tuple((p, values[p]) for p in CONTEXT_PARAMS if p in values)


def context_label(context: tuple) -> str:
    """ "mnist → fashion_mnist (cnn)" from a ``context_of`` key; "" when the runs name none."""
    values = dict(context)
    pair = " → ".join(values[p] for p in ("dataset_a", "dataset_b") if values.get(p))
    model = f"({values['model']})" if "model" in values else ""
    return " ".join(part for part in (pair, model) if part)


def varying_params(cells: list[Cell]) -> set[str]:
    """Param names whose value (absence counts as a value) differs between ``cells``."""
    names = {name for cell in cells for name in cell.params}
    missing = object()
    return {
        name
        for name in names
        if len({json.dumps(c.params.get(name, missing), default=repr) for c in cells}) > 1
    }


def options_text(values: dict) -> str:
    """ "ft_lr=0.1, lp_fraction=0.2": options or hyperparameters sorted by name.

    Example:
      >>> options_text({"lp_fraction": 0.2, "ft_lr": 0.1, "lr": 3e-05})
      'ft_lr=0.1, lp_fraction=0.2, lr=3e-05'
    """
    return ", ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(values.items())
    )


def variant_label(cell: Cell, shown: set[str]) -> str:
    """Strategy name plus the ``shown`` params the cell sets and every option it changed.

    Args:
      cell: the cell to name.
      shown: param names worth showing (typically ``varying_params`` minus axis and context params).

    Returns:
      The label, e.g. "freeze_first_k (k=2)" or "lp_ft (lp_fraction=0.2)".

    Example:
      >>> variant_label(Cell("strategies", "lp_ft", {}, (), {"lp_fraction": 0.2}), set())
      'lp_ft (lp_fraction=0.2)'
    """
    extra = {name: cell.params[name] for name in shown if name in cell.params}
    extra.update(cell.options)
    return f"{cell.strategy} ({options_text(extra)})" if extra else cell.strategy


def labeller(cells: list[Cell], axes: Iterable[str] = ()) -> Callable[[Cell], str]:
    """A ``variant_label`` function for ``cells`` that hides context, size and ``axes`` params.

    Example:
      >>> label = labeller(cells, axes=("depth",))  # doctest: +SKIP
      >>> label(cells[0])  # doctest: +SKIP
      'AnB'
    """
    shown = varying_params(cells) - set(CONTEXT_PARAMS) - {SIZE_PARAM} - set(axes)
    return lambda cell: variant_label(cell, shown)
