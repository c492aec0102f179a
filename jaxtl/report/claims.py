"""Claims: paired comparisons between cells of one transfer problem, Holm-adjusted as a family.

A *problem* is what a claim is about: the experiment, the dataset pair, the model and (surgical)
the shift. Every claim of the Answer (or of the Literature check) is tested, and the family's
p-values are Holm-adjusted together before any is called supported.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Literal, NamedTuple

from jaxtl.report.cells import Cell, context_label, context_of, summarize
from jaxtl.report.protocol import robustness
from jaxtl.report.stats import ALPHA, Contrast, Decision, contrast, decide, holm, is_fragile

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


def best(cells: Iterable[Cell], metric: str = "acc_b") -> Cell | None:
    """The cell with the highest mean of ``metric`` (None for no cells)."""
    return max(cells, key=lambda c: summarize(c, metric).mean, default=None)


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

    @property
    def decision(self) -> Decision:
        return decide(self.test, self.p_adjusted)

    @property
    def supported(self) -> bool:
        return self.decision in ("better", "worse")

    @property
    def fragile(self) -> bool:
        return self.supported and is_fragile(self.test, self.p_adjusted)


def difference_claim(
    problem: tuple,
    question: str,
    role: str,
    slot: str,
    metric: str,
    x: Cell,
    y: Cell,
    x_name: str,
    y_name: str,
) -> Claim | None:
    """Claim x - y on ``metric``, paired by seed; None when either cell never measured it.

    Example:
      >>> c = difference_claim(p, "Q2", "full_ft vs scratch", "5/class", "acc_b", ft, sc,
      ...                      "full_ft", "scratch")  # doctest: +SKIP
    """
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


def adjust_family(claims: Sequence[Claim], test: DecisionTest = "t") -> list[Claim]:
    """Holm-adjust the claims as one family and mark supported ones robust/setting-dependent.

    Args:
      claims: every claim of one section (the Answer, or the Literature check).
      test: "t" (paired t-test p decides) or "sign_flip" (exact sign-flip p decides).

    Returns:
      The claims with ``p_adjusted``, ``decision_p`` and ``robust`` filled in.

    Raises:
      ValueError: unknown ``test``.

    Example:
      >>> [c.decision for c in adjust_family(claims)]  # doctest: +SKIP
      ['better', 'not supported']
    """
    if test not in DECISION_TESTS:
        raise ValueError(
            f"unknown decision test {test!r}; choose one of {', '.join(DECISION_TESTS)}"
        )
    unique: dict[tuple, float] = {}
    for claim in claims:
        unique.setdefault(_identity(claim), _decision_p(claim, test))
    adjusted = dict(zip(unique, holm(list(unique.values())), strict=True))
    out = []
    for claim in claims:
        claim = claim._replace(
            p_adjusted=adjusted[_identity(claim)], decision_p=_decision_p(claim, test)
        )
        if claim.supported and len(claim.cells) == 2:
            sign = 1 if claim.decision == "better" else -1
            claim = claim._replace(robust=robustness(*claim.cells, sign))
        out.append(claim)
    return out


def family_size(claims: Sequence[Claim]) -> int:
    """Number of distinct tested contrasts in a family (what Holm multiplies by)."""
    return len({_identity(c) for c in claims if not math.isnan(c.decision_p)})


def claims_tested(family: int, what: str) -> str:
    """ "12 tested claims of this Answer", or what a family without a testable claim is."""
    if family == 0:
        return f"tested claims of {what} (none here: no compared pair has the seeds for a test)"
    return f"{family} tested claim{'s' * (family != 1)} of {what}"


def rule_text(test: DecisionTest, family: int, what: str) -> str:
    """The decision rule, stated with the family size of ``what`` ("this Answer", ...)."""
    decider = (
        "the paired t-test p"
        if test == "t"
        else "the exact sign-flip p (the paired t-test p when cells are unpaired)"
    )
    other = (
        "The exact sign-flip permutation p (all 2^n sign patterns of the per-seed differences) is "
        "shown as a distribution-free check; it cannot fall below 2/2^n (0.0625 at 5 seeds), so "
        "it does not decide."
        if test == "t"
        else "With n seeds the exact sign-flip p cannot fall below 2/2^n (0.0625 at 5 seeds)."
    )
    return (
        "Rule: differences are paired by seed (every strategy of a seed shares its few-shot "
        "subset, source model and head initialisation): the mean per-seed difference with its "
        f"95% paired t interval. A claim is *supported* when {decider}, Holm-adjusted over the "
        f"{claims_tested(family, what)}, is below {ALPHA:g} and the 95% CI excludes 0. "
        f"{other} Cells that share fewer than 2 seeds fall back to Welch's unpaired interval "
        "and say so; with fewer than 2 seeds no claim is made. A supported claim is *fragile* "
        f"when its adjusted p is above {ALPHA / 2:g} (within a factor 2 of {ALPHA:g}) or the "
        "end of its CI nearer 0 is within 1 pp of 0. Under the tuned protocol a supported "
        "claim is *robust* when its direction holds at every grid point (each grid setting of "
        "one side against the other side's selected setting, test accuracy on the same 80% "
        "split, mean over paired seeds) and *setting-dependent* otherwise. pp = percentage "
        "points."
    )
