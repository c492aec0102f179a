"""How each cell's hyperparameters were chosen: the ``protocol`` block of its runs.

A tuned cell carries, per seed, its grid (one run per setting on the 80% split of B's training
examples, with validation and test accuracy) and the setting selected for the whole cell.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

import numpy as np

from jaxtl.report.cells import Cell, options_text
from jaxtl.report.results import ResultsError
from jaxtl.report.stats import contrast

LR = "lr"


def protocol_name(cell: Cell) -> str:
    """ "tuned" or "fixed" for a cell; "mixed" when its seeds disagree.

    Example:
      >>> protocol_name(cell)  # doctest: +SKIP
      'tuned'
    """
    names = {r["protocol"]["name"] for r in cell.runs}
    return names.pop() if len(names) == 1 else "mixed"


def setting_key(setting: dict) -> str:
    """Canonical, hashable form of a hyperparameter setting."""
    return json.dumps(setting, sort_keys=True)


def setting_label(setting: dict | None) -> str:
    """ "alpha=0.001, lr=0.003" (knobs sorted); "–" for None.

    Example:
      >>> setting_label({"lr": 0.003, "alpha": 0.001})
      'alpha=0.001, lr=0.003'
    """
    return "–" if setting is None else options_text(setting)


def selected_setting(cell: Cell) -> dict | None:
    """The setting selected for a tuned cell (the same for all its seeds); None when not tuned.

    Raises:
      ResultsError: the seeds of one cell report different selected settings.

    Example:
      >>> selected_setting(cell)  # doctest: +SKIP
      {'lr': 0.003}
    """
    chosen = {
        setting_key(r["protocol"]["selected"]): r
        for r in cell.runs
        if r["protocol"].get("selected") is not None
    }
    if not chosen:
        return None
    if len(chosen) > 1:
        sources = ", ".join(r["source"] for r in chosen.values())
        raise ResultsError(
            f"{sources}: key 'protocol.selected' differs between seeds of one cell "
            f"({cell.experiment}/{cell.strategy}); selection is per cell, by mean over seeds"
        )
    return json.loads(next(iter(chosen)))


def selection_rules(cells: Iterable[Cell]) -> list[str]:
    """Distinct ``protocol.selection`` texts, in first-seen order."""
    rules: dict[str, None] = {}
    for cell in cells:
        for r in cell.runs:
            if "selection" in r["protocol"]:
                rules.setdefault(r["protocol"]["selection"], None)
    return list(rules)


def grid_values(cell: Cell, field: str) -> dict[str, dict[int, float]]:
    """``{setting_key: {seed: value}}`` of one grid field ("val_acc" or "test_acc"); nulls skipped.

    Example:
      >>> grid_values(cell, "test_acc")  # doctest: +SKIP
      {'{"lr": 0.001}': {0: 0.79, 1: 0.8}, '{"lr": 0.003}': {0: 0.81, 1: 0.82}}
    """
    out: dict[str, dict[int, float]] = {}
    for r in cell.runs:
        seeds = r["protocol"].get("selection_seeds")
        for point in r["protocol"].get("grid", []):
            values = point.get(field)
            if seeds is not None:  # the grid ran on the selection seeds, the same for every run
                pairs = zip(seeds, values if isinstance(values, list) else [])
            else:
                pairs = [(r["seed"], values)]
            for seed, v in pairs:
                if v is not None:
                    out.setdefault(setting_key(point["setting"]), {})[seed] = float(v)
    return out


def selection_margin(cell: Cell) -> float | None:
    """How far the selected setting won: its mean validation accuracy over seeds minus the best
    other setting's, in the selection's own terms (a diverged setting never competes). None for
    a cell without a grid or with a single setting.

    Example:
      >>> selection_margin(cell)  # doctest: +SKIP
      0.04
    """
    chosen = selected_setting(cell)
    values = grid_values(cell, "val_acc")
    if chosen is None or setting_key(chosen) not in values or len(values) < 2:
        return None
    seeds = len(cell.runs)
    means = {k: float(np.mean(list(v.values()))) for k, v in values.items() if len(v) == seeds}
    others = [m for k, m in means.items() if k != setting_key(chosen)]
    if setting_key(chosen) not in means or not others:
        return None
    return means[setting_key(chosen)] - max(others)


def validation_examples(cell: Cell) -> str:
    """Validation examples per seed behind a tuned cell's selection ("5", "3–4"; "–" unknown)."""
    found = [r["protocol"].get("val_examples") for r in cell.runs]
    counts = sorted({c for v in found if v for c in (v if isinstance(v, list) else [v])})
    if not counts:
        return "–"
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"


def has_grid(cell: Cell) -> bool:
    return any(r["protocol"].get("grid") for r in cell.runs)


def _final(cell: Cell) -> dict[int, float]:
    return {r["seed"]: float(r["metrics"]["acc_b"]) for r in cell.runs}


def _reference(cell: Cell) -> dict[int, float]:
    """Per-seed test accuracy of the cell's selected setting on the grid's 80% split.

    Comparing grid points with it keeps both sides trained on the same examples; a cell without
    a grid (fixed protocol) falls back to its final accuracy on B.
    """
    chosen = selected_setting(cell)
    tested = grid_values(cell, "test_acc")
    if chosen is not None and setting_key(chosen) in tested:
        return tested[setting_key(chosen)]
    return _final(cell)


def robustness(x: Cell, y: Cell, direction: int) -> str | None:
    """Whether a claim "x beats y" (direction +1) or "x trails y" (-1) holds at every grid point.

    For each grid setting of x, the mean over shared seeds of x's grid test accuracy minus y's
    test accuracy at y's selected setting (same 80% split) must have the claim's sign; likewise
    x's selected setting against each grid setting of y.

    Args:
      x: treated cell.
      y: reference cell.
      direction: +1 or -1, the supported sign of x - y.

    Returns:
      "robust", "setting-dependent", or None when neither cell has a grid (fixed protocol).

    Example:
      >>> robustness(lp_ft_cell, full_ft_cell, +1)  # doctest: +SKIP
      'setting-dependent'
    """
    checks = []
    if has_grid(x):
        y_ref = _reference(y)
        checks += [(values, y_ref) for values in grid_values(x, "test_acc").values()]
    if has_grid(y):
        x_ref = _reference(x)
        checks += [(x_ref, values) for values in grid_values(y, "test_acc").values()]
    if not checks:
        return None
    for xs, ys in checks:
        c = contrast([xs, ys])
        if math.isnan(c.estimate) or np.sign(c.estimate) != direction:
            return "setting-dependent"
    return "robust"


def lr_curve(cell: Cell) -> tuple[list[float], list[float], list[float]] | None:
    """Mean over seeds of validation and test accuracy vs learning rate, for the plot.

    At each learning rate the other knobs take the setting with the highest mean validation
    accuracy (the best over them), and test accuracy is read at that same setting.

    Returns:
      ``(lrs, val_means, test_means)`` sorted by lr, or None when the grid has no "lr" knob.

    Example:
      >>> lr_curve(cell)  # doctest: +SKIP
      ([0.001, 0.003, 0.01], [0.8, 0.83, 0.79], [0.79, 0.82, 0.8])
    """
    val, test = grid_values(cell, "val_acc"), grid_values(cell, "test_acc")
    best: dict[float, tuple[float, float]] = {}
    for key, seeds in val.items():
        setting = json.loads(key)
        if LR not in setting:
            return None
        v = float(np.mean(list(seeds.values())))
        t = float(np.mean(list(test[key].values()))) if key in test else math.nan
        lr = float(setting[LR])
        if lr not in best or v > best[lr][0]:
            best[lr] = (v, t)
    if not best:
        return None
    lrs = sorted(best)
    return lrs, [best[lr][0] for lr in lrs], [best[lr][1] for lr in lrs]
