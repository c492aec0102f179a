"""The Answer's declared claim families: each question's primary contrasts.

Which contrasts a family holds is fixed by the cells present, before any number is read:

- **Q1** (does freezing buy anything beyond cheaper compute?): the best frozen strategy vs
  full_ft, on B and on A, per problem (model × A→B pair) and data size; Yosinski pipelines:
  AnB vs AnB+ per copied depth.
- **Q2** (is A-then-fine-tune-everything transfer?): full_ft − scratch per problem and data
  size; Yosinski: AnB+ − baseB per copied depth.
- **Q3** (how essential is freezing?): the best frozen strategy vs the best one that trains
  everything, per problem and data size; Yosinski: the best AnB vs the best of AnB+ and baseB.

"Best" is picked by ``claims.pick_best`` (validation loss on the selection seeds, never the
test set of the reported seeds). Holm runs within each question's family; everything else in a
report (Literature check, model-family comparisons, cost notes) is exploratory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

from jaxtl.report.cells import (
    FROZEN_STRATEGIES,
    PEFT_EXPERIMENT,
    PEFT_STRATEGIES,
    Cell,
    labeller,
    size_label,
    size_of,
    size_order,
)
from jaxtl.report.claims import (
    Claim,
    DecisionTest,
    Pick,
    adjust_by_question,
    difference_claim,
    pick_best,
    problem_of,
)
from jaxtl.report.stats import SMALLEST_EFFECT

YOSINSKI = ("baseB", "AnB", "AnB+", "BnB", "BnB+")


class Question(NamedTuple):
    """One question of the Answer and the primary contrasts its family declares."""

    key: str
    title: str
    family: str


QUESTIONS = (
    Question(
        "Q1",
        "does freezing buy anything beyond cheaper compute?",
        "the best frozen strategy vs full_ft, on B and on A, per model × A→B pair × data size "
        "(Yosinski: AnB vs AnB+ per copied depth)",
    ),
    Question(
        "Q2",
        "is A-then-fine-tune-everything on B transfer learning (does it beat training on B alone)?",
        "full_ft − scratch per model × A→B pair × data size (Yosinski: AnB+ − baseB per "
        "copied depth)",
    ),
    Question(
        "Q3",
        "how essential is freezing?",
        "the best frozen strategy vs the best one that trains everything, per model × A→B "
        "pair × data size (Yosinski: the best AnB vs the best of AnB+ and baseB)",
    ),
)


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


def is_peft(problem: tuple) -> bool:
    """Whether a problem is the parameter-efficient comparison (``peft``), outside the families."""
    return dict(problem).get("experiment") == PEFT_EXPERIMENT


def is_yosinski(cells: Sequence[Cell]) -> bool:
    return any(c.strategy in YOSINSKI and "depth" in c.params for c in cells)


def _slots(cells: list[Cell]) -> list[tuple[str, list[Cell]]]:
    """(label, cells) per data size in size order."""
    sizes = sorted({size_of(c) for c in cells}, key=size_order)
    return [(size_label(s), [c for c in cells if size_of(c) == s]) for s in sizes]


def _note(picks: Sequence[tuple[str, Pick]]) -> str:
    """Which sides were picked on test accuracy, and why (the fallback a reader must know)."""
    return "; ".join(
        f"{side} picked on test accuracy: {pick.reason}"
        for side, pick in picks
        if pick.basis == "test"
    )


def _claim(
    problem: tuple,
    declared: tuple[str, str, str, str],
    name: Callable[[Cell], str],
    picks: Sequence[tuple[str, Pick]],
) -> list[Claim]:
    """The claim ``declared`` = (question, role, slot, metric) between the picks' two cells."""
    (_, x), (_, y) = picks
    if x.cell is None or y.cell is None:
        return []
    claim = difference_claim(problem, declared, x.cell, y.cell, name(x.cell), name(y.cell))
    return [] if claim is None else [claim._replace(note=_note(picks))]


def _strategy_claims(problem: tuple, cells: list[Cell]) -> list[Claim]:
    label = labeller(cells)
    out = []
    for slot, here in _slots(cells):
        frozen = ("best frozen", pick_best(c for c in here if c.strategy in FROZEN_STRATEGIES))
        full = ("full_ft", pick_best(c for c in here if c.strategy == "full_ft"))
        scratch = ("scratch", pick_best(c for c in here if c.strategy == "scratch"))
        trains_all = (
            "best trains-everything",
            pick_best(c for c in here if c.strategy not in (*FROZEN_STRATEGIES, *PEFT_STRATEGIES)),
        )
        declared = [
            (("Q1", "best frozen vs full_ft", slot, "acc_b"), (frozen, full)),
            (("Q1", "best frozen vs full_ft", slot, "acc_a"), (frozen, full)),
            (("Q2", "full_ft vs scratch", slot, "acc_b"), (full, scratch)),
            (("Q3", "best frozen vs best trains-everything", slot, "acc_b"), (frozen, trains_all)),
        ]
        for what, picks in declared:
            out += _claim(problem, what, label, picks)
    return out


def _depth(cell: Cell) -> int:
    return int(cell.params["depth"])


def yosinski_name(cell: Cell) -> str:
    """ "AnB+ n=2", or "baseB" (which copies nothing)."""
    return cell.strategy if cell.strategy == "baseB" else f"{cell.strategy} n={_depth(cell)}"


def _yosinski_claims(problem: tuple, cells: list[Cell]) -> list[Claim]:
    base = ("baseB", pick_best(c for c in cells if c.strategy == "baseB"))
    out = []
    for depth in sorted({_depth(c) for c in cells if c.strategy != "baseB"}):
        at = [c for c in cells if c.strategy != "baseB" and _depth(c) == depth]
        anb = ("AnB", pick_best(c for c in at if c.strategy == "AnB"))
        anb_plus = ("AnB+", pick_best(c for c in at if c.strategy == "AnB+"))
        slot = f"n={depth}"
        out += _claim(problem, ("Q1", "AnB vs AnB+", slot, "acc_b"), yosinski_name, (anb, anb_plus))
        out += _claim(
            problem, ("Q2", "AnB+ vs baseB", slot, "acc_b"), yosinski_name, (anb_plus, base)
        )
    frozen = ("best AnB", pick_best(c for c in cells if c.strategy == "AnB"))
    trains_all = (
        "best of AnB+/baseB",
        pick_best(c for c in cells if c.strategy in ("AnB+", "baseB")),
    )
    declared = ("Q3", "best AnB vs best of AnB+/baseB", "best depth", "acc_b")
    return out + _claim(problem, declared, yosinski_name, (frozen, trains_all))


def answer_claims(
    cells: Sequence[Cell], test: DecisionTest = "t", smallest_effect: float = SMALLEST_EFFECT
) -> list[Claim]:
    """Every primary claim of every problem, Holm-adjusted within each question's family.

    Args:
      cells: cells of every experiment.
      test: which p-value decides ("t" or "sign_flip").
      smallest_effect: the smallest effect of interest (fraction of accuracy) a supported
        claim's 95% CI must clear.

    Returns:
      The adjusted claims, by problem, then slot and question.

    Example:
      >>> [(c.question, c.decision) for c in answer_claims(cells)]  # doctest: +SKIP
      [('Q1', 'worse'), ('Q2', 'better'), ('Q3', 'not supported')]
    """
    claims: list[Claim] = []
    for problem, mine in problems(cells).items():
        if is_peft(problem):  # exploratory: its line under Q3 belongs to no family
            continue
        build = _yosinski_claims if is_yosinski(mine) else _strategy_claims
        claims += build(problem, mine)
    return adjust_by_question(claims, test, smallest_effect)


def family_counts(claims: Sequence[Claim]) -> dict[str, tuple[int, int]]:
    """``{question: (supported, tested)}`` per declared family, in question order.

    A contrast that appears twice in one family (the same cells) counts once.

    Example:
      >>> family_counts(answer_claims(cells))  # doctest: +SKIP
      {'Q1': (3, 12), 'Q2': (1, 5), 'Q3': (0, 5)}
    """
    out = {}
    for q in QUESTIONS:
        mine = [c for c in claims if c.question == q.key]
        tested = {
            (c.metric, tuple(id(x) for x in c.cells)) for c in mine if not math.isnan(c.decision_p)
        }
        supported = {(c.metric, tuple(id(x) for x in c.cells)) for c in mine if c.supported}
        out[q.key] = (len(supported), len(tested))
    return out
