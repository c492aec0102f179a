"""The report's opening: warnings, a plain summary, what was run, and the source model.

Everything here is read from the records; a sentence whose fields older files lack is left out.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from jaxtl.report.cells import (
    SIZE_PARAM,
    Cell,
    labeller,
    options_text,
    size_label,
    size_of,
    size_order,
    summarize,
)
from jaxtl.report.claims import Claim, highest_mean, problem_label
from jaxtl.report.collect import Runs
from jaxtl.report.families import QUESTIONS, family_counts, problems
from jaxtl.report.tables import seed_list
from jaxtl.report.task import (
    a_description,
    b_name,
    b_test_set,
    b_test_set_text,
    input_shape,
    num_classes_b,
    shape_text,
)

TITLE = "# jaxtl transfer-learning report"


def _join(values) -> str:
    return ", ".join(str(v) for v in values)


def _distinct(values) -> list:
    """Values in first-seen order, without repeats and without None."""
    return [v for v in dict.fromkeys(values) if v is not None]


def strategy_names(records: Sequence[dict]) -> list[str]:
    """Strategies with the options each run changed: "full_ft", "lp_ft (lp_fraction=0.2)".

    Example:
      >>> strategy_names([{"strategy": "lp_ft", "options": {"lp_fraction": 0.2}}])
      ['lp_ft (lp_fraction=0.2)']
    """
    names = {
        r["strategy"] + (f" ({options_text(r['options'])})" if r.get("options") else "")
        for r in records
    }
    return sorted(names)


def warnings_section(runs: Runs) -> str:
    """ "## Warnings": one line per cell whose runs were not all made with the same settings.

    Example:
      >>> warnings_section(Runs([], [], []))
      ''
    """
    if not runs.left_out:
        return ""
    lines = [
        "## Warnings",
        "",
        (
            "Seeds of one cell made with different settings are not pooled: each cell keeps the "
            "runs of its most recent settings, and the runs below are left out of every number "
            "in this report and of results.csv."
        ),
        "",
    ]
    lines += [f"- {line}" for line in runs.warnings()]
    return "\n".join(lines) + "\n"


def _transfer_lines(records: Sequence[dict]) -> list[str]:
    """ "A = ... → B = ... (2 classes), input 32×32×3", one per distinct transfer task."""
    lines = []
    for a, b, classes, shape in _distinct(
        (a_description(r), b_name(r), num_classes_b([r]), input_shape(r)) for r in records
    ):
        text = " → ".join(part for part in (a and f"A = {a}", b and f"B = {b}") if part)
        if not text:
            continue
        text += f" ({classes} classes)" if classes else ""
        text += f", input {shape_text(shape)}" if shape else ""
        lines.append(f"- **Task**: {text}.")
    return lines


def _test_set_lines(records: Sequence[dict]) -> list[str]:
    lines = []
    for b, _, text in _distinct((b_name(r), b_test_set(r), b_test_set_text(r)) for r in records):
        if text is not None:
            lines.append(f"- **B's test set**{f' ({b})' if b else ''}: {text}.")
    return lines


def _best_lines(cells: Sequence[Cell]) -> list[str]:
    """Per problem: the strategy with the highest mean accuracy on B at each data size."""
    grouped = problems(cells)
    lines = []
    for problem, mine in grouped.items():
        label = labeller(mine)
        sizes = sorted({size_of(c) for c in mine}, key=size_order)
        parts = []
        for size in sizes:
            here = [c for c in mine if size_of(c) == size]
            top = summarize(highest_mean(here), "acc_b").mean
            # Equal means are a tie, not a win for whichever cell sorts first.
            tied = [label(c) for c in here if math.isclose(summarize(c, "acc_b").mean, top)]
            names = tied[0] if len(tied) == 1 else f"{', '.join(tied[:-1])} and {tied[-1]} (tied)"
            at = f" at {size_label(size)}" if len(sizes) > 1 or size is not None else ""
            parts.append(f"{names}, {100 * top:.2f}%{at}")
        classes = num_classes_b(r for c in mine for r in c.runs)
        chance = f" (chance: {100 / classes:.2f}%)" if classes else ""
        where = f" ({problem_label(problem)})" if len(grouped) > 1 else ""
        lines.append(f"- **Highest mean accuracy on B**{where}: {'; '.join(parts)}{chance}.")
    return lines


def _claims_line(cells: Sequence[Cell], claims: Sequence[Claim]) -> str:
    """How many primary claims each question's family supports (Holm within each family)."""
    most_seeds = max(len(c.runs) for c in cells)
    counts = family_counts(claims)
    if not any(tested for _, tested in counts.values()):
        if most_seeds < 2:
            return (
                "- **Claims**: none tested: every cell has a single seed, and a comparison needs "
                "at least 2 seeds on each side."
            )
        return "- **Claims**: the runs hold no comparison the Answer tests (see Answer)."
    parts = [
        f"{q.key} {counts[q.key][0]} of {counts[q.key][1]}" for q in QUESTIONS if counts[q.key][1]
    ]
    return (
        f"- **Claims supported** (primary, Holm within each question's family): "
        f"{', '.join(parts)}; each claim that is not supported states the smallest effect "
        "this run could have detected (see Answer; the Literature check is exploratory)."
    )


def summary_section(runs: Runs, cells: Sequence[Cell], claims: Sequence[Claim]) -> str:
    """ "## Summary": what ran on which task, B's test set, the best strategy, how many claims
    hold, in plain words.

    Args:
      runs: the collected runs.
      cells: their cells.
      claims: the Answer's claims (``answer.answer_claims``).

    Returns:
      The section text.

    Example:
      >>> print(summary_section(runs, cells, answer_claims(cells)))  # doctest: +SKIP
    """
    records = runs.records
    seeds = sorted({r["seed"] for r in records})
    strategies = strategy_names(records)
    what = (
        f"- **What ran**: {len(records)} run{'s' * (len(records) != 1)} of "
        f"{len(strategies)} strateg{'ies' if len(strategies) != 1 else 'y'} "
        f"({_join(strategies)}), {len(seeds)} reported seed{'s' * (len(seeds) != 1)} "
        f"({seed_list(seeds)}), "
        f"{_protocol_short(records)}."
    )
    lines = ["## Summary", "", what]
    lines += _transfer_lines(records) + _test_set_lines(records) + _best_lines(cells)
    lines.append(_claims_line(cells, claims))
    if runs.left_out:
        left = sum(len(x.runs) for x in runs.left_out)
        lines.append(
            f"- **Left out**: {left} run{'s' * (left != 1)} made with other settings than "
            "the rest of their cell (see Warnings)."
        )
    return "\n".join(lines) + "\n"


def _protocol_short(records: Sequence[dict]) -> str:
    names = {r["protocol"]["name"] for r in records}
    if names == {"fixed"}:
        return "fixed hyperparameters"
    chosen_on = sorted({s for r in records for s in r["protocol"].get("selection_seeds", [])})
    tuned = (
        f"hyperparameters tuned per cell by validation loss on selection seeds "
        f"{seed_list(chosen_on)}, which no reported seed includes"
    )
    if names == {"tuned"}:
        return tuned
    return f"{tuned} (fixed hyperparameters for some cells)"


def protocol_line(records: list[dict]) -> str:
    """How hyperparameters were chosen, from the records' ``protocol`` blocks.

    Example:
      >>> protocol_line([{"protocol": {"name": "fixed"}}])[:21]
      'fixed hyperparameters'
    """
    names = [r["protocol"]["name"] for r in records]
    fixed = (
        "fixed hyperparameters (the configured learning rate and strategy options for every "
        "cell; no per-strategy tuning)"
    )
    if all(n == "fixed" for n in names):
        return fixed
    rules = sorted({r["protocol"]["selection"] for r in records if "selection" in r["protocol"]})
    tuned = "tuned per cell: " + "; ".join(rules) + " (see Hyperparameters)"
    if all(n == "tuned" for n in names):
        return tuned
    return f"mixed: {names.count('tuned')} runs {tuned}; {names.count('fixed')} runs with {fixed}"


def header_section(runs: Runs) -> str:
    """ "## What was run": runs, experiments, strategies, A, B, models, input, sizes, seeds,
    protocol, devices and dates, from the records themselves.

    Example:
      >>> print(header_section(collect_runs("out")))  # doctest: +SKIP
    """
    records = runs.records
    experiments: dict[str, int] = {}
    for r in records:
        experiments[r["experiment"]] = experiments.get(r["experiment"], 0) + 1
    sizes = sorted(
        {r["params"][SIZE_PARAM] for r in records if SIZE_PARAM in r["params"]}, key=size_order
    )
    dates = sorted(r["finished_at"][:10] for r in records)
    lines = ["## What was run", ""]
    count = f"- **Runs**: {len(records)}"
    notes = []
    if runs.duplicates:
        notes.append(
            f"{len(runs.duplicates)} duplicate results.json ignored; the latest of each "
            "(cell, seed) is kept"
        )
    if runs.left_out:
        left = sum(len(x.runs) for x in runs.left_out)
        notes.append(f"{left} made with other settings left out, see Warnings")
    lines.append(count + (f" ({'; '.join(notes)})" if notes else ""))
    lines.append(
        "- **Experiments**: "
        + _join(f"{e} ({n} run{'s' if n != 1 else ''})" for e, n in sorted(experiments.items()))
    )
    lines.append("- **Strategies**: " + _join(strategy_names(records)))
    listed = (
        ("A (source)", sorted(set(_distinct(a_description(r) for r in records)))),
        ("B (target)", sorted(set(_distinct(b_name(r) for r in records)))),
        (
            "Models",
            sorted({str(r["params"]["model"]) for r in records if r["params"].get("model")}),
        ),
        ("Input", sorted({shape_text(s) for s in _distinct(input_shape(r) for r in records)})),
    )
    lines += [f"- **{title}**: {_join(values)}" for title, values in listed if values]
    if sizes:
        lines.append("- **Target data sizes**: " + _join(size_label(s) for s in sizes))
    lines.append("- **Seeds**: " + _join(sorted({r["seed"] for r in records})))
    chosen_on = sorted({s for r in records for s in r["protocol"].get("selection_seeds", [])})
    if chosen_on:
        lines.append(
            f'- **Selection seeds**: {_join(chosen_on)} (hyperparameters and the "best" '
            "strategies are chosen on these; the claims use the reported seeds only)"
        )
    lines.append("- **Protocol**: " + protocol_line(records))
    lines.append("- **Devices**: " + _join(sorted({r["device"] for r in records})))
    lines.append(
        f"- **Finished**: {dates[0]} to {dates[-1]}"
        if dates[0] != dates[-1]
        else f"- **Finished**: {dates[0]}"
    )
    return "\n".join(lines) + "\n"


def _input_lines(block: dict, runs: list[dict]) -> list[str]:
    """The input these runs fed the model, next to the checkpoint's nominal one."""
    shapes = _distinct(input_shape(r) for r in runs)
    nominal = block.get("input_shape")
    nominal_text = f"the checkpoint's nominal input: {shape_text(nominal)}" if nominal else ""
    if len(shapes) == 1:
        differs = nominal and tuple(nominal) != shapes[0]
        return [
            f"input in these runs: {shape_text(shapes[0])}"
            + (f" ({nominal_text})" if differs else "")
        ]
    return [f"{nominal_text} (the runs' input size is not recorded)"] if nominal_text else []


def source_section(records: list[dict]) -> str:
    """The checkpoint files transfers started from (the runs' ``source_model`` blocks): file,
    model, the input the runs used, what was loaded and left out, and whether retention of A
    was measured; "" when every source model was trained on A here.

    Example:
      >>> source_section([{"metrics": {}}])
      ''
    """
    sources: dict[tuple[str, str], tuple[dict, list[dict]]] = {}
    for r in records:
        block = r.get("source_model")
        if block:
            key = (block["spec"], block.get("digest", ""))
            sources.setdefault(key, (block, []))[1].append(r)
    if not sources:
        return ""
    lines = ["## Source model", ""]
    for block, runs in sources.values():
        summary = block["summary"].splitlines()
        # The checkpoint's own summary names the input it was made for; a run may feed it
        # another size (data.resize), so the input is stated from the runs instead.
        summary[:1] = [re.sub(r", input \([^)]*\)", "", line) for line in summary[:1]]
        lines += [f"- {line}" for line in summary[:1] + _input_lines(block, runs) + summary[1:]]
        if block.get("digest"):
            lines.append(f"- file content hash {block['digest']}")
        if all(r["metrics"].get("acc_a") is None for r in runs):
            lines.append(
                "- retention of A not measured (checkpoint source, no A data); give A's data"
                " (data.a, labelled in the checkpoint's classes) to measure it"
            )
        lines += [
            "",
            f"<details><summary>{len(block['loaded'])} checkpoint keys loaded</summary>",
            "",
            ", ".join(f"`{k}`" for k in block["loaded"]),
            "",
            "</details>",
            "",
        ]
    return "\n".join(lines)
