"""How each cell's hyperparameters were chosen: the ``protocol`` block of its runs.

A tuned cell's block is the same in every reported (confirmation) seed: the grid ran on the
block's selection seeds (one run per setting and selection seed, on an 80/20 split of B's
training examples, with validation loss and accuracy and the grid model's test accuracy), the
setting with the lowest validation loss pooled over them was selected, and only then were the
confirmation seeds trained. Grid values are therefore keyed by *selection* seed, which every
tuned cell of one study shares.
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


def selection_block(cell: Cell) -> dict | None:
    """The tuned protocol block every seed of ``cell`` shares; None when not tuned.

    Raises:
      ResultsError: two seeds of the cell carry different blocks (the selection is made once
        per cell, on the selection seeds, so every reported seed records the same one).

    Example:
      >>> selection_block(cell)["selection_seeds"]  # doctest: +SKIP
      [1000, 1001, 1002, 1003, 1004]
    """
    tuned = [r for r in cell.runs if r["protocol"]["name"] == "tuned"]
    if not tuned:
        return None
    first = tuned[0]
    others = [r for r in tuned if r["protocol"] != first["protocol"]]
    if others:
        sources = ", ".join(r["source"] for r in (first, *others))
        chosen = {setting_key(r["protocol"]["selected"]) for r in (first, *others)}
        what = "protocol.selected" if len(chosen) > 1 else "protocol"
        raise ResultsError(
            f"{sources}: key '{what}' differs between seeds of one cell "
            f"({cell.experiment}/{cell.strategy}); selection is made once per cell, on the "
            "selection seeds"
        )
    return first["protocol"]


def selected_setting(cell: Cell) -> dict | None:
    """The setting selected for a tuned cell (the same for all its seeds); None when not tuned.

    Example:
      >>> selected_setting(cell)  # doctest: +SKIP
      {'lr': 0.003}
    """
    block = selection_block(cell)
    return None if block is None else block["selected"]


def lr_on_edge(cell: Cell) -> bool:
    """Whether a tuned cell's selected learning rate is the lowest or highest its grid tried
    (the optimum may lie beyond it: ``protocol.lr_extend`` ran out on that side).

    Example:
      >>> lr_on_edge(cell)  # doctest: +SKIP
      False
    """
    block = selection_block(cell)
    if block is None or LR not in block["selected"]:
        return False
    lrs = {float(point["setting"][LR]) for point in block["grid"] if LR in point["setting"]}
    return len(lrs) > 1 and float(block["selected"][LR]) in (min(lrs), max(lrs))


def selection_seeds(cell: Cell) -> tuple[int, ...] | None:
    """The seeds a tuned cell's hyperparameters were chosen on; None when not tuned."""
    block = selection_block(cell)
    return None if block is None else tuple(block["selection_seeds"])


def selection_score(cell: Cell) -> float | None:
    """A tuned cell's pooled validation loss at its selected setting (lower is better); None
    when not tuned or when no grid point had a finite loss.

    Example:
      >>> selection_score(cell)  # doctest: +SKIP
      0.412
    """
    block = selection_block(cell)
    score = None if block is None else block.get("selected_score")
    return None if score is None else float(score)


def selection_rules(cells: Iterable[Cell]) -> list[str]:
    """Distinct ``protocol.selection`` texts, in first-seen order."""
    rules: dict[str, None] = {}
    for cell in cells:
        for r in cell.runs:
            if "selection" in r["protocol"]:
                rules.setdefault(r["protocol"]["selection"], None)
    return list(rules)


def grid_values(cell: Cell, field: str) -> dict[str, dict[int, float]]:
    """``{setting_key: {selection seed: value}}`` of one grid field ("val_loss", "val_acc" or
    "test_acc"); nulls (a diverged grid run) skipped.

    Example:
      >>> grid_values(cell, "test_acc")  # doctest: +SKIP
      {'{"lr": 0.001}': {1000: 0.79, 1001: 0.8}, '{"lr": 0.003}': {1000: 0.81, 1001: 0.82}}
    """
    block = selection_block(cell)
    if block is None:
        return {}
    seeds = block["selection_seeds"]
    return {
        setting_key(point["setting"]): {
            s: float(v) for s, v in zip(seeds, point[field], strict=True) if v is not None
        }
        for point in block["grid"]
    }


def margin_se(cell: Cell) -> float | None:
    """How clearly the selected setting won: the runner-up's pooled validation loss minus the
    selected one's, in standard errors of their per-selection-seed differences (as the runner
    recorded it; inf when every seed agrees exactly). None without a runner-up or with fewer
    than two selection seeds.

    Example:
      >>> margin_se(cell)  # doctest: +SKIP
      2.7
    """
    block = selection_block(cell)
    return _se(None if block is None else block.get("margin_se"))


def screen_margin_se(cell: Cell) -> float | None:
    """How clearly the screen's cut fell (:func:`jaxtl.runner.protocol.screen_margin`): the best
    screened-out setting's loss minus the last kept one's on the screening seeds, in standard
    errors; None where nothing was screened out (or the runner did not record it).

    Example:
      >>> screen_margin_se(cell)  # doctest: +SKIP
      0.3
    """
    block = selection_block(cell)
    return _se(None if block is None else (block.get("screen") or {}).get("margin_se"))


def _se(value: float | str | None) -> float | None:
    """A recorded margin in SE as a float ("inf" as math.inf; None stays None)."""
    if value is None:
        return None
    return math.inf if value == "inf" else float(value)


def validation_examples(cell: Cell) -> str:
    """Validation examples per selection seed behind a tuned cell's choice ("5", "3–4"; "–")."""
    block = selection_block(cell)
    counts = sorted(set(block.get("val_examples") or [])) if block else []
    if not counts:
        return "–"
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"


def has_grid(cell: Cell) -> bool:
    return selection_block(cell) is not None


def robustness(x: Cell, y: Cell, direction: int) -> str | None:
    """Whether a claim "x beats y" (direction +1) or "x trails y" (-1) holds at every grid point.

    Grid models of both cells were trained on the same selection seeds' 80% splits, so they
    are compared paired by selection seed: for each grid setting of x, the mean over shared
    selection seeds of x's grid test accuracy minus y's at y's selected setting must have the
    claim's sign; likewise x's selected setting against each grid setting of y.

    Args:
      x: treated cell.
      y: reference cell.
      direction: +1 or -1, the supported sign of x - y.

    Returns:
      "robust", "setting-dependent", or None when either cell has no grid (fixed protocol)
      or they share fewer than two selection seeds.

    Example:
      >>> robustness(lp_ft_cell, full_ft_cell, +1)  # doctest: +SKIP
      'setting-dependent'
    """
    x_seeds, y_seeds = selection_seeds(x), selection_seeds(y)
    if x_seeds is None or y_seeds is None or len(set(x_seeds) & set(y_seeds)) < 2:
        return None
    x_grid, y_grid = grid_values(x, "test_acc"), grid_values(y, "test_acc")
    x_ref = x_grid.get(setting_key(selected_setting(x)), {})
    y_ref = y_grid.get(setting_key(selected_setting(y)), {})
    checks = [(values, y_ref) for values in x_grid.values()]
    checks += [(x_ref, values) for values in y_grid.values()]
    for xs, ys in checks:
        c = contrast([xs, ys])
        if c.method != "paired" or np.sign(c.estimate) != direction:
            return "setting-dependent"
    return "robust"


def _pooled(values: dict[int, float], seeds: int) -> float:
    """Mean over the selection seeds; nan when a seed's run diverged (it never competes)."""
    return float(np.mean(list(values.values()))) if len(values) == seeds else math.nan


def lr_curve(cell: Cell) -> tuple[list[float], list[float], list[float]] | None:
    """Pooled validation loss and mean grid test accuracy vs learning rate, for the plot.

    At each learning rate the other knobs take the setting with the lowest pooled validation
    loss (the selection's own rule), and test accuracy is read at that same setting. A screened
    grid (successive halving) is pooled over its screening seeds, the ones every point has.

    Returns:
      ``(lrs, val_loss, test_acc)`` sorted by lr (nan where every setting at that lr
      diverged on a seed), or None when the cell has no grid or its grid has no "lr" knob.

    Example:
      >>> lr_curve(cell)  # doctest: +SKIP
      ([0.001, 0.003, 0.01], [0.61, 0.52, 0.7], [0.79, 0.82, 0.8])
    """
    block = selection_block(cell)
    if block is None:
        return None
    pool = set((block.get("screen") or {}).get("seeds") or block["selection_seeds"])
    on = lambda values: {s: v for s, v in values.items() if s in pool}
    loss, test = grid_values(cell, "val_loss"), grid_values(cell, "test_acc")
    best: dict[float, tuple[float, float]] = {}
    for point in block["grid"]:
        setting = point["setting"]
        if LR not in setting:
            return None
        key, lr = setting_key(setting), float(setting[LR])
        here = (_pooled(on(loss[key]), len(pool)), _pooled(on(test[key]), len(pool)))
        if lr not in best or here[0] < best[lr][0] or math.isnan(best[lr][0]):
            best[lr] = here
    lrs = sorted(best)
    return lrs, [best[lr][0] for lr in lrs], [best[lr][1] for lr in lrs]
