"""The "Literature check" section: does this run reproduce the direction of published effects?

Exploratory: these contrasts are not among the Answer's declared families. Each effect becomes
claims oriented so that a positive difference is the published direction; the claims of this
section are Holm-adjusted as their own family, and one that is not supported states what the
run could have detected. An effect whose cells are absent gets no row (only a count).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import NamedTuple

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
    claims_tested,
    difference_claim,
    family_size,
    per_seed,
    pick_best,
    problem_label,
)
from jaxtl.report.families import is_yosinski, problems
from jaxtl.report.stats import SMALLEST_EFFECT, contrast
from jaxtl.report.tables import markdown_table
from jaxtl.report.wording import detectable, evidence, marks


class Effect(NamedTuple):
    """A published effect: id, citation, statement, and how many-sided its direction is."""

    key: str
    source: str
    statement: str
    at_least: bool  # "x >= y": equality is consistent with the effect


EFFECTS = (
    Effect(
        "anb_depth", "Yosinski et al. 2014", "AnB (frozen copied layers) falls with depth", False
    ),
    Effect("anb_plus", "Yosinski et al. 2014", "AnB+ ≥ baseB at every depth", True),
    Effect("bnb_dip", "Yosinski et al. 2014", "BnB dips at middle depths", False),
    Effect("kumar_id", "Kumar et al. 2022", "LP-FT ≥ FT in distribution (acc_b)", True),
    Effect("kumar_ood", "Kumar et al. 2022", "LP-FT ≥ FT out of distribution (acc_ood)", True),
    Effect("kumar_lp_ood", "Kumar et al. 2022", "FT < LP out of distribution (acc_ood)", False),
    Effect("lee", "Lee et al. 2023", "the best single tuned group follows the shift level", True),
    Effect("lwf", "Li & Hoiem 2017 (LwF)", "frozen strategies retain A better than full_ft", False),
    Effect("he", "He et al. 2019", "scratch catches up with fine-tuning at the largest size", True),
    Effect("ulmfit", "Howard & Ruder 2018", "gradual_unfreeze ≥ full_ft with little data", True),
    Effect(
        "gain_shrinks", "a common finding", "the gain from transfer shrinks as data grows", False
    ),
)
_BY_KEY = {e.key: e for e in EFFECTS}


# ---- layer groups --------------------------------------------------------------------------------


def group_rank(name: str) -> tuple[int, int, str]:
    """Input-to-output order of a layer-group name: stem first, head last, else by trailing number.

    jaxtl's models name their groups stem/layer0, block1.../stage1..., head; results.json does
    not record the order, so it is read from the names.

    Example:
      >>> sorted(["head", "block2", "stem", "block10"], key=group_rank)
      ['stem', 'block2', 'block10', 'head']
    """
    if name == "stem":
        return (0, 0, name)
    if name == "head":
        return (2, 0, name)
    number = re.search(r"(\d+)$", name)
    return (1, int(number.group(1)) if number else 0, name)


def expected_groups(level: str, groups: Sequence[str]) -> set[str]:
    """Groups Lee et al. predict to be best for a shift level (input: first; output: head;
    feature: the middle ones)."""
    ordered = sorted(groups, key=group_rank)
    if level == "input":
        return {ordered[0]}
    if level == "output":
        return {ordered[-1]}
    return set(ordered[1:-1])


# ---- claims per effect ---------------------------------------------------------------------------

Builder = Callable[[tuple, list[Cell]], list[Claim]]


def _diff(problem, key, slot, metric, x, y, x_name, y_name) -> list[Claim]:
    if x is None or y is None:
        return []
    declared = (key, _BY_KEY[key].statement, slot, metric)
    claim = difference_claim(problem, declared, x, y, x_name, y_name)
    return [claim] if claim is not None else []


def _by_size(cells: list[Cell]) -> list[tuple[str, dict[str, Cell]]]:
    """(size label, {strategy label: cell}) in size order; frozen k options stay in the label."""
    label = labeller(cells)
    sizes = sorted({size_of(c) for c in cells}, key=size_order)
    return [(size_label(s), {label(c): c for c in cells if size_of(c) == s}) for s in sizes]


def _strategy(cells: dict[str, Cell], name: str) -> Cell | None:
    return pick_best(c for c in cells.values() if c.strategy == name).cell


def _yosinski(problem: tuple, cells: list[Cell]) -> list[Claim]:
    out: list[Claim] = []
    by = {(c.strategy, c.params.get("depth")): c for c in cells}
    depths = sorted({c.params["depth"] for c in cells if "depth" in c.params})
    anb = [d for d in depths if ("AnB", d) in by]
    if len(anb) >= 2:
        first, last = anb[0], anb[-1]
        out += _diff(
            problem, "anb_depth", f"n={first} vs n={last}", "acc_b",
            by[("AnB", first)], by[("AnB", last)], f"AnB n={first}", f"AnB n={last}",
        )  # fmt: skip
    base = pick_best(c for c in cells if c.strategy == "baseB").cell
    for d in depths:
        out += _diff(
            problem,
            "anb_plus",
            f"n={d}",
            "acc_b",
            by.get(("AnB+", d)),
            base,
            f"AnB+ n={d}",
            "baseB",
        )
    bnb = [d for d in depths if ("BnB", d) in by]
    if len(bnb) >= 3:
        first, last = by[("BnB", bnb[0])], by[("BnB", bnb[-1])]
        middle = min((by[("BnB", d)] for d in bnb[1:-1]), key=lambda c: summarize(c, "acc_b").mean)
        values = [per_seed(c, "acc_b") for c in (first, last, middle)]
        out.append(
            Claim(
                problem,
                "bnb_dip",
                _BY_KEY["bnb_dip"].statement,
                f"lowest middle depth n={middle.params['depth']}",
                "acc_b",
                f"mean of BnB n={bnb[0]} and n={bnb[-1]}",
                f"BnB n={middle.params['depth']}",
                (first, last, middle),
                contrast(values, (0.5, 0.5, -1.0)),
            )
        )
    return out


def _surgical(problem: tuple, cells: list[Cell]) -> list[Claim]:
    tuned = {c.params["tuned_group"]: c for c in cells if c.strategy == "surgical"}
    levels = {c.params.get("level") for c in cells} - {None}
    if len(tuned) < 2 or len(levels) != 1:
        return []
    level = levels.pop()
    expected = expected_groups(level, list(tuned))
    x = pick_best(tuned[g] for g in expected).cell
    y = pick_best(c for g, c in tuned.items() if g not in expected).cell
    if x is None or y is None:
        return []
    x_group, y_group = x.params["tuned_group"], y.params["tuned_group"]
    return _diff(
        problem, "lee", f"{level} shift", "acc_b", x, y,
        f"tuning {x_group} (predicted)", f"tuning {y_group} (best other group)",
    )  # fmt: skip


def _strategies(problem: tuple, cells: list[Cell]) -> list[Claim]:
    out: list[Claim] = []
    slots = _by_size(cells)
    for slot, here in slots:
        lp_ft, ft = _strategy(here, "lp_ft"), _strategy(here, "full_ft")
        lp = _strategy(here, "linear_probe")
        out += _diff(problem, "kumar_id", slot, "acc_b", lp_ft, ft, "lp_ft", "full_ft")
        out += _diff(problem, "kumar_ood", slot, "acc_ood", lp_ft, ft, "lp_ft", "full_ft")
        out += _diff(problem, "kumar_lp_ood", slot, "acc_ood", lp, ft, "linear_probe", "full_ft")
        frozen = [
            c for c in here.values() if c.strategy in FROZEN_STRATEGIES and per_seed(c, "acc_a")
        ]
        # The frozen strategy that retains A least: if even it beats full_ft, all of them do.
        worst = min(frozen, key=lambda c: summarize(c, "acc_a").mean, default=None)
        name = next((k for k, c in here.items() if c is worst), "")
        out += _diff(
            problem, "lwf", slot, "acc_a", worst, ft, f"{name} (least retentive frozen)", "full_ft"
        )
    with_both = [(s, h) for s, h in slots if _strategy(h, "full_ft") and _strategy(h, "scratch")]
    if len(with_both) >= 2:
        (small, first), (large, last) = with_both[0], with_both[-1]
        out += _diff(
            problem, "he", large, "acc_b",
            _strategy(last, "scratch"), _strategy(last, "full_ft"), "scratch", "full_ft",
        )  # fmt: skip
        cells4 = (
            _strategy(first, "full_ft"),
            _strategy(first, "scratch"),
            _strategy(last, "full_ft"),
            _strategy(last, "scratch"),
        )
        out.append(
            Claim(
                problem,
                "gain_shrinks",
                _BY_KEY["gain_shrinks"].statement,
                f"{small} vs {large}",
                "acc_b",
                f"(full_ft − scratch) at {small}",
                f"(full_ft − scratch) at {large}",
                cells4,
                contrast([per_seed(c, "acc_b") for c in cells4], (1.0, -1.0, -1.0, 1.0)),
            )
        )
    if slots:
        slot, smallest = slots[0]
        out += _diff(
            problem, "ulmfit", slot, "acc_b",
            _strategy(smallest, "gradual_unfreeze"), _strategy(smallest, "full_ft"),
            "gradual_unfreeze", "full_ft",
        )  # fmt: skip
    return out


def literature_claims(
    cells: Sequence[Cell], test: DecisionTest = "t", smallest_effect: float = SMALLEST_EFFECT
) -> list[Claim]:
    """Every claim of the Literature check, Holm-adjusted as one family.

    Example:
      >>> sorted({c.question for c in literature_claims(cells)})  # doctest: +SKIP
      ['anb_depth', 'anb_plus', 'gain_shrinks', 'he', 'kumar_id']
    """
    claims: list[Claim] = []
    for problem, mine in problems(cells).items():
        if is_yosinski(mine):
            claims += _yosinski(problem, mine)
        elif any(c.strategy == "surgical" for c in mine):
            claims += _surgical(problem, mine) + _strategies(problem, mine)
        else:
            claims += _strategies(problem, mine)
    return adjust_family(claims, test, smallest_effect)


# ---- rendering -----------------------------------------------------------------------------------


def outcome(claim: Claim, effect: Effect) -> str:
    """How a claim (oriented so that > 0 is the published direction) bears on the effect.

    Example:
      >>> outcome(claim, EFFECTS[0])  # doctest: +SKIP
      'reproduced (supported)'
    """
    decision, estimate = claim.decision, claim.test.estimate
    if decision == "not enough seeds":
        return "not enough seeds"
    if decision == "better":
        return "reproduced (supported)"
    if decision == "worse":
        return "contradicted (supported)"
    if estimate > 0 or (effect.at_least and estimate == 0):
        return "same direction, not supported"
    if estimate == 0:
        return "estimate 0, not supported"
    return "opposite direction, not supported"


def _figures(claim: Claim) -> str:
    figures = f"{claim.x} − {claim.y} = {100 * claim.test.estimate:+.2f} pp {evidence(claim)}"
    if claim.decision == "not supported":
        return f"{figures}; {detectable(claim)}"
    return figures + marks(claim)


def literature_section(
    cells: Sequence[Cell], test: DecisionTest = "t", smallest_effect: float = SMALLEST_EFFECT
) -> str:
    """Markdown "Literature check": one table row per measured (effect, problem, slot).

    Effects these runs hold no cells for get no row; one sentence counts them.

    Args:
      cells: cells of every experiment.
      test: which p-value decides ("t" or "sign_flip").
      smallest_effect: the smallest effect of interest a supported claim's CI must clear.

    Returns:
      The section text, starting with "## Literature check".

    Example:
      >>> print(literature_section(group_cells(load_results("out"))))  # doctest: +SKIP
    """
    claims = literature_claims(cells, test, smallest_effect)
    rows = []
    for effect in EFFECTS:
        for claim in (c for c in claims if c.question == effect.key):
            rows.append(
                [
                    f"{effect.statement} ({effect.source})",
                    f"{problem_label(claim.problem)}, {claim.slot}",
                    _figures(claim),
                    f"**{outcome(claim, effect)}**",
                ]
            )
    unmeasured = len(EFFECTS) - len({c.question for c in claims})
    absent = (
        f" {unmeasured} of the {len(EFFECTS)} published effects need cells these runs do not "
        "have and are left out."
        if unmeasured
        else ""
    )
    if not rows:
        return "\n".join(
            [
                "## Literature check (exploratory)",
                "",
                (
                    f"None of the {len(EFFECTS)} published effects this check knows can be "
                    "tested with these runs' strategies, data sizes and experiments."
                ),
                "",
            ]
        )
    intro = (
        "**Exploratory**: these contrasts are not among the Answer's declared families; read "
        "them as leads. Each published effect is tested in its own direction: a positive "
        'difference is the direction the paper reports. For "≥" effects, equality is '
        "consistent with the paper, so a direction that holds without support is not evidence "
        "against it. Claims are decided by the rule stated under Answer, Holm-adjusted over the "
        f"{claims_tested(family_size(claims), 'this section')} (a family of its own), and one "
        "that is not supported states the smallest effect this run would have detected at "
        "this family's α/m." + absent
    )
    return "\n".join(
        [
            "## Literature check (exploratory)",
            "",
            intro,
            "",
            markdown_table(["published effect", "where", "figures", "this run"], rows),
            "",
        ]
    )
