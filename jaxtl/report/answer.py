"""The "Answer" section: Q1-Q3 for every transfer problem, computed from the numbers.

One subsection per problem (experiment, dataset pair, model, shift) found in any experiment.
Every comparison is a paired claim (``jaxtl.report.claims``); the whole Answer is one Holm family.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from jaxtl.report.cells import (
    FROZEN_STRATEGIES,
    Cell,
    labeller,
    size_label,
    size_of,
    size_order,
    summarize,
)
from jaxtl.report.claims import (
    Claim,
    DecisionTest,
    adjust_family,
    best,
    difference_claim,
    family_size,
    per_seed,
    problem_label,
    problem_of,
    rule_text,
    without_model,
)
from jaxtl.report.stats import Contrast, contrast

YOSINSKI = ("baseB", "AnB", "AnB+", "BnB", "BnB+")
SELECTION_NOTE = (
    "The best frozen strategy (and the best one that trains everything) is picked by mean "
    "accuracy on B before testing, which favours it slightly. Cost notes (FLOPs, wall time) are "
    "descriptive: a wall-time difference is called supported when its uncorrected paired 95% CI "
    "excludes 0."
)
METRIC_NAMES = {"acc_b": "accuracy on B", "acc_a": "accuracy on A", "acc_ood": "OOD accuracy on B"}


# ---- wording -------------------------------------------------------------------------------------


def _pp(value: float) -> str:
    return f"{100 * value:+.2f} pp"


def _ci(c: Contrast, sign: int = 1) -> str:
    """The 95% CI of ``sign * c`` (sign -1 when the sentence states y − x instead of x − y)."""
    lo, hi = sorted((sign * c.low, sign * c.high))
    return f"95% CI {100 * lo:+.2f} to {100 * hi:+.2f} pp"


def _p(p: float) -> str:
    if math.isnan(p) or p == 0.0:
        return "nan" if math.isnan(p) else "0"
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def _design(c: Contrast) -> str:
    if c.method == "paired":
        shared = "" if len(set(c.sizes)) == 1 and c.sizes[0] == c.n else " shared"
        return f"paired over {c.n}{shared} seeds"
    return "Welch, unpaired: the cells share < 2 seeds, n=" + " vs ".join(map(str, c.sizes))


def evidence(claim: Claim, sign: int = 1) -> str:
    """ "(paired over 5 seeds: 95% CI ...; t p=0.001, Holm p=0.004; sign-flip p=0.062)"."""
    c = claim.test
    if c.method == "insufficient":
        return f"(n={' vs '.join(map(str, c.sizes))} seeds: not enough for a test)"
    parts = [_ci(c, sign), f"p={_p(c.p)}, Holm p={_p(claim.p_adjusted)}"]
    if c.method == "paired":
        parts.append(f"sign-flip p={_p(c.sign_flip_p)}")
    return f"({_design(c)}: " + "; ".join(parts) + ")"


def marks(claim: Claim) -> str:
    """ " — *fragile*, *robust*": the marks of a supported claim ("" otherwise)."""
    found = (["*fragile*"] if claim.fragile else []) + (
        [f"*{claim.robust}*"] if claim.robust else []
    )
    return " — " + ", ".join(found) if found else ""


def claim_clause(claim: Claim | None, what: str | None = None) -> str:
    """One clause stating how x compares with y, worded by the claim's decision.

    Example:
      >>> claim_clause(claim)  # doctest: +SKIP
      'lp is better than ft on accuracy on B by 10.00 pp (paired over 3 seeds: 95% CI ...)'
    """
    if claim is None:
        return f"{what or 'the metric'} was not measured for both sides"
    what = what or METRIC_NAMES.get(claim.metric, claim.metric)
    x, y, c = claim.x, claim.y, claim.test
    decision = claim.decision
    if decision == "better":
        return f"{x} is better than {y} on {what} by {100 * c.estimate:.2f} pp {evidence(claim)}{marks(claim)}"
    if decision == "worse":
        return (
            f"{x} is worse than {y} on {what} by {-100 * c.estimate:.2f} pp "
            f"{evidence(claim, sign=-1)}{marks(claim)}"
        )
    if decision == "not supported":
        return (
            f"{x} and {y} are indistinguishable on {what} ({x} − {y} = {_pp(c.estimate)}, "
            f"{evidence(claim)[1:-1]}): the data does not support a claim"
        )
    return (
        f"{x} − {y} = {_pp(c.estimate)} on {what} with n={' vs '.join(map(str, c.sizes))} "
        "seeds (< 2 paired or on a side): not enough seeds for a claim"
    )


def ratio_phrase(ratio: float, what: str, note: str = "") -> str:
    """Cost of x relative to y, worded by direction.

    Numbers carry the digits they need: a small ratio keeps two significant digits and the
    percentage never rounds to 100% unless it is exactly that.

    Example:
      >>> ratio_phrase(0.25, "training FLOPs"), ratio_phrase(1.2, "wall time", "supported")
      ('75% less training FLOPs (0.25×)', '20% more wall time (1.20×, supported)')
      >>> ratio_phrase(0.0019, "training FLOPs")
      '99.8% less training FLOPs (0.0019×)'
    """
    note = f", {note}" if note else ""
    if not math.isfinite(ratio):
        return f"an incomparable amount of {what} (a reference total of 0{note})"
    if abs(ratio - 1.0) < 0.005:
        return f"the same {what} (1.00×{note})"
    more_or_less = "less" if ratio < 1 else "more"
    percent = 100 * abs(1 - ratio)  # >= 0.5 here
    digits = 0
    while digits < 2 and 0 < ratio < 0.01 and round(percent, digits) == 100:
        digits += 1
    share = f"{percent:.{digits}f}%" if round(percent, digits) != 100 or ratio <= 0 else ">99.99%"
    times = f"{ratio:.2g}" if 0 < ratio < 0.1 else f"{ratio:.2f}"
    return f"{share} {more_or_less} {what} ({times}×{note})"


def _ratio(x: float, y: float) -> float:
    return x / y if y else math.nan


def cost_phrase(x: Cell, y: Cell) -> str:
    """ "75% less training FLOPs (0.25×) and 75% less wall time (0.25×, supported)"."""
    flops = _ratio(summarize(x, "train_flops").mean, summarize(y, "train_flops").mean)
    time = contrast([per_seed(x, "wall_time_s"), per_seed(y, "wall_time_s")])
    if time.method == "insufficient":
        note = "too few seeds to tell noise"
    elif time.low > 0 or time.high < 0:
        note = "supported"
    else:
        note = "within run-to-run noise"
    time_ratio = _ratio(summarize(x, "wall_time_s").mean, summarize(y, "wall_time_s").mean)
    return (
        f"{ratio_phrase(flops, 'training FLOPs')} and {ratio_phrase(time_ratio, 'wall time', note)}"
    )


# ---- claims per problem --------------------------------------------------------------------------


def _slots(cells: list[Cell]) -> list[tuple[str, list[Cell]]]:
    """(label, cells) per data size in size order."""
    sizes = sorted({size_of(c) for c in cells}, key=size_order)
    return [(size_label(s), [c for c in cells if size_of(c) == s]) for s in sizes]


def _strategy_claims(problem: tuple, cells: list[Cell]) -> list[Claim]:
    label = labeller(cells)
    out = []
    for slot, here in _slots(cells):
        frozen = best(c for c in here if c.strategy in FROZEN_STRATEGIES)
        full = best(c for c in here if c.strategy == "full_ft")
        scratch = best(c for c in here if c.strategy == "scratch")
        trains_all = best(c for c in here if c.strategy not in FROZEN_STRATEGIES)
        pairs = [
            ("Q1", "best frozen vs full_ft", "acc_b", frozen, full),
            ("Q1", "best frozen vs full_ft", "acc_a", frozen, full),
            ("Q2", "full_ft vs scratch", "acc_b", full, scratch),
            ("Q3", "best frozen vs best trains-everything", "acc_b", frozen, trains_all),
        ]
        for question, role, metric, x, y in pairs:
            if x is not None and y is not None:
                claim = difference_claim(
                    problem, question, role, slot, metric, x, y, label(x), label(y)
                )
                out += [claim] if claim is not None else []
    return out


def _depth(cell: Cell) -> int:
    return int(cell.params["depth"])


def _yosinski_name(cell: Cell) -> str:
    return cell.strategy if cell.strategy == "baseB" else f"{cell.strategy} n={_depth(cell)}"


def _yosinski_claims(problem: tuple, cells: list[Cell]) -> list[Claim]:
    base = best(c for c in cells if c.strategy == "baseB")
    out = []
    for depth in sorted({_depth(c) for c in cells if c.strategy != "baseB"}):
        at = {c.strategy: c for c in cells if c.strategy != "baseB" and _depth(c) == depth}
        slot = f"n={depth}"
        pairs = [
            ("Q1", "AnB vs AnB+", "acc_b", at.get("AnB"), at.get("AnB+")),
            ("Q2", "AnB+ vs baseB", "acc_b", at.get("AnB+"), base),
        ]
        for question, role, metric, x, y in pairs:
            if x is not None and y is not None:
                claim = difference_claim(
                    problem,
                    question,
                    role,
                    slot,
                    metric,
                    x,
                    y,
                    _yosinski_name(x),
                    _yosinski_name(y),
                )
                out += [claim] if claim is not None else []
    frozen = best(c for c in cells if c.strategy == "AnB")
    trains_all = best(c for c in cells if c.strategy in ("AnB+", "baseB"))
    if frozen is not None and trains_all is not None:
        claim = difference_claim(
            problem,
            "Q3",
            "best AnB vs best of AnB+/baseB",
            "best depth",
            "acc_b",
            frozen,
            trains_all,
            _yosinski_name(frozen),
            _yosinski_name(trains_all),
        )
        out += [claim] if claim is not None else []
    return out


def problems(cells: Sequence[Cell]) -> dict[tuple, list[Cell]]:
    """Cells per problem, problems sorted by their key.

    Example:
      >>> [problem_label(p) for p in problems(cells)]  # doctest: +SKIP
      ['cross_domain: mnist → usps (cnn)', 'strategies: mnist5k → mnist5k (mlp)']
    """
    grouped: dict[tuple, list[Cell]] = {}
    for cell in cells:
        grouped.setdefault(problem_of(cell), []).append(cell)
    return dict(sorted(grouped.items()))


def is_yosinski(cells: Sequence[Cell]) -> bool:
    return any(c.strategy in YOSINSKI and "depth" in c.params for c in cells)


def answer_claims(cells: Sequence[Cell], test: DecisionTest = "t") -> list[Claim]:
    """Every Q1-Q3 claim of every problem, Holm-adjusted as one family.

    Args:
      cells: cells of every experiment.
      test: which p-value decides ("t" or "sign_flip").

    Returns:
      The adjusted claims, by problem, then question and slot.

    Example:
      >>> [c.decision for c in answer_claims(cells)]  # doctest: +SKIP
      ['worse', 'better', 'not supported']
    """
    claims: list[Claim] = []
    for problem, mine in problems(cells).items():
        build = _yosinski_claims if is_yosinski(mine) else _strategy_claims
        claims += build(problem, mine)
    return adjust_family(claims, test)


# ---- rendering -----------------------------------------------------------------------------------


def _of(claims: list[Claim], question: str, metric: str = "acc_b") -> list[Claim]:
    return [c for c in claims if c.question == question and c.metric == metric]


def _slot_list(claims: list[Claim]) -> str:
    return ", ".join(c.slot for c in claims)


def q1_lines(claims: list[Claim], yosinski: bool) -> list[str]:
    """Q1: does the best frozen strategy beat full fine-tuning, and what does it save?"""
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
            f"- **{c.slot}**: {claim_clause(c)}. Compute vs {c.y}: {c.x} used "
            f"{cost_phrase(x, y)}. Retention: "
            f"{claim_clause(retention.get(c.slot), 'accuracy on A')}."
        )
    return lines + [""]


def q2_lines(claims: list[Claim], yosinski: bool) -> list[str]:
    """Q2: does pre-training on A then fine-tuning everything beat training on B alone?"""
    main = _of(claims, "Q2")
    if not main:
        what = (
            "copied depth has both AnB+ and baseB"
            if yosinski
            else "data size has both full_ft and scratch"
        )
        return [f"No {what}, so Q2 cannot be answered here.", ""]
    prefix = {"better": "transfer counts", "worse": "negative transfer"}
    lines = [
        f"- **{c.slot}**: {prefix.get(c.decision, 'does not count as transfer')}: "
        f"{claim_clause(c)}."
        for c in main
    ]
    counts = [c for c in main if c.decision == "better"]
    pair = f"{main[0].role.replace(' vs ', ' > ')}"
    if counts:
        rest = [c for c in main if c not in counts]
        lines.append(
            f"- Transfer ({pair}, supported) at: {_slot_list(counts)}; "
            f"not at: {_slot_list(rest) or 'none'}."
        )
    else:
        where = "copied depth" if yosinski else "data size"
        lines.append(
            f"- {pair.replace(' > ', ' never beats ')} with support, "
            f"so no {where} shows transfer learning."
        )
    return lines + [""]


def q3_lines(claims: list[Claim], cells: list[Cell], yosinski: bool) -> list[str]:
    """Q3: where is freezing needed for the best accuracy, and at what cost?"""
    main = _of(claims, "Q3")
    if not main:
        return ["No data size has both a frozen strategy and one that trains everything.", ""]
    label = _yosinski_name if yosinski else labeller(cells)
    lines = [
        "Best strategy that keeps something frozen vs the best one that trains everything at the "
        + (
            "end (AnB+ at any depth, baseB), by mean accuracy on B."
            if yosinski
            else "end (full_ft, lp_ft, gradual_unfreeze, ..., scratch), by mean accuracy on B."
        ),
        "",
    ]
    for c in main:
        x, y = c.cells
        flops = ratio_phrase(
            _ratio(summarize(x, "train_flops").mean, summarize(y, "train_flops").mean),
            "training FLOPs",
        )
        t = c.test
        if c.decision == "better":
            text = (
                f"freezing is needed for the best accuracy: {c.x} beats {c.y} by "
                f"{100 * t.estimate:.2f} pp {evidence(c)}{marks(c)} and uses {flops}"
            )
        elif c.decision == "worse":
            text = (
                f"freezing is not needed: {c.y} is better by {-100 * t.estimate:.2f} pp "
                f"{evidence(c, sign=-1)}{marks(c)}; freezing ({c.x}) costs that accuracy "
                f"while using {flops}"
            )
        elif c.decision == "not supported":
            text = (
                f"freezing is optional: {c.x} and {c.y} are indistinguishable on B "
                f"({_pp(t.estimate)}, {evidence(c)[1:-1]}), and {c.x} uses {flops}"
            )
        else:
            text = f"undecided (not enough seeds): {c.x} − {c.y} = {_pp(t.estimate)}; {c.x} uses {flops}"
        here = (
            [cell for cell in cells if cell.strategy in ("AnB", "AnB+", "baseB")]
            if yosinski
            else [cell for cell in cells if size_label(size_of(cell)) == c.slot]
        )
        top = best(here)
        lines.append(
            f"- **{c.slot}**: {text}. Highest mean accuracy on B: "
            f"{label(top)} ({100 * summarize(top, 'acc_b').mean:.2f}%)."
        )
    by = {
        k: [c for c in main if c.decision == k]
        for k in ("better", "worse", "not supported", "not enough seeds")
    }
    summary = [
        f"freezing is needed for the best accuracy at {_slot_list(by['better'])}"
        if by["better"]
        else "freezing was not shown to be needed for the best accuracy anywhere",
        f"it costs supported accuracy at {_slot_list(by['worse'])}" if by["worse"] else "",
        f"it makes no supported difference at {_slot_list(by['not supported'])}"
        if by["not supported"]
        else "",
        f"too few seeds to decide at {_slot_list(by['not enough seeds'])}"
        if by["not enough seeds"]
        else "",
    ]
    return lines + ["- In short, " + "; ".join(s for s in summary if s) + ".", ""]


def _outcome(claim: Claim) -> str:
    return {
        "better": f"{claim.x} better ({_pp(claim.test.estimate)})",
        "worse": f"{claim.x} worse ({_pp(claim.test.estimate)})",
        "not supported": f"no supported difference ({_pp(claim.test.estimate)})",
        "not enough seeds": "not enough seeds",
    }[claim.decision]


def model_family_lines(claims: list[Claim]) -> list[str]:
    """Where the same problem run with different models reaches different decisions.

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
                "Every problem was run with a single model family, so no comparison across "
                "model families is possible."
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
            said = "; ".join(f"{m}: {_outcome(keyed[m][key])}" for m in sorted(keyed))
            what = "" if metric == "acc_b" else f" ({METRIC_NAMES.get(metric, metric)})"
            lines.append(f"- {name}, {question} {role}{what} at {slot}: {said}.")
        if len(disagree) < len(common):
            lines.append(
                f"- {name}: {models} agree on the other {len(common) - len(disagree)} of "
                f"{len(common)} shared comparisons."
            )
    return lines + [""]


def answer_section(
    cells: Sequence[Cell], test: DecisionTest = "t", claims: Sequence[Claim] | None = None
) -> str:
    """Markdown "Answer" section: Q1-Q3 per problem, and where model families disagree.

    Args:
      cells: cells of every experiment.
      test: which p-value decides ("t" or "sign_flip"); see ``claims.rule_text``.
      claims: ``answer_claims(cells, test)`` when the caller has them already.

    Returns:
      The section text, starting with "## Answer".

    Example:
      >>> print(answer_section(group_cells(load_results("out"))))  # doctest: +SKIP
    """
    claims = list(answer_claims(cells, test) if claims is None else claims)
    lines = ["## Answer", "", rule_text(test, family_size(claims), "this Answer"), ""]
    lines += [SELECTION_NOTE, ""]
    grouped = problems(cells)
    for problem, mine in grouped.items():
        yosinski = is_yosinski(mine)
        here = [c for c in claims if c.problem == problem]
        lines += [f"### {problem_label(problem)}", ""]
        lines += ["#### Q1: does freezing buy anything beyond cheaper compute?", ""]
        lines += q1_lines(here, yosinski)
        lines += [
            (
                "#### Q2: is A-then-fine-tune-everything on B transfer learning (does it beat "
                "training on B alone)?"
            ),
            "",
        ]
        lines += q2_lines(here, yosinski)
        lines += ["#### Q3: how essential is freezing?", ""]
        lines += q3_lines(here, mine, yosinski)
    lines += ["### Where model families disagree", ""]
    lines += model_family_lines(claims)
    return "\n".join(lines).rstrip() + "\n"
