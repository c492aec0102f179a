"""The "Answer" section: Q1-Q3, each with its declared family of primary claims, per problem.

The claims and their families are built in ``jaxtl.report.families`` (Holm within each
question's family); how a claim is worded is ``jaxtl.report.wording``. Everything outside the
three families (cost notes, where model families disagree) is labelled exploratory.
"""

from __future__ import annotations

from collections.abc import Sequence

from jaxtl.report.cells import FROZEN_STRATEGIES, Cell, labeller, size_label, size_of, summarize
from jaxtl.report.claims import Claim, DecisionTest, highest_mean, problem_label, without_model
from jaxtl.report.families import (
    QUESTIONS,
    YOSINSKI,
    answer_claims,
    family_counts,
    is_peft,
    is_yosinski,
    problems,
    yosinski_name,
)
from jaxtl.report.peft import peft_lines
from jaxtl.report.stats import ALPHA, POWER, SMALLEST_EFFECT
from jaxtl.report.wording import (
    METRIC_NAMES,
    claim_clause,
    cost_phrase,
    detectable,
    evidence,
    flops_phrase,
    marks,
    picked_note,
    pp,
    ratio_phrase,
    short_outcome,
)

__all__ = [
    "YOSINSKI",
    "answer_claims",
    "answer_section",
    "evidence",
    "is_yosinski",
    "marks",
    "problems",
    "ratio_phrase",
    "rule_lines",
]


# ---- the rule -----------------------------------------------------------------------------------


def _tested(m: int) -> str:
    return f"{m} tested claim{'s' * (m != 1)}"


def _beyond(smallest_effect: float) -> str:
    """How far the interval must reach: past 0, or past the smallest effect of interest."""
    if smallest_effect == 0.0:
        return "the 95% CI excludes 0"
    return (
        f"the 95% CI lies wholly beyond ±{100 * smallest_effect:.2g} pp, the smallest effect of "
        "interest this report was written with (a Holm-significant difference whose interval "
        "reaches inside it is not supported, and says so)"
    )


def _mde_beyond(smallest_effect: float) -> str:
    if smallest_effect == 0.0:
        return ""
    return f" and with its 95% CI beyond ±{100 * smallest_effect:.2g} pp"


def rule_lines(
    test: DecisionTest, counts: dict[str, tuple[int, int]], smallest_effect: float = SMALLEST_EFFECT
) -> list[str]:
    """The decision rule: the declared families and their sizes, support, the minimum
    detectable effect, how "best" is picked, the marks, and what is exploratory.

    Args:
      test: which p-value decides ("t" or "sign_flip").
      counts: ``families.family_counts`` of the Answer's claims.
      smallest_effect: the smallest effect of interest (fraction of accuracy).

    Example:
      >>> rule_lines("t", {"Q1": (1, 4), "Q2": (0, 2), "Q3": (0, 2)})[0]
      'How claims are decided:'
    """
    families = "; ".join(
        f"**{q.key}**: {q.family} — {_tested(counts.get(q.key, (0, 0))[1])}" for q in QUESTIONS
    )
    decider = (
        "the paired t-test p"
        if test == "t"
        else "the exact sign-flip p (the paired t-test p when cells are unpaired)"
    )
    sign_flip = (
        "The exact sign-flip permutation p (all 2^n sign patterns of the per-seed differences) "
        "is shown as a distribution-free check; it cannot fall below 2/2^n, so it does not decide."
        if test == "t"
        else "With n seeds the exact sign-flip p cannot fall below 2/2^n (0.0625 at 5 seeds)."
    )
    return [
        "How claims are decided:",
        "",
        (
            "- **Declared families.** The primary claims form one family per question, fixed by "
            f"which cells are present before any number is read: {families}. Holm runs within "
            "each family."
        ),
        (
            f"- **Supported** when {decider}, Holm-adjusted within its family, is below {ALPHA:g} "
            f"and {_beyond(smallest_effect)}. Differences are paired by seed (every strategy of a "
            "seed shares its few-shot subset, source model and head initialisation): the mean "
            "per-seed difference with its 95% paired t interval. Cells that share fewer than 2 "
            "seeds fall back to Welch's unpaired interval and say so; with fewer than 2 seeds no "
            f"claim is made. {sign_flip}"
        ),
        (
            "- **Not supported means not shown, not absent.** A claim that is not supported "
            "states its minimum detectable effect: the smallest true difference its two-sided "
            "paired t test (its n seeds, the observed SD of its per-seed differences) would "
            "detect with "
            f"{100 * POWER:.0f}% power at α/m, {ALPHA:g} over its family's size m (Holm's first "
            "and strictest step: a p below it is supported whatever the family's other p-values)"
            f"{_mde_beyond(smallest_effect)}, from the noncentral t distribution."
        ),
        (
            '- **"Best"** (the best frozen strategy, the best one that trains everything, the '
            "best depth) is the candidate with the lowest validation cross-entropy pooled over the "
            "selection seeds: chosen without the reported (confirmation) seeds or the test set, so "
            "the claim about it is tested on data the choice never saw. Where there is no "
            "validation loss (fixed protocol) the highest mean test accuracy picks; the claim says "
            "so, and that choice favours the picked side."
        ),
        (
            f"- **Marks.** A supported claim is *fragile* when its adjusted p is above "
            f"{ALPHA / 2:g} (within a factor 2 of {ALPHA:g}) or the end of its CI nearer 0 is "
            "within 1 pp of 0. Under the tuned protocol it is *robust* when its direction holds at "
            "every grid point (each grid setting of one side against the other side's selected "
            "setting: test accuracy of the grid models, trained on the 80% splits of the selection "
            "seeds, mean over the selection seeds, paired by selection seed, which both cells "
            "share) and *setting-dependent* otherwise."
        ),
        (
            "- **Exploratory**: everything outside the three families — compute and wall-time "
            "notes (a wall-time difference is called supported when its uncorrected paired 95% CI "
            "excludes 0), where model families disagree, and the Literature check — belongs to no "
            "declared family; read it as leads, not findings. pp = percentage points."
        ),
        "",
    ]


# ---- per question -------------------------------------------------------------------------------


def _of(claims: list[Claim], question: str, metric: str = "acc_b") -> list[Claim]:
    return [c for c in claims if c.question == question and c.metric == metric]


def _slot_list(claims: list[Claim]) -> str:
    return ", ".join(c.slot for c in claims)


def q1_lines(claims: list[Claim], yosinski: bool) -> list[str]:
    """Q1 for one problem: does the best frozen strategy beat full fine-tuning, on B and on A,
    and what does it save?"""
    main = _of(claims, "Q1")
    if not main:
        if yosinski:
            return ["No copied depth has both AnB and AnB+, so Q1 cannot be answered here.", ""]
        return [
            "No data size has both full_ft and a frozen strategy ("
            + ", ".join(FROZEN_STRATEGIES)
            + "), so Q1 cannot be answered from these results.",
            "",
        ]
    retention = {c.slot: c for c in _of(claims, "Q1", "acc_a")}
    lines = (
        ["AnB (copied layers frozen) vs AnB+ (copied layers fine-tuned) at each copied depth n."]
        if yosinski
        else []
    )
    for c in main:
        x, y = c.cells
        lines.append(
            f"- **{c.slot}**: {claim_clause(c)}{picked_note(c)}. Retention: "
            f"{claim_clause(retention.get(c.slot), 'accuracy on A')}. Compute vs {c.y} "
            f"(exploratory): {c.x} used {cost_phrase(x, y)}."
        )
    return lines + [""]


def q2_lines(claims: list[Claim], yosinski: bool) -> list[str]:
    """Q2 for one problem: does pre-training on A then fine-tuning everything beat training on
    B alone?"""
    main = _of(claims, "Q2")
    if not main:
        what = (
            "copied depth has both AnB+ and baseB"
            if yosinski
            else "data size has both full_ft and scratch"
        )
        return [f"No {what}, so Q2 cannot be answered here.", ""]
    prefix = {
        "better": "transfer counts: ",
        "worse": "negative transfer: ",
        "not supported": "transfer ",
    }
    lines = [
        f"- **{c.slot}**: {prefix.get(c.decision, '')}{claim_clause(c)}{picked_note(c)}."
        for c in main
    ]
    counts = [c for c in main if c.decision == "better"]
    untested = [c for c in main if c.decision == "not enough seeds"]
    rest = [c for c in main if c not in counts and c not in untested]
    pair = main[0].role.replace(" vs ", " > ")
    where = "copied depth" if yosinski else "data size"
    if counts:
        summary = (
            f"Transfer ({pair}, supported) at: {_slot_list(counts)}; "
            f"not supported at: {_slot_list(rest) or 'none'}"
        )
    else:
        summary = f"{pair} is supported at no {where}"
        if rest:
            summary += "; each line above states the smallest gain this run could have detected"
    if untested:
        summary += f"; too few seeds for a test at: {_slot_list(untested)}"
    lines.append(f"- {summary}.")
    return lines + [""]


def _q3_text(c: Claim, flops: str) -> str:
    t = c.test
    if c.decision == "better":
        return (
            f"freezing is needed for the best accuracy: {c.x} beats {c.y} by "
            f"{100 * t.estimate:.2f} pp {evidence(c)}{marks(c)} and uses {flops}"
        )
    if c.decision == "worse":
        return (
            f"freezing is not needed: {c.y} is better by {-100 * t.estimate:.2f} pp "
            f"{evidence(c, sign=-1)}{marks(c)}; freezing ({c.x}) costs that accuracy "
            f"while using {flops}"
        )
    if c.decision == "not supported":
        return (
            f"not supported either way: {c.x} − {c.y} = {pp(t.estimate)} on B "
            f"{evidence(c)}; {detectable(c)}; {c.x} uses {flops}"
        )
    return f"undecided (not enough seeds): {c.x} − {c.y} = {pp(t.estimate)}; {c.x} uses {flops}"


def q3_lines(claims: list[Claim], cells: list[Cell], yosinski: bool) -> list[str]:
    """Q3 for one problem: where is freezing needed for the best accuracy, and at what cost?"""
    main = _of(claims, "Q3")
    if not main:
        return ["No data size has both a frozen strategy and one that trains everything.", ""]
    label = yosinski_name if yosinski else labeller(cells)
    lines = []
    for c in main:
        x, y = c.cells
        here = (
            [cell for cell in cells if cell.strategy in ("AnB", "AnB+", "baseB")]
            if yosinski
            else [cell for cell in cells if size_label(size_of(cell)) == c.slot]
        )
        top = highest_mean(here)
        lines.append(
            f"- **{c.slot}**: {_q3_text(c, flops_phrase(x, y))}{picked_note(c)}. Highest mean "
            f"test accuracy on B (descriptive): {label(top)} "
            f"({100 * summarize(top, 'acc_b').mean:.2f}%)."
        )
    by = {
        k: [c for c in main if c.decision == k]
        for k in ("better", "worse", "not supported", "not enough seeds")
    }
    summary = [
        f"freezing is needed for the best accuracy at {_slot_list(by['better'])}"
        if by["better"]
        else "that freezing is needed for the best accuracy is supported nowhere",
        f"it costs supported accuracy at {_slot_list(by['worse'])}" if by["worse"] else "",
        f"neither direction is supported at {_slot_list(by['not supported'])}"
        if by["not supported"]
        else "",
        f"too few seeds to decide at {_slot_list(by['not enough seeds'])}"
        if by["not enough seeds"]
        else "",
    ]
    return lines + ["- In short, " + "; ".join(s for s in summary if s) + ".", ""]


def model_family_lines(claims: list[Claim]) -> list[str]:
    """Where the same problem run with different models reaches different decisions.

    Exploratory: two decisions that differ are not a tested difference between the models.

    Example:
      >>> model_family_lines(answer_claims(cells))  # doctest: +SKIP
      ['- strategies: a → b, Q2 full_ft vs scratch at 5/class: cnn: full_ft better (+4.00 pp); ...']
    """
    groups: dict[tuple, dict[str, list[Claim]]] = {}
    for c in claims:
        model = dict(c.problem).get("model", "?")
        groups.setdefault(without_model(c.problem), {}).setdefault(model, []).append(c)
    compared = {k: v for k, v in groups.items() if len(v) > 1}
    if not compared:
        return [
            (
                "Every problem was run with a single model family, so no comparison across model "
                "families is possible."
            ),
            "",
        ]
    lines = []
    for problem, by_model in compared.items():
        keyed = {
            m: {(c.question, c.role, c.metric, c.slot): c for c in mine}
            for m, mine in by_model.items()
        }
        common = sorted(set.intersection(*(set(k) for k in keyed.values())))
        name = problem_label(problem)
        models = " and ".join(sorted(keyed))
        disagree = [k for k in common if len({keyed[m][k].decision for m in keyed}) > 1]
        if not common:
            lines.append(f"- {name}: {models} share no comparison, so they cannot be compared.")
            continue
        if not disagree:
            lines.append(
                f"- {name}: {models} agree on all {len(common)} shared comparisons "
                "(same decision for each)."
            )
            continue
        for key in disagree:
            question, role, metric, slot = key
            said = "; ".join(f"{m}: {short_outcome(keyed[m][key])}" for m in sorted(keyed))
            what = "" if metric == "acc_b" else f" ({METRIC_NAMES.get(metric, metric)})"
            lines.append(f"- {name}, {question} {role}{what} at {slot}: {said}.")
        if len(disagree) < len(common):
            lines.append(
                f"- {name}: {models} agree on the other {len(common) - len(disagree)} of "
                f"{len(common)} shared comparisons."
            )
    return lines + [""]


def _question_lines(key: str, here: list[Claim], mine: list[Cell]) -> list[str]:
    yosinski = is_yosinski(mine)
    if key == "Q1":
        return q1_lines(here, yosinski)
    if key == "Q2":
        return q2_lines(here, yosinski)
    return q3_lines(here, mine, yosinski)


def answer_section(
    cells: Sequence[Cell],
    test: DecisionTest = "t",
    claims: Sequence[Claim] | None = None,
    smallest_effect: float = SMALLEST_EFFECT,
) -> str:
    """Markdown "Answer" section: the rule, then per question its family and, per problem, its
    claims; then where model families disagree (exploratory).

    Args:
      cells: cells of every experiment.
      test: which p-value decides ("t" or "sign_flip").
      claims: ``answer_claims(cells, test, smallest_effect)`` when the caller has them.
      smallest_effect: the smallest effect of interest (fraction of accuracy).

    Returns:
      The section text, starting with "## Answer".

    Example:
      >>> print(answer_section(group_cells(load_results("out"))))  # doctest: +SKIP
    """
    claims = list(answer_claims(cells, test, smallest_effect) if claims is None else claims)
    counts = family_counts(claims)
    lines = ["## Answer", "", *rule_lines(test, counts, smallest_effect)]
    grouped = problems(cells)
    for q in QUESTIONS:
        supported, tested = counts[q.key]
        size = (
            f"{supported} of {_tested(tested)} supported (Holm within this family)"
            if tested
            else "no claim could be tested (no cells for it, or fewer than 2 seeds)"
        )
        lines += [f"### {q.key}: {q.title}", "", f"*Family {q.key}*: {size}.", ""]
        for problem, mine in grouped.items():
            if is_peft(problem):
                if q.key == "Q3":
                    lines += [f"#### {problem_label(problem)} (exploratory)", ""]
                    lines += peft_lines(mine)
                continue
            here = [c for c in claims if c.problem == problem and c.question == q.key]
            lines += [f"#### {problem_label(problem)}", ""]
            lines += _question_lines(q.key, here, mine)
    lines += ["### Where model families disagree (exploratory)", ""]
    lines += model_family_lines(claims)
    return "\n".join(lines).rstrip() + "\n"
