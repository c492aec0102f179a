"""Claims: paired comparisons between cells of one transfer problem, Holm-adjusted per family.

A *problem* is what a claim is about: the experiment, the dataset pair, the model and (surgical)
the shift. Every claim is tested, and the p-values of its family (one question's primary
claims, or the exploratory Literature check) are Holm-adjusted together before any is called
supported; with a smallest effect of interest (``adjust_family``'s ``smallest_effect``; none by
default, ``stats.SMALLEST_EFFECT``) its 95% interval must also lie beyond it. A claim that is
not supported carries the smallest effect its test could have detected (``stats.contrast_mde``)
at its family's strictest Holm level, alpha / m.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Literal, NamedTuple

from jaxtl.report.cells import Cell, context_label, context_of, summarize
from jaxtl.report.protocol import protocol_name, robustness, selection_score, selection_seeds
from jaxtl.report.stats import (
    ALPHA,
    SMALLEST_EFFECT,
    Contrast,
    Decision,
    contrast,
    contrast_mde,
    decide,
    holm,
    is_fragile,
    t_test_power,
)

# Params that, with the experiment, say which transfer problem a cell belongs to.
PROBLEM_PARAMS = ("dataset_a", "dataset_b", "model", "shift")
# Which p-value decides: the paired t test (default) or the exact sign-flip test.
DecisionTest = Literal["t", "sign_flip"]
DECISION_TESTS = ("t", "sign_flip")


def problem_of(cell: Cell) -> tuple:
    """Hashable key: experiment plus the dataset pair, model and shift the cell names.

    Example:
      >>> problem_of(cell)  # doctest: +SKIP
      (('experiment', 'cross_domain'), ('dataset_a', 'mnist'), ('dataset_b', 'usps'), ('model', 'cnn'))
    """
    context = dict(context_of(cell))
    shift = {"shift": str(cell.params["shift"])} if "shift" in cell.params else {}
    values = {**context, **shift}
    return (("experiment", cell.experiment),) + tuple(
        (p, values[p]) for p in PROBLEM_PARAMS if p in values
    )


def problem_label(problem: tuple) -> str:
    """ "cross_domain: mnist → usps (cnn)", plus ", shift permute_pixels" for surgical problems.

    Example:
      >>> problem_label((("experiment", "strategies"), ("dataset_a", "a"), ("dataset_b", "b")))
      'strategies: a → b'
    """
    values = dict(problem)
    context = tuple((k, v) for k, v in problem if k in ("dataset_a", "dataset_b", "model"))
    label = f"{values['experiment']}: {context_label(context)}".rstrip(": ")
    return label + (f", shift {values['shift']}" if "shift" in values else "")


def without_model(problem: tuple) -> tuple:
    """The problem key with the model left out (to compare model families on one problem)."""
    return tuple((k, v) for k, v in problem if k != "model")


def per_seed(cell: Cell, metric: str) -> dict[int, float]:
    """``{seed: value}`` of one metric, skipping runs where it was not measured."""
    return {
        r["seed"]: float(r["metrics"][metric])
        for r in cell.runs
        if r["metrics"][metric] is not None
    }


def highest_mean(cells: Iterable[Cell], metric: str = "acc_b") -> Cell | None:
    """The cell with the highest mean of ``metric`` over its reported seeds (None for no cells).

    Descriptive only: a cell chosen this way and then tested on the same seeds is favoured by
    its own noise, so claims pick their sides with ``pick_best``.
    """
    return max(cells, key=lambda c: summarize(c, metric).mean, default=None)


class Pick(NamedTuple):
    """Which cell ``pick_best`` chose and on what.

    Attributes:
      cell: the chosen cell (None for no candidates).
      basis: "only" (a single candidate), "validation" (lowest pooled validation loss on the
        selection seeds) or "test" (highest mean test accuracy: the fallback).
      reason: why the fallback was needed ("" unless basis is "test").
    """

    cell: Cell | None
    basis: str
    reason: str = ""


def pick_best(cells: Iterable[Cell]) -> Pick:
    """The best of several candidate cells, chosen without the reported seeds' test set.

    Tuned cells that share their selection seeds are ranked by the pooled validation loss of
    their selected setting (lowest wins; ties go to the first in cell order): a choice made on
    the selection seeds, so the claim about the chosen cell is tested on data the choice never
    saw. Otherwise (a fixed-protocol candidate, no finite validation loss, or different
    selection seeds) the highest mean test accuracy on B decides, and ``reason`` says why.

    Example:
      >>> pick_best([frozen_k1, frozen_k2]).basis  # doctest: +SKIP
      'validation'
    """
    cells = list(cells)
    if len(cells) <= 1:
        return Pick(cells[0] if cells else None, "only")
    scores = [selection_score(c) for c in cells]
    if all(s is not None for s in scores) and len({selection_seeds(c) for c in cells}) == 1:
        i = min(range(len(cells)), key=lambda k: (scores[k], k))
        return Pick(cells[i], "validation")
    if any(protocol_name(c) != "tuned" for c in cells):
        reason = "fixed protocol, no validation data"
    elif any(s is None for s in scores):
        reason = "a candidate has no finite validation loss"
    else:
        reason = "the candidates were tuned on different selection seeds"
    return Pick(highest_mean(cells), "test", reason)


class Claim(NamedTuple):
    """One tested statement "x vs y on metric" (or a contrast of several cells).

    Attributes:
      problem: ``problem_of`` key.
      question: "Q1", "Q2", "Q3" or a Literature-check effect id.
      role: what is compared, stable across models ("best frozen vs full_ft", ...).
      slot: where (data size "5/class", depth "n=2", ...).
      metric: "acc_b", "acc_a" or "acc_ood".
      x: label of the treated side.
      y: label of the reference side.
      cells: the cells of the contrast, in coefficient order (x, y for a difference).
      test: the ``Contrast`` (x - y unless coefs say otherwise).
      p_adjusted: Holm-adjusted p within the family (nan until ``adjust_family``).
      robust: "robust", "setting-dependent" or None (no grid, or not supported).
      decision_p: the p-value that was adjusted ("t" test or "sign_flip").
      family: m, the number of distinct tested contrasts in the claim's Holm family.
      mde: minimum detectable effect (80% power) of the claim's test at alpha / m with its CI
        beyond ±smallest_effect, in the metric's units; inf when no effect could reach
        alpha / m; nan when untested.
      smallest_effect: the smallest effect of interest the claim was decided with.
      note: how a "best" side was picked when it was not on validation loss ("" otherwise).
    """

    problem: tuple
    question: str
    role: str
    slot: str
    metric: str
    x: str
    y: str
    cells: tuple[Cell, ...]
    test: Contrast
    p_adjusted: float = math.nan
    robust: str | None = None
    decision_p: float = math.nan
    family: int = 0
    mde: float = math.nan
    note: str = ""
    smallest_effect: float = 0.0

    @property
    def level(self) -> float:
        """alpha / m: Holm's strictest step, the level the MDE is computed at."""
        return ALPHA / self.family if self.family else math.nan

    @property
    def decision(self) -> Decision:
        return decide(self.test, self.p_adjusted, smallest_effect=self.smallest_effect)

    @property
    def supported(self) -> bool:
        return self.decision in ("better", "worse")

    @property
    def below_interest(self) -> bool:
        """Holm-significant, but the 95% CI reaches inside ±smallest_effect: not supported."""
        c = self.test
        return (
            self.decision == "not supported"
            and self.p_adjusted < ALPHA
            and (c.low > 0 or c.high < 0)
        )

    @property
    def power(self) -> float:
        """The chance that a run like this one supports the claim again (same seeds, family and
        rule) if its true effect were the estimate: its test's power at alpha / m, the level of
        its MDE (nan when untested). The estimate of a claim that just passed is inflated (the
        winner's curse), so this is an optimistic figure for such a claim."""
        c = self.test
        if c.method == "insufficient" or not self.family or not math.isfinite(c.se):
            return math.nan
        return t_test_power(abs(c.estimate), c.se, c.df, self.level, self.smallest_effect)

    @property
    def fragile(self) -> bool:
        return self.supported and is_fragile(self.test, self.p_adjusted)


def difference_claim(
    problem: tuple, declared: tuple[str, str, str, str], x: Cell, y: Cell, x_name: str, y_name: str
) -> Claim | None:
    """Claim x - y, paired by seed; None when either cell never measured the metric.

    Args:
      problem: ``problem_of`` key.
      declared: (question, role, slot, metric) of the claim.
      x: treated cell.
      y: reference cell.
      x_name: label of x.
      y_name: label of y.

    Example:
      >>> c = difference_claim(p, ("Q2", "full_ft vs scratch", "5/class", "acc_b"), ft, sc,
      ...                      "full_ft", "scratch")  # doctest: +SKIP
    """
    question, role, slot, metric = declared
    xs, ys = per_seed(x, metric), per_seed(y, metric)
    if not xs or not ys:
        return None
    return Claim(problem, question, role, slot, metric, x_name, y_name, (x, y), contrast([xs, ys]))


def _decision_p(claim: Claim, test: DecisionTest) -> float:
    if test == "sign_flip" and claim.test.method == "paired":
        return claim.test.sign_flip_p
    return claim.test.p


def _identity(claim: Claim) -> tuple:
    """Claims that test the same contrast (e.g. Q1 and Q3 when full_ft is the best) count once."""
    return (claim.metric, tuple(id(c) for c in claim.cells))


def _mde(claim: Claim, level: float, test: DecisionTest) -> float:
    c = claim.test
    # The exact sign-flip p cannot fall below 2 / 2^n: below that level nothing is detectable.
    if test == "sign_flip" and c.method == "paired" and 2.0 / 2**c.n >= level:
        return math.inf
    return contrast_mde(c, level, smallest_effect=claim.smallest_effect)


def check_smallest_effect(smallest_effect: float) -> float:
    """``smallest_effect`` if it is a finite number in [0, 1) (a fraction of accuracy).

    Raises:
      ValueError: anything else, naming the value and the valid range.
    """
    if not (isinstance(smallest_effect, (int, float)) and 0.0 <= smallest_effect < 1.0):
        raise ValueError(
            f"smallest effect of interest {smallest_effect!r} must be a fraction of accuracy in "
            "[0, 1) (e.g. 0.005 for 0.5 pp; 0 decides on the interval excluding 0)"
        )
    return float(smallest_effect)


def adjust_family(
    claims: Sequence[Claim], test: DecisionTest = "t", smallest_effect: float = SMALLEST_EFFECT
) -> list[Claim]:
    """Holm-adjust the claims as one family, mark supported ones robust/setting-dependent and
    give every tested claim its minimum detectable effect at alpha / m.

    Args:
      claims: every claim of one family (one question's primary claims, or the Literature
        check).
      test: "t" (paired t-test p decides) or "sign_flip" (exact sign-flip p decides).
      smallest_effect: the smallest effect of interest, as a fraction of accuracy: supported
        needs the 95% CI beyond ± it (0: beyond 0).

    Returns:
      The claims with ``p_adjusted``, ``decision_p``, ``family``, ``mde`` and ``robust``
      filled in.

    Raises:
      ValueError: unknown ``test``, or a ``smallest_effect`` outside [0, 1).

    Example:
      >>> [c.decision for c in adjust_family(claims)]  # doctest: +SKIP
      ['better', 'not supported']
    """
    if test not in DECISION_TESTS:
        raise ValueError(
            f"unknown decision test {test!r}; choose one of {', '.join(DECISION_TESTS)}"
        )
    smallest_effect = check_smallest_effect(smallest_effect)
    unique: dict[tuple, float] = {}
    for claim in claims:
        unique.setdefault(_identity(claim), _decision_p(claim, test))
    adjusted = dict(zip(unique, holm(list(unique.values())), strict=True))
    m = sum(not math.isnan(p) for p in unique.values())
    out = []
    for claim in claims:
        claim = claim._replace(
            p_adjusted=adjusted[_identity(claim)],
            decision_p=_decision_p(claim, test),
            family=m,
            smallest_effect=smallest_effect,
        )
        if m and not math.isnan(claim.decision_p):
            claim = claim._replace(mde=_mde(claim, ALPHA / m, test))
        if claim.supported and len(claim.cells) == 2:
            sign = 1 if claim.decision == "better" else -1
            claim = claim._replace(robust=robustness(*claim.cells, sign))
        out.append(claim)
    return out


def adjust_by_question(
    claims: Sequence[Claim], test: DecisionTest = "t", smallest_effect: float = SMALLEST_EFFECT
) -> list[Claim]:
    """Holm within each question's family (claims grouped by ``question``), order kept.

    Example:
      >>> sorted({(c.question, c.family) for c in adjust_by_question(claims)})  # doctest: +SKIP
      [('Q1', 12), ('Q2', 5), ('Q3', 5)]
    """
    adjusted: dict[int, Claim] = {}
    for question in dict.fromkeys(c.question for c in claims):
        mine = [i for i, c in enumerate(claims) if c.question == question]
        family = adjust_family([claims[i] for i in mine], test, smallest_effect)
        for i, claim in zip(mine, family, strict=True):
            adjusted[i] = claim
    return [adjusted[i] for i in range(len(claims))]


def family_size(claims: Sequence[Claim]) -> int:
    """Number of distinct tested contrasts in a family (what Holm multiplies by)."""
    return len({_identity(c) for c in claims if not math.isnan(c.decision_p)})


def claims_tested(family: int, what: str) -> str:
    """ "12 tested claims of this Answer", or what a family without a testable claim is."""
    if family == 0:
        return f"tested claims of {what} (none here: no compared pair has the seeds for a test)"
    return f"{family} tested claim{'s' * (family != 1)} of {what}"
