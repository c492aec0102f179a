"""``write_report``: results.json files -> report.md + PNG plots."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from jaxtl.report.answer import answer_section
from jaxtl.report.cells import (
    CONTEXT_PARAMS,
    Cell,
    context_label,
    context_of,
    group_cells,
    labeller,
    metric_values,
    size_label,
    size_of,
    size_order,
    summarize,
    varying_params,
)
from jaxtl.report.claims import DecisionTest, problem_label
from jaxtl.report.collect import collect_runs
from jaxtl.report.families import answer_claims, problems
from jaxtl.report.literature import literature_section
from jaxtl.report.overview import (
    TITLE,
    header_section,
    source_section,
    summary_section,
    warnings_section,
)
from jaxtl.report.plots import (
    chance_level,
    plot_acc_vs_cost,
    plot_acc_vs_data,
    plot_forgetting,
    plot_heatmap,
    plot_sensitivity,
    plot_yosinski,
)
from jaxtl.report.protocol import (
    has_grid,
    lr_curve,
    lr_on_edge,
    margin_se,
    protocol_name,
    screen_margin_se,
    selection_block,
    selection_rules,
    selection_score,
    setting_label,
    validation_examples,
)
from jaxtl.report.rows import CSV_FILE, write_rows
from jaxtl.report.stats import SMALLEST_EFFECT
from jaxtl.report.tables import markdown_table, pivot, pivot_table, stats_table


def _se_label(margin: float) -> str:
    """A margin in standard errors, † when under 1 (within selection noise)."""
    if math.isinf(margin):
        return "∞"
    return f"{margin:.1f}" + (" †" if margin < 1.0 else "")


def _margin_label(cell: Cell) -> str:
    """The runner-up's margin in standard errors and, where the grid was screened, the
    screen's cut ("2.9; cut 0.0 †"): a near-tie there decided what the final choice saw."""
    margin, cut = margin_se(cell), screen_margin_se(cell)
    label = "–" if margin is None else _se_label(margin)
    return label if cut is None else f"{label}; cut {_se_label(cut)}"


def _hyperparameter_row(problem: tuple, label: str, cell: Cell) -> list[str]:
    block = selection_block(cell) or {}
    score = selection_score(cell)
    return [
        problem_label(problem),
        label,
        size_label(size_of(cell)),
        setting_label(block.get("selected")) + (" ‡" if lr_on_edge(cell) else ""),
        str(len(block.get("grid", []))),
        "–" if score is None else f"{score:.3f}",
        setting_label(block.get("runner_up")),
        _margin_label(cell),
        str(len(block.get("selection_seeds", []))),
        validation_examples(cell),
    ]


def _sensitivity_plots(tuned: list[Cell], out: Path) -> list[str]:
    lines = []
    for problem, mine in problems(tuned).items():
        label = labeller(mine)
        curves: dict[str, dict] = {}
        for cell in sorted(mine, key=lambda c: size_order(size_of(c))):
            curve = lr_curve(cell) if has_grid(cell) else None
            if curve is not None:
                curves.setdefault(size_label(size_of(cell)), {})[label(cell)] = curve
        if not curves:
            continue
        name = problem_label(problem)
        png = plot_sensitivity(
            curves,
            out / f"sensitivity_{_file_stem(name).strip('-')}.png",
            f"Sensitivity: {name}",
            chance_level(mine),
        )
        lines += [f"![sensitivity {name}]({png.name})", ""]
    return lines


def hyperparameters_section(cells: list[Cell], out: Path) -> str:
    """Chosen setting per tuned cell and a sensitivity plot per problem ("" when none is tuned).

    Example:
      >>> print(hyperparameters_section(cells, Path("out")))  # doctest: +SKIP
    """
    tuned = [c for c in cells if protocol_name(c) != "fixed"]
    if not tuned:
        return ""
    one_se = (
        "; a negative margin is the one-SE rule's pick (`protocol.select=one_se`): a smaller"
        " learning rate than the lowest loss's, behind it by less than 1 SE"
        if any((margin_se(c) or 0.0) < 0 for c in tuned)
        else ""
    )
    lines = [
        "## Hyperparameters",
        "",
        "Selection: " + "; ".join(selection_rules(tuned)) + ". The selected setting was then "
        "trained on all of each confirmation seed's training examples; only those runs meet the "
        "test set and the claims. Cells not listed used fixed hyperparameters. *Val loss*: the "
        "selected setting's validation cross-entropy pooled over the selection seeds. *Margin "
        "(SE)*: the runner-up's pooled loss minus the selected one's, in standard errors of "
        "their per-selection-seed differences; † marks a margin under 1 SE, where the "
        "runner-up is within the selection's noise and another draw of selection seeds could "
        "choose it" + one_se + ". *cut*: where the grid was screened, the same margin at the "
        "screen's cut (the best setting screened out against the last one kept, on the "
        "screening seeds); under 1 SE, which settings the other seeds trained was itself a "
        "near-tie. ‡ marks a learning rate on the edge of those tried, where the optimum may "
        "lie beyond it: the grid grows past its top edge as far as `protocol.lr_extend` "
        "allows, and by default not below its bottom one (there, validation cross-entropy on "
        "a few examples per class favours the least-trained model).",
        "",
    ]
    rows = []
    for problem, mine in problems(tuned).items():
        label = labeller(mine)
        for cell in sorted(mine, key=lambda c: (label(c), size_order(size_of(c)))):
            rows.append(_hyperparameter_row(problem, label(cell), cell))
    header = ["problem", "strategy", "data", "selected", "grid points", "val loss"]
    header += ["runner-up", "margin (SE)", "selection seeds", "validation examples per seed"]
    lines += [
        markdown_table(header, rows),
        "",
        (
            "Sensitivity: validation cross-entropy pooled over the selection seeds (top) and mean "
            "test accuracy of the grid models over the selection seeds (bottom, trained on the 80% "
            "splits) vs learning rate, over the screening seeds where the grid was screened (the "
            "seeds every point trained on); at each learning rate the other knobs take the "
            "setting with the lowest validation loss."
        ),
        "",
    ]
    return "\n".join(lines + _sensitivity_plots(tuned, out))


def _file_stem(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)


def yosinski_section(cells: list[Cell], out: Path) -> str:
    """One curve plot and one acc_b-by-depth table per (dataset_a, dataset_b) pair.

    Example:
      >>> print(yosinski_section(yosinski_cells, Path("out")))  # doctest: +SKIP
    """
    if not cells:
        return ""
    contexts = sorted({context_of(c) for c in cells})
    pairs = [(dict(c)["dataset_a"], dict(c)["dataset_b"]) for c in contexts]
    lines = [
        "## Yosinski transfer curves",
        "",
        (
            "Accuracy on B after copying the first n layers (AnB/AnB+: from A, BnB/BnB+: from B; "
            "+ = fine-tuned, otherwise frozen); baseB trains B from scratch."
        ),
        "",
    ]
    for context, pair in zip(contexts, pairs, strict=True):
        model = dict(context).get("model")
        stem = "_".join(pair + ((model,) if pairs.count(pair) > 1 and model else ()))
        mine = [c for c in cells if context_of(c) == context]
        title = context_label(context)
        png = plot_yosinski(
            mine, out / f"yosinski_{_file_stem(stem)}.png", f"Yosinski curves: {title}"
        )
        label = labeller(mine, axes=("depth",))
        ordered = sorted(mine, key=lambda c: c.params.get("depth", float("inf")))
        lines += [f"### {title}", "", f"![Yosinski curves {title}]({png.name})", ""]
        lines += [
            pivot_table(
                ordered,
                label,
                lambda c: c.params.get("depth"),
                "strategy",
                col_name=lambda d: "baseline" if d is None else f"n={d}",
            ),
            "",
        ]
    return "\n".join(lines)


def strategies_sections(cells: list[Cell], out: Path) -> str:
    """Accuracy vs data size, forgetting and compute plots of the "strategies" experiment.

    Example:
      >>> print(strategies_sections(strategy_cells, Path("out")))  # doctest: +SKIP
    """
    if not cells:
        return ""
    label = labeller(cells)
    contexts = sorted({context_of(c) for c in cells})
    lines = [
        "## Accuracy vs target-data size",
        "",
        f"![accuracy vs data]({plot_acc_vs_data(cells, out / 'acc_vs_data.png').name})",
        "",
    ]
    for context in contexts:
        mine = sorted(
            (c for c in cells if context_of(c) == context), key=lambda c: size_order(size_of(c))
        )
        if len(contexts) > 1:
            lines += [f"### {context_label(context)}", ""]
        lines += [
            pivot_table(
                mine, label, size_of, "strategy \\ examples per class", col_name=size_label
            ),
            "",
        ]
    with_a = [c for c in cells if metric_values(c, "acc_a")]
    if with_a:
        lines += [
            "## Forgetting of A vs accuracy on B",
            "",
            f"![forgetting]({plot_forgetting(with_a, out / 'forgetting.png').name})",
            "",
        ]
    flops_png = plot_acc_vs_cost(cells, out / "acc_vs_flops.png", "train_flops", "training FLOPs")
    time_png = plot_acc_vs_cost(cells, out / "acc_vs_time.png", "wall_time_s", "wall time (s)")
    lines += [
        "## Accuracy vs compute",
        "",
        f"![accuracy vs FLOPs]({flops_png.name})",
        f"![accuracy vs wall time]({time_png.name})",
        "",
    ]
    return "\n".join(lines)


def surgical_section(cells: list[Cell], out: Path) -> str:
    """acc_b by distribution shift x fine-tuned group (plus full_ft / linear_probe columns).

    Example:
      >>> print(surgical_section(surgical_cells, Path("out")))  # doctest: +SKIP
    """
    if not cells:
        return ""
    multiple = len({context_of(c) for c in cells}) > 1
    extra = sorted(varying_params(cells) - {"shift", "tuned_group"} - set(CONTEXT_PARAMS))

    def row_of(cell: Cell) -> str:
        parts = [context_label(context_of(cell))] if multiple else []
        parts.append(str(cell.params["shift"]))
        parts += [f"{p}={cell.params[p]}" for p in extra if p in cell.params]
        return ", ".join(parts)

    def col_of(cell: Cell) -> str:
        return str(cell.params["tuned_group"]) if cell.strategy == "surgical" else cell.strategy

    ordered = sorted(cells, key=lambda c: (c.strategy != "surgical", row_of(c), col_of(c)))
    rows, cols, grid = pivot(ordered, row_of, col_of)
    values = np.array(
        [
            [
                100 * summarize(grid[(r, c)], "acc_b").mean if (r, c) in grid else np.nan
                for c in cols
            ]
            for r in rows
        ]
    )
    png = plot_heatmap(
        values, rows, cols, out / "surgical.png", "Surgical fine-tuning: accuracy on B (%)"
    )
    return "\n".join(
        [
            "## Surgical fine-tuning",
            "",
            (
                "Accuracy on B (%) when only one group is fine-tuned, per distribution shift; "
                "full_ft and linear_probe for reference."
            ),
            "",
            f"![surgical]({png.name})",
            "",
            pivot_table(ordered, row_of, col_of, "shift \\ tuned group"),
            "",
        ]
    )


def cross_domain_section(cells: list[Cell]) -> str:
    """One acc_b table (strategy x data size) per (dataset_a, dataset_b) pair.

    Example:
      >>> print(cross_domain_section(cross_domain_cells))  # doctest: +SKIP
    """
    if not cells:
        return ""
    label = labeller(cells)
    lines = [
        "## Cross-domain transfer",
        "",
        "Accuracy on B (%) per strategy and examples per class.",
        "",
    ]
    for context in sorted({context_of(c) for c in cells}):
        mine = sorted(
            (c for c in cells if context_of(c) == context), key=lambda c: size_order(size_of(c))
        )
        lines += [
            f"### {context_label(context)}",
            "",
            pivot_table(
                mine, label, size_of, "strategy \\ examples per class", col_name=size_label
            ),
            "",
        ]
    return "\n".join(lines)


def results_section(cells: list[Cell]) -> str:
    """ "## Results": per-experiment tables of every metric, mean ± 95% CI over the n seeds.

    Example:
      >>> print(results_section(cells))  # doctest: +SKIP
    """
    lines = ["## Results", "", "Mean ± 95% CI over n seeds (t-distribution); – = not measured.", ""]
    for experiment in sorted({c.experiment for c in cells}):
        lines += [
            f"### {experiment}",
            "",
            stats_table([c for c in cells if c.experiment == experiment]),
            "",
        ]
    return "\n".join(lines)


def write_report(
    results_dir: str | Path,
    out_dir: str | Path | None = None,
    test: DecisionTest = "t",
    smallest_effect: float = SMALLEST_EFFECT,
) -> Path:
    """Read every ``results.json`` under ``results_dir``; write ``report.md``, PNG plots and
    ``results.csv`` (one row per run the report uses, see ``jaxtl.report.rows``).

    Hidden directories (``.stale/``) are not read; seeds of one cell made with other settings
    than its most recent ones are left out, with a warning in the report and on stderr.

    Args:
      results_dir: directory searched recursively for ``results.json`` (the schema is in
        ``jaxtl.report.results``).
      out_dir: where to write the report, plots and csv; defaults to ``results_dir``.
      test: which p-value decides a claim: "t" (paired t-test, default) or "sign_flip" (exact
        sign-flip permutation test; needs at least 6 seeds to go below 0.05).
      smallest_effect: the smallest effect of interest (fraction of accuracy) a supported
        claim's 95% CI must lie beyond (default ``stats.SMALLEST_EFFECT``: none).

    Returns:
      Path of the written ``report.md``.

    Raises:
      ResultsError: no results found, or a record is malformed (one line naming file and key).

    Example:
      >>> path = write_report("out/sweep")  # doctest: +SKIP
      >>> print(path.read_text()[:32])  # doctest: +SKIP
      # jaxtl transfer-learning report
    """
    runs = collect_runs(results_dir)
    out = Path(results_dir if out_dir is None else out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cells = group_cells(runs.records)
    claims = answer_claims(cells, test, smallest_effect)

    def of(experiment: str) -> list[Cell]:
        return [c for c in cells if c.experiment == experiment]

    sections = [
        TITLE + "\n",
        warnings_section(runs),
        summary_section(runs, cells, claims),
        results_section(cells),
        header_section(runs),
        source_section(runs.records),
        answer_section(cells, test, claims, smallest_effect),
        literature_section(cells, test, smallest_effect),
        hyperparameters_section(cells, out),
        yosinski_section(of("yosinski"), out),
        strategies_sections(of("strategies"), out),
        surgical_section(of("surgical"), out),
        cross_domain_section(of("cross_domain")),
    ]
    write_rows(runs.records, out / CSV_FILE)
    path = out / "report.md"
    path.write_text("\n".join(s for s in sections if s))
    return path
