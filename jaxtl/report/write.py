"""``write_report``: results.json files -> report.md + PNG plots."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from jaxtl.report.answer import answer_claims, answer_section, problems
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
    grid_values,
    has_grid,
    lr_curve,
    protocol_name,
    selected_setting,
    selection_margin,
    selection_rules,
    setting_label,
    validation_examples,
)
from jaxtl.report.rows import CSV_FILE, write_rows
from jaxtl.report.tables import markdown_table, pivot, pivot_table, stats_table


def _margin_label(cell: Cell) -> str:
    """The selection margin in pp, with † when it is at most one validation prediction's worth."""
    margin = selection_margin(cell)
    if margin is None:
        return "–"
    counts = [r["protocol"].get("val_examples") for r in cell.runs]
    counts = [min(c) if isinstance(c, list) else c for c in counts]
    one_prediction = 100.0 / max(counts) / len(cell.runs) if counts and all(counts) else None
    close = one_prediction is not None and 100 * margin <= one_prediction + 1e-9
    return f"{100 * margin:.1f}" + (" †" if close else "")


def hyperparameters_section(cells: list[Cell], out: Path) -> str:
    """Chosen setting per tuned cell and a sensitivity plot per problem ("" when none is tuned).

    Example:
      >>> print(hyperparameters_section(cells, Path("out")))  # doctest: +SKIP
    """
    tuned = [c for c in cells if protocol_name(c) != "fixed"]
    if not tuned:
        return ""
    lines = [
        "## Hyperparameters",
        "",
        "Selection: " + "; ".join(selection_rules(tuned)) + ". The selected setting was "
        "retrained on all of the cell's training examples; its test accuracy is the one reported "
        "everywhere else. Cells not listed used fixed hyperparameters. *Margin*: the selected "
        "setting's mean validation accuracy minus the runner-up's, in pp; one validation "
        "prediction moves a seed's accuracy by 100/(validation examples) pp and the mean by that "
        "over the number of seeds, so a margin of at most one prediction's worth (marked †) is "
        "one prediction away from a tie or another choice.",
        "",
    ]
    rows = []
    for problem, mine in problems(tuned).items():
        label = labeller(mine)
        for cell in sorted(mine, key=lambda c: (label(c), size_order(size_of(c)))):
            rows.append(
                [
                    problem_label(problem),
                    label(cell),
                    size_label(size_of(cell)),
                    setting_label(selected_setting(cell)),
                    str(len(grid_values(cell, "val_acc"))),
                    str(len(cell.runs)),
                    validation_examples(cell),
                    _margin_label(cell),
                ]
            )
    header = ["problem", "strategy", "data", "selected", "grid points", "seeds"]
    lines += [
        markdown_table([*header, "validation examples per seed", "margin (pp)"], rows),
        "",
        (
            "Sensitivity: mean over seeds of validation (solid) and test (dashed) accuracy on "
            "the 80% split vs learning rate; at each learning rate the other knobs take the "
            "setting with the highest mean validation accuracy (the best over them)."
        ),
        "",
    ]
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
    return "\n".join(lines)


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
    results_dir: str | Path, out_dir: str | Path | None = None, test: DecisionTest = "t"
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
    claims = answer_claims(cells, test)

    def of(experiment: str) -> list[Cell]:
        return [c for c in cells if c.experiment == experiment]

    sections = [
        TITLE + "\n",
        warnings_section(runs),
        summary_section(runs, cells, claims),
        results_section(cells),
        header_section(runs),
        source_section(runs.records),
        answer_section(cells, test, claims),
        literature_section(cells, test),
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
