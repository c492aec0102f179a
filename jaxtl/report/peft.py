"""The Answer's exploratory parameter-efficient line: under Q3, per model and data size of the
``peft`` experiment, the best parameter-efficient strategy (BitFit, norm-only, LoRA) beside full
fine-tuning and the best frozen-prefix strategy, each with its accuracy on B and on A, the
fraction of parameters it trains, its FLOPs per step and its optimizer state.

Outside the declared families: it states means and picks, and decides nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from jaxtl.report.cells import (
    FROZEN_STRATEGIES,
    PEFT_STRATEGIES,
    Cell,
    labeller,
    size_label,
    size_of,
    size_order,
    summarize,
)
from jaxtl.report.claims import pick_best


def _mean(cell: Cell, metric: str) -> float:
    if any(r["metrics"].get(metric) is None for r in cell.runs):
        return math.nan
    return summarize(cell, metric).mean


def _bytes(n: float) -> str:
    if not math.isfinite(n):
        return "–"
    for unit, size in (("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _pct(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{100 * x:.1f}%"


def describe(cell: Cell, name: str) -> str:
    """ "lora: B 81.2%, A 90.1%, trains 3.1% of 26,261 params, 1.9e+06 FLOPs/step, optimizer
    state 107.2 kB" (means over the cell's seeds)."""
    trainable, total = _mean(cell, "trainable_params"), _mean(cell, "total_params")
    return (
        f"{name}: B {_pct(_mean(cell, 'acc_b'))}, A {_pct(_mean(cell, 'acc_a'))}, trains"
        f" {_pct(trainable / total)} of {total:,.0f} params,"
        f" {_mean(cell, 'flops_per_step'):.2g} FLOPs/step, optimizer state"
        f" {_bytes(_mean(cell, 'optimizer_state_bytes'))}"
    )


def peft_lines(cells: Sequence[Cell]) -> list[str]:
    """Per data size: the best parameter-efficient strategy vs full_ft and the best frozen
    prefix (each side picked by ``pick_best``, on validation loss where tuned).

    Example:
      >>> peft_lines(cells)[0]  # doctest: +SKIP
      '- **5/class** (exploratory): best parameter-efficient lora (B 81.2%, ...'
    """
    label = labeller(list(cells))
    lines = []
    for size in sorted({size_of(c) for c in cells}, key=size_order):
        here = [c for c in cells if size_of(c) == size]
        sides = [
            (
                "best parameter-efficient",
                pick_best(c for c in here if c.strategy in PEFT_STRATEGIES),
            ),
            ("full fine-tuning", pick_best(c for c in here if c.strategy == "full_ft")),
            ("best frozen prefix", pick_best(c for c in here if c.strategy in FROZEN_STRATEGIES)),
        ]
        shown = [f"{role} {describe(p.cell, label(p.cell))}" for role, p in sides if p.cell]
        if shown:
            lines.append(f"- **{size_label(size)}** (exploratory): " + "; ".join(shown) + ".")
    if not lines:
        return ["No parameter-efficient cells.", ""]
    note = (
        "- Parameter-efficient strategies train a few parameters in every layer, so their"
        " backward pass still runs through the whole network; a frozen prefix skips it below"
        " the first trained group."
    )
    return [*lines, note, ""]
