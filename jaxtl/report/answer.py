"""The "Answer" section: Q1-Q3 verdicts computed from the numbers, worded by their outcome."""

from __future__ import annotations

import math
from typing import NamedTuple

from jaxtl.report.cells import (
    FROZEN_STRATEGIES,
    Cell,
    context_label,
    context_of,
    labeller,
    metric_values,
    size_label,
    size_of,
    size_order,
    summarize,
)
from jaxtl.report.stats import Difference, verdict, welch_difference

RULE = (
    "Rule: a difference of means is *supported* when its 95% Welch confidence interval "
    "(t critical value at the Welch df rounded down) excludes 0; with fewer than 2 seeds on a side "
    "no claim is made. The best frozen strategy is picked by mean accuracy on B, which favours it "
    "slightly. pp = percentage points."
)


class Comparison(NamedTuple):
    """Treated cell x against reference cell y at one data size."""

    size: int | None
    x: str
    y: str
    acc_b: Difference
    acc_a: Difference | None
    flops_ratio: float
    time_ratio: float
    time: Difference


def compare(x: Cell, y: Cell, x_name: str, y_name: str) -> Comparison:
    """Differences (x - y) of B accuracy, A retention and cost between two cells.

    Args:
      x: treated cell (e.g. the best frozen strategy).
      y: reference cell (e.g. full_ft) at the same data size.
      x_name: label of x.
      y_name: label of y.

    Returns:
      A ``Comparison``; ``acc_a`` is None when either cell never measured it.

    Example:
      >>> c = compare(lp_cell, ft_cell, "linear_probe", "full_ft")  # doctest: +SKIP
      >>> verdict(c.acc_b)  # doctest: +SKIP
      'worse'
    """
    acc_a_x, acc_a_y = metric_values(x, "acc_a"), metric_values(y, "acc_a")
    return Comparison(
        size=size_of(x),
        x=x_name,
        y=y_name,
        acc_b=welch_difference(metric_values(x, "acc_b"), metric_values(y, "acc_b")),
        acc_a=welch_difference(acc_a_x, acc_a_y) if acc_a_x and acc_a_y else None,
        flops_ratio=_ratio(summarize(x, "train_flops").mean, summarize(y, "train_flops").mean),
        time_ratio=_ratio(summarize(x, "wall_time_s").mean, summarize(y, "wall_time_s").mean),
        time=welch_difference(metric_values(x, "wall_time_s"), metric_values(y, "wall_time_s")),
    )


def _pp(value: float) -> str:
    return f"{100 * value:+.2f} pp"


def _ci(d: Difference, sign: int = 1) -> str:
    """The 95% CI of ``sign * d`` (sign -1 when the sentence states y − x instead of x − y)."""
    lo, hi = sorted((sign * (d.diff - d.half_width), sign * (d.diff + d.half_width)))
    return f"95% CI {100 * lo:+.2f} to {100 * hi:+.2f} pp"


def difference_clause(d: Difference | None, x: str, y: str, what: str) -> str:
    """One clause stating how x compares with y on ``what``, worded by the verdict.

    Example:
      >>> d = welch_difference([0.9, 0.91, 0.92], [0.8, 0.81, 0.82])
      >>> difference_clause(d, "lp", "ft", "accuracy on B")
      'lp is better than ft on accuracy on B by 10.00 pp (95% CI +7.73 to +12.27 pp, n=3 vs 3)'
    """
    if d is None:
        return f"{what} was not measured for {x} and {y}"
    outcome = verdict(d)
    evidence = f"({_ci(d)}, n={d.n_x} vs {d.n_y})"
    if outcome == "better":
        return f"{x} is better than {y} on {what} by {100 * d.diff:.2f} pp {evidence}"
    if outcome == "worse":
        evidence = f"({_ci(d, sign=-1)}, n={d.n_x} vs {d.n_y})"
        return f"{x} is worse than {y} on {what} by {-100 * d.diff:.2f} pp {evidence}"
    if outcome == "indistinguishable":
        return (
            f"{x} and {y} are indistinguishable on {what} ({x} − {y} = {_pp(d.diff)}, "
            f"{_ci(d)} includes 0): the data does not support a claim"
        )
    return (
        f"{x} − {y} = {_pp(d.diff)} on {what} with n={d.n_x} vs {d.n_y} seeds (< 2 on a side): "
        "the data does not support a claim"
    )


def ratio_phrase(ratio: float, what: str, note: str = "") -> str:
    """Cost of x relative to y, worded by direction.

    Example:
      >>> ratio_phrase(0.25, "training FLOPs"), ratio_phrase(1.2, "wall time", "supported")
      ('75% less training FLOPs (0.25×)', '20% more wall time (1.20×, supported)')
    """
    note = f", {note}" if note else ""
    if not math.isfinite(ratio):
        return f"an incomparable amount of {what} (a reference total of 0{note})"
    if abs(ratio - 1.0) < 0.005:
        return f"the same {what} (1.00×{note})"
    more_or_less = "less" if ratio < 1 else "more"
    return f"{100 * abs(1 - ratio):.0f}% {more_or_less} {what} ({ratio:.2f}×{note})"


def _time_phrase(c: Comparison) -> str:
    note = {
        "indistinguishable": "within run-to-run noise",
        "insufficient": "too few seeds to tell noise",
    }
    return ratio_phrase(c.time_ratio, "wall time", note.get(verdict(c.time), "supported"))


def _ratio(x: float, y: float) -> float:
    return x / y if y else math.nan


def _best(cells: list[Cell]) -> Cell | None:
    """Cell with the highest mean accuracy on B."""
    return max(cells, key=lambda c: summarize(c, "acc_b").mean, default=None)


def frozen_vs_full(cells: list[Cell]) -> list[tuple[tuple, Comparison]]:
    """Best frozen strategy vs full_ft at every (problem, data size) that has both.

    Args:
      cells: cells of the "strategies" experiment.

    Returns:
      ``(context, Comparison)`` pairs ordered by problem and data size.

    Example:
      >>> [c.x for _, c in frozen_vs_full(cells)]  # doctest: +SKIP
      ['linear_probe', 'freeze_first_k(k=2)']
    """
    return _versus(
        cells, lambda c: c.strategy in FROZEN_STRATEGIES, lambda c: c.strategy == "full_ft"
    )


def frozen_vs_trainable(cells: list[Cell]) -> list[tuple[tuple, Comparison]]:
    """Best frozen strategy vs the best strategy that trains everything, per (problem, size).

    Example:
      >>> [c.y for _, c in frozen_vs_trainable(cells)]  # doctest: +SKIP
      ['full_ft', 'lp_ft']
    """
    return _versus(
        cells,
        lambda c: c.strategy in FROZEN_STRATEGIES,
        lambda c: c.strategy not in FROZEN_STRATEGIES,
    )


def full_vs_scratch(cells: list[Cell]) -> list[tuple[tuple, Comparison]]:
    """full_ft vs scratch at every (problem, data size) that has both.

    Example:
      >>> verdict(full_vs_scratch(cells)[0][1].acc_b)  # doctest: +SKIP
      'better'
    """
    return _versus(cells, lambda c: c.strategy == "full_ft", lambda c: c.strategy == "scratch")


def _versus(cells: list[Cell], is_x, is_y) -> list[tuple[tuple, Comparison]]:
    label = labeller(cells)
    keys = sorted(
        {(context_of(c), size_order(size_of(c)), size_of(c)) for c in cells}, key=lambda k: k[:2]
    )
    out = []
    for context, _, size in keys:
        here = [c for c in cells if context_of(c) == context and size_of(c) == size]
        x, y = _best([c for c in here if is_x(c)]), _best([c for c in here if is_y(c)])
        if x is not None and y is not None:
            out.append((context, compare(x, y, label(x), label(y))))
    return out


def _by_context(pairs: list[tuple[tuple, Comparison]]) -> list[tuple[tuple, list[Comparison]]]:
    grouped: dict[tuple, list[Comparison]] = {}
    for context, comparison in pairs:
        grouped.setdefault(context, []).append(comparison)
    return list(grouped.items())


def _heading(context: tuple, multiple: bool) -> list[str]:
    return [f"*{context_label(context)}*", ""] if multiple else []


def _list_sizes(comparisons: list[Comparison]) -> str:
    return ", ".join(size_label(c.size) for c in comparisons)


def q1_lines(pairs: list[tuple[tuple, Comparison]]) -> list[str]:
    """Q1: does the best frozen strategy beat full fine-tuning, and what does it save?

    Example:
      >>> print("\\n".join(q1_lines(frozen_vs_full(cells))))  # doctest: +SKIP
    """
    if not pairs:
        return [
            "No data size has both full_ft and a frozen strategy ("
            + ", ".join(FROZEN_STRATEGIES)
            + ") in the 'strategies' runs, so Q1 cannot be answered from these results."
        ]
    groups = _by_context(pairs)
    lines = []
    for context, comparisons in groups:
        lines += _heading(context, len(groups) > 1)
        for c in comparisons:
            lines.append(
                f"- **{size_label(c.size)}**: "
                f"{difference_clause(c.acc_b, c.x, c.y, 'accuracy on B')}. "
                f"Compute vs {c.y}: {c.x} used {ratio_phrase(c.flops_ratio, 'training FLOPs')} "
                f"and {_time_phrase(c)}. "
                f"Retention: {difference_clause(c.acc_a, c.x, c.y, 'accuracy on A')}."
            )
        lines.append("")
    return lines


def q2_lines(pairs: list[tuple[tuple, Comparison]], yosinski: list[Cell]) -> list[str]:
    """Q2: does pre-training on A then fine-tuning everything beat training B from scratch?

    Example:
      >>> print("\\n".join(q2_lines(full_vs_scratch(cells), yosinski_cells)))  # doctest: +SKIP
    """
    lines = []
    groups = _by_context(pairs)
    prefix = {"better": "transfer counts", "worse": "negative transfer"}
    for context, comparisons in groups:
        lines += _heading(context, len(groups) > 1)
        for c in comparisons:
            outcome = verdict(c.acc_b)
            lines.append(
                f"- **{size_label(c.size)}**: {prefix.get(outcome, 'does not count as transfer')}: "
                f"{difference_clause(c.acc_b, c.x, c.y, 'accuracy on B')}."
            )
        counts = [c for c in comparisons if verdict(c.acc_b) == "better"]
        if counts:
            lines.append(
                f"- Transfer (full_ft > scratch, supported) at: {_list_sizes(counts)}; "
                f"not at: {_list_sizes([c for c in comparisons if c not in counts]) or 'none'}."
            )
        else:
            lines.append(
                "- full_ft never beats scratch with support, "
                "so no data size shows transfer learning."
            )
        lines.append("")
    if not pairs:
        lines += ["No data size has both full_ft and scratch in the 'strategies' runs.", ""]
    lines += yosinski_lines(yosinski)
    return lines


def yosinski_lines(cells: list[Cell]) -> list[str]:
    """AnB+ vs baseB per copied depth n, grouped by verdict, one line per dataset pair.

    Example:
      >>> yosinski_lines(yosinski_cells)  # doctest: +SKIP
      ['- Yosinski mnist → mnist: AnB+ beats baseB with support at n=1 (+1.20 pp), n=2 (+0.90 pp).']
    """
    lines = []
    for context in sorted({context_of(c) for c in cells}):
        mine = [c for c in cells if context_of(c) == context]
        base = _best([c for c in mine if c.strategy == "baseB"])
        anb_plus = sorted(
            (c for c in mine if c.strategy == "AnB+"), key=lambda c: c.params["depth"]
        )
        if base is None or not anb_plus:
            continue
        buckets: dict[str, list[str]] = {}
        for cell in anb_plus:
            d = welch_difference(metric_values(cell, "acc_b"), metric_values(base, "acc_b"))
            buckets.setdefault(verdict(d), []).append(f"n={cell.params['depth']} ({_pp(d.diff)})")
        wording = {
            "better": "beats baseB with support at",
            "worse": "is worse than baseB with support at",
            "indistinguishable": "is indistinguishable from baseB (no supported claim) at",
            "insufficient": "has fewer than 2 seeds (no supported claim) at",
        }
        parts = [f"{wording[k]} {', '.join(buckets[k])}" for k in wording if k in buckets]
        lines.append(f"- Yosinski {context_label(context)}: AnB+ " + "; ".join(parts) + ".")
    return lines + ([""] if lines else [])


def q3_lines(frozen: list[tuple[tuple, Comparison]], cells: list[Cell]) -> list[str]:
    """Q3: at which data sizes is freezing needed for the best accuracy, and at what cost?

    Args:
      frozen: comparisons from ``frozen_vs_trainable``.
      cells: cells of the "strategies" experiment.

    Returns:
      Markdown lines.

    Example:
      >>> print("\\n".join(q3_lines(frozen_vs_trainable(cells), cells)))  # doctest: +SKIP
    """
    if not frozen:
        return ["No data size has both a frozen strategy and one that trains everything."]
    label = labeller(cells)
    groups = _by_context(frozen)
    lines = [
        (
            "Best strategy that keeps something frozen vs the best one that trains everything "
            "at the end (full_ft, lp_ft, gradual_unfreeze, ...), by mean accuracy on B."
        ),
        "",
    ]
    for context, comparisons in groups:
        lines += _heading(context, len(groups) > 1)
        for c in comparisons:
            top = _best([x for x in cells if context_of(x) == context and size_of(x) == c.size])
            outcome = verdict(c.acc_b)
            flops = ratio_phrase(c.flops_ratio, "training FLOPs")
            if outcome == "better":
                text = (
                    f"freezing is needed for the best accuracy: {c.x} beats {c.y} by "
                    f"{100 * c.acc_b.diff:.2f} pp ({_ci(c.acc_b)}) and uses {flops}"
                )
            elif outcome == "worse":
                text = (
                    f"freezing is not needed: {c.y} is better by {-100 * c.acc_b.diff:.2f} pp "
                    f"({_ci(c.acc_b, sign=-1)}); freezing ({c.x}) costs that accuracy while using {flops}"
                )
            elif outcome == "indistinguishable":
                text = (
                    f"freezing is optional: {c.x} and {c.y} are indistinguishable on B "
                    f"({_pp(c.acc_b.diff)}, {_ci(c.acc_b)} includes 0), and {c.x} uses {flops}"
                )
            else:
                text = (
                    f"undecided (fewer than 2 seeds): {c.x} − {c.y} = {_pp(c.acc_b.diff)}; "
                    f"{c.x} uses {flops}"
                )
            lines.append(
                f"- **{size_label(c.size)}**: {text}. Highest mean accuracy on B: "
                f"{label(top)} ({100 * summarize(top, 'acc_b').mean:.2f}%)."
            )
        outcomes = {
            k: [c for c in comparisons if verdict(c.acc_b) == k]
            for k in ("better", "worse", "indistinguishable", "insufficient")
        }
        summary = [
            f"freezing is needed for the best accuracy at {_list_sizes(outcomes['better'])}"
            if outcomes["better"]
            else "freezing was not shown to be needed for the best accuracy at any data size",
            f"it costs supported accuracy at {_list_sizes(outcomes['worse'])}"
            if outcomes["worse"]
            else "",
            f"it makes no supported difference at {_list_sizes(outcomes['indistinguishable'])}"
            if outcomes["indistinguishable"]
            else "",
            f"too few seeds to decide at {_list_sizes(outcomes['insufficient'])}"
            if outcomes["insufficient"]
            else "",
        ]
        lines += ["- In short, " + "; ".join(s for s in summary if s) + ".", ""]
    return lines


def answer_section(strategy_cells: list[Cell], yosinski_cells: list[Cell]) -> str:
    """Markdown "Answer" section for Q1-Q3.

    Args:
      strategy_cells: cells of the "strategies" experiment.
      yosinski_cells: cells of the "yosinski" experiment (may be empty).

    Returns:
      The section text, starting with "## Answer".

    Example:
      >>> print(answer_section(strategy_cells, yosinski_cells))  # doctest: +SKIP
    """
    lines = ["## Answer", "", RULE, ""]
    lines += ["### Q1: does freezing buy anything beyond cheaper gradient descent?", ""]
    lines += q1_lines(frozen_vs_full(strategy_cells))
    lines += ["### Q2: is A-then-full-fine-tune on B transfer learning (does it beat scratch)?", ""]
    lines += q2_lines(full_vs_scratch(strategy_cells), yosinski_cells)
    lines += ["### Q3: how essential is freezing?", ""]
    lines += q3_lines(frozen_vs_trainable(strategy_cells), strategy_cells)
    return "\n".join(lines).rstrip() + "\n"
