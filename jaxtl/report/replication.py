"""Replication: the primary claims of two study directories side by side.

A replication runs the same study again on a disjoint set of confirmation seeds (and/or under
another floating-point arithmetic). ``compare_studies`` computes each directory's primary claims
(the Answer's declared families, Holm within each question's family), matches them by
(question, problem, role, slot, metric), and reports every claim's decision, estimate and CI in
both runs, the claims whose decision differs, and the agreement: of the claims supported in
either run, the share supported in both with the same sign, each comparison counted once.
``write_comparison`` writes it as Markdown.

Example:
  >>> comparison = compare_studies("runs/study", "runs/study_b")  # doctest: +SKIP
  >>> print(comparison.agreement_line())  # doctest: +SKIP
  Of the 9 primary claims supported in either run, 7 (78%) are supported in both with the same sign.
  >>> write_comparison(comparison, "runs/comparison.md")  # doctest: +SKIP
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

from jaxtl.report.cells import group_cells
from jaxtl.report.claims import Claim, DecisionTest, problem_label
from jaxtl.report.collect import collect_runs
from jaxtl.report.families import QUESTIONS, answer_claims, family_counts
from jaxtl.report.protocol import protocol_name, selected_setting, setting_label
from jaxtl.report.results import cell_key
from jaxtl.report.settings import cell_name
from jaxtl.report.stats import SMALLEST_EFFECT
from jaxtl.report.tables import markdown_table, seed_list
from jaxtl.report.wording import METRIC_NAMES, interest, p_text, pp

COMPARISON_FILE = "comparison.md"
# What identifies one primary claim across runs: question, problem, role, slot, metric.
ClaimKey = tuple[str, tuple, str, str, str]


def claim_key(claim: Claim) -> ClaimKey:
    """The key two runs' versions of one primary claim share.

    Example:
      >>> claim_key(claim)  # doctest: +SKIP
      ('Q2', (('experiment', 'strategies'), ...), 'full_ft vs scratch', '5/class', 'acc_b')
    """
    return (claim.question, claim.problem, claim.role, claim.slot, claim.metric)


class Study(NamedTuple):
    """One directory's primary claims and what they were made on.

    Attributes:
      path: the directory.
      claims: primary claims by ``claim_key``, in the Answer's order.
      seeds: the reported (confirmation) seeds of its runs.
      selection_seeds: the seeds its tuned cells chose hyperparameters on (empty if none).
      selected: per tuned cell (``results.cell_key``): its name and selected setting.
      warnings: runs left out for their settings, one line each.
    """

    path: str
    claims: dict[ClaimKey, Claim]
    seeds: tuple[int, ...]
    selection_seeds: tuple[int, ...]
    selected: dict[tuple, tuple[str, dict | None]]
    warnings: tuple[str, ...]


def load_study(
    path: str | Path, test: DecisionTest = "t", smallest_effect: float = SMALLEST_EFFECT
) -> Study:
    """Read one study directory and compute its primary claims (decided as ``answer_claims``
    decides them).

    Raises:
      ResultsError: no results, or a malformed record (one line naming file and key).

    Example:
      >>> len(load_study("runs/study").claims)  # doctest: +SKIP
      46
    """
    runs = collect_runs(path, warn=False)
    cells = group_cells(runs.records)
    claims = {claim_key(c): c for c in answer_claims(cells, test, smallest_effect)}
    chosen_on = {s for r in runs.records for s in r["protocol"].get("selection_seeds", [])}
    selected = {
        cell_key(c.runs[0]): (cell_name(c.runs[0]), selected_setting(c))
        for c in cells
        if protocol_name(c) == "tuned"
    }
    return Study(
        str(path),
        claims,
        tuple(sorted({r["seed"] for r in runs.records})),
        tuple(sorted(chosen_on)),
        selected,
        tuple(runs.warnings()),
    )


def _comparison(claim: Claim) -> tuple:
    """What a claim compares: its problem, data size, metric and the two sides."""
    return (claim.problem, claim.slot, claim.metric, claim.x, claim.y)


def _decision(claim: Claim | None) -> str:
    return "absent" if claim is None else claim.decision


class Matched(NamedTuple):
    """One primary claim in both runs (None where a run does not have it)."""

    key: ClaimKey
    a: Claim | None
    b: Claim | None

    @property
    def moved(self) -> bool:
        """The decision differs between the runs (a claim one run lacks counts as moved)."""
        return _decision(self.a) != _decision(self.b)

    @property
    def supported_either(self) -> bool:
        return any(c is not None and c.supported for c in (self.a, self.b))

    @property
    def solid_either(self) -> bool:
        """Supported without the *fragile* mark in at least one run."""
        return any(c is not None and c.supported and not c.fragile for c in (self.a, self.b))

    @property
    def agrees(self) -> bool:
        """Supported in both runs with the same sign."""
        return (
            self.a is not None
            and self.b is not None
            and self.a.supported
            and self.a.decision == self.b.decision
        )

    @property
    def consistent(self) -> bool | None:
        """Whether the runs' estimates agree within the 95% prediction interval one gives for
        the other: ``|a - b| <= 1.96 * sqrt(se_a**2 + se_b**2)``. None when a run lacks the
        claim, the runs compare different cells, or an estimate has no standard error.

        This asks whether the *numbers* replicate, which a decision near its threshold does
        not show: an effect of -0.61 pp (SE 0.13) and one of -0.23 pp (SE 0.17) agree, though
        only the first is supported.
        """
        if self.a is None or self.b is None or (self.a.x, self.a.y) != (self.b.x, self.b.y):
            return None
        ta, tb = self.a.test, self.b.test
        spread = math.hypot(ta.se, tb.se)
        if not math.isfinite(spread) or not math.isfinite(ta.estimate - tb.estimate):
            return None
        return abs(ta.estimate - tb.estimate) <= 1.96 * spread

    def change(self) -> str:
        """ "sign flipped", "support moved", "only in run A" ... or "" when nothing moved."""
        if self.a is None or self.b is None:
            return "only in run " + ("B" if self.a is None else "A")
        if not self.moved:
            return ""
        if self.a.supported and self.b.supported:
            return "sign flipped"
        if self.a.supported or self.b.supported:
            return "support moved"
        return "seeds for a test moved"


class Comparison(NamedTuple):
    """Two runs' primary claims, matched.

    Attributes:
      a: the first study.
      b: the second study.
      claims: every primary claim of either run, the moved ones first.
      test: the p-value that decided ("t" or "sign_flip").
      smallest_effect: the smallest effect of interest the claims were decided with.
    """

    a: Study
    b: Study
    claims: list[Matched]
    test: DecisionTest
    smallest_effect: float = SMALLEST_EFFECT

    @property
    def moved(self) -> list[Matched]:
        """The claims whose decision differs between the runs."""
        return [m for m in self.claims if m.moved]

    @property
    def repeats(self) -> set[ClaimKey]:
        """Claims that make, in both runs, the same comparison as a claim of an earlier
        question: the same cells, metric and data size. Q3 (best frozen vs the best that trains
        everything) is Q1's claim on B wherever the best that trains everything is full_ft;
        one comparison is one finding, so the agreement counts it once."""
        first: set[tuple] = set()
        repeated = set()
        for m in sorted(self.claims, key=lambda m: m.key[0]):  # stable: Answer order within
            if m.a is None or m.b is None:
                continue
            made = (_comparison(m.a), _comparison(m.b))
            if made in first:
                repeated.add(m.key)
            first.add(made)
        return repeated

    def _supported_either(self) -> list[Matched]:
        repeats = self.repeats
        return [m for m in self.claims if m.supported_either and m.key not in repeats]

    @property
    def agreement(self) -> float | None:
        """Of the distinct claims supported in either run (:attr:`repeats` left out), the share
        supported in both with the same sign; None when no claim is supported in either run."""
        either = self._supported_either()
        return sum(m.agrees for m in either) / len(either) if either else None

    @property
    def solid_agreement(self) -> float | None:
        """Of the distinct claims supported without the *fragile* mark in either run, the share
        supported in both with the same sign (fragile or not); None when there is none. It says
        whether the mark tells a reader which claims to trust: a fragile claim sits at the
        decision boundary, where another draw of seeds decides it either way."""
        either = [m for m in self._supported_either() if m.solid_either]
        return sum(m.agrees for m in either) / len(either) if either else None

    @property
    def expected_agreement(self) -> float | None:
        """The agreement two independent runs would reach if each claim's effect were what these
        runs estimate: each run supports a claim with its power p (the mean of the two runs'
        ``Claim.power``), in either run with probability 2p - p^2 and in both with p^2, so the
        share is sum(p^2) / sum(2p - p^2) over the distinct claims both runs test: 0.64 / 0.96
        = 67% if every claim sat at its MDE (p = 0.8). None when no claim has a power."""
        repeats = self.repeats
        powers = [
            (m.a.power + m.b.power) / 2
            for m in self.claims
            if m.key not in repeats and m.a is not None and m.b is not None
        ]
        powers = [p for p in powers if math.isfinite(p)]
        either = sum(2 * p - p * p for p in powers)
        return sum(p * p for p in powers) / either if either > 0 else None

    def expected_agreement_line(self) -> str:
        """:attr:`expected_agreement` in one sentence ("" when there is none).

        Example:
          >>> comparison.expected_agreement_line()  # doctest: +SKIP
          'If every claim's effect were what the two runs estimate, runs like these would ...'
        """
        expected = self.expected_agreement
        if expected is None:
            return ""
        return (
            "If every claim's effect were what the two runs estimate, runs like these would agree "
            f"on about {100 * expected:.0f}% of the claims supported in either (from each "
            "claim's power at α/m; claims all at their minimum detectable effect, 80% power, "
            "would give 67%)."
        )

    @property
    def disjoint(self) -> bool:
        """Whether the two runs' confirmation seeds share none."""
        return not set(self.a.seeds) & set(self.b.seeds)

    def agreement_line(self) -> str:
        """The agreement in one sentence.

        Example:
          >>> comparison.agreement_line()  # doctest: +SKIP
          'Of the 9 distinct primary claims supported in either run, 3 (33%) are supported ...'
        """
        either = self._supported_either()
        if not either:
            return (
                f"No primary claim is supported in either run ({len(self.claims)} compared), "
                "so there is no supported claim to agree on."
            )
        both = sum(m.agrees for m in either)
        repeated = sum(m.supported_either for m in self.claims) - len(either)
        verbs = ("repeats", "counts") if repeated == 1 else ("repeat", "count")
        once = (
            f" ({repeated} more {verbs[0]} the comparison of a claim of an earlier question and"
            f" {verbs[1]} once)"
            if repeated
            else ""
        )
        return (
            f"Of the {len(either)} distinct primary claims supported in either run{once}, "
            f"{both} ({100 * both / len(either):.0f}%) are supported in both with the same sign."
        )

    def solid_agreement_line(self) -> str:
        """:attr:`solid_agreement` in one sentence ("" when no claim is supported unmarked).

        Example:
          >>> comparison.solid_agreement_line()  # doctest: +SKIP
          'Of the 10 claims supported without a fragile mark in either run, 9 (90%) are ...'
        """
        either = [m for m in self._supported_either() if m.solid_either]
        if not either:
            return ""
        both = sum(m.agrees for m in either)
        return (
            f"Of the {len(either)} claims supported without a fragile mark in either run, {both} "
            f"({100 * both / len(either):.0f}%) are supported in both with the same sign."
        )

    def consistency_line(self) -> str:
        """How many distinct claims' estimates agree within their prediction interval ("" when
        none can be compared).

        Example:
          >>> comparison.consistency_line()  # doctest: +SKIP
          'The estimates of 28 of the 30 distinct primary claims both runs compare agree ...'
        """
        repeats = self.repeats
        compared = [m for m in self.claims if m.key not in repeats and m.consistent is not None]
        if not compared:
            return ""
        agree = sum(bool(m.consistent) for m in compared)
        return (
            f"The estimates of {agree} of the {len(compared)} distinct primary claims both runs "
            f"compare ({100 * agree / len(compared):.0f}%) agree within the 95% prediction "
            "interval (|A − B| ≤ 1.96 √(SE_A² + SE_B²)), supported or not."
        )

    def settings_moved(self, matched: Matched) -> list[str]:
        """Why a claim may have moved besides its seeds: the cells it compares whose selected
        setting differs between the runs (their names), and "another best" when the runs
        compare different cells (a "best" side picked otherwise).

        Example:
          >>> [comparison.settings_moved(m) for m in comparison.moved]  # doctest: +SKIP
          [['strategies full_ft, 5/class, mnist5k → mnist5k (cnn)'], []]
        """
        if matched.a is None or matched.b is None:
            return []
        moved = {name for name, _, _ in self.selections_moved()}
        keys = {cell_key(c.runs[0]) for claim in (matched.a, matched.b) for c in claim.cells}
        names = sorted(self.a.selected[k][0] for k in keys if k in self.a.selected)
        reasons = [name for name in names if name in moved]
        if (matched.a.x, matched.a.y) != (matched.b.x, matched.b.y):
            reasons.append("another best")
        return reasons

    def moved_with_settings_line(self) -> str:
        """How many of the claims that moved (in both runs) compare a cell whose selected
        setting moved too ("" when none moved).

        Example:
          >>> comparison.moved_with_settings_line()  # doctest: +SKIP
          'Of the 5 claims that moved, 3 compare a cell whose selected setting differs ...'
        """
        moved = [m for m in self.moved if m.a is not None and m.b is not None]
        if not moved:
            return ""
        with_settings = sum(bool(self.settings_moved(m)) for m in moved)
        verb = "compares" if with_settings == 1 else "compare"
        return (
            f"Of the {len(moved)} claims that moved, {with_settings} {verb} a cell whose selected"
            " setting differs between the runs (or a different best strategy); "
            f"{len(moved) - with_settings} moved on the same settings (their seeds and "
            "arithmetic alone)."
        )

    def selections_moved(self) -> list[tuple[str, dict | None, dict | None]]:
        """Tuned cells of both runs that selected different settings: (cell, in A, in B)."""
        return [
            (name, chosen, self.b.selected[key][1])
            for key, (name, chosen) in self.a.selected.items()
            if key in self.b.selected and self.b.selected[key][1] != chosen
        ]


def compare_studies(
    dir_a: str | Path,
    dir_b: str | Path,
    test: DecisionTest = "t",
    smallest_effect: float = SMALLEST_EFFECT,
) -> Comparison:
    """Match the primary claims of two study directories.

    Args:
      dir_a: the first run's output directory (searched for results.json as by the report).
      dir_b: the replication's.
      test: which p-value decides a claim ("t" or "sign_flip"), the same for both runs.
      smallest_effect: the smallest effect of interest (fraction of accuracy) a supported
        claim's CI must clear, the same for both runs.

    Returns:
      The ``Comparison``: its ``claims`` hold every primary claim of either run (moved ones
      first, then in run A's Answer order), ``moved`` those whose decision differs,
      ``agreement`` the share of claims supported in either run that are supported in both
      with the same sign.

    Raises:
      ResultsError: a directory holds no results or a malformed record.

    Example:
      >>> c = compare_studies("runs/study", "runs/study_b")  # doctest: +SKIP
      >>> [m.change() for m in c.moved]  # doctest: +SKIP
      ['support moved', 'sign flipped']
    """
    a = load_study(dir_a, test, smallest_effect)
    b = load_study(dir_b, test, smallest_effect)
    keys = list(a.claims) + [k for k in b.claims if k not in a.claims]
    matched = [Matched(k, a.claims.get(k), b.claims.get(k)) for k in keys]
    matched.sort(key=lambda m: not m.moved)  # stable: Answer order within each group
    return Comparison(a, b, matched, test, smallest_effect)


# ---- Markdown ------------------------------------------------------------------------------------


def _figures(claim: Claim | None, other: Claim | None) -> str:
    """One run's version of a claim: decision, estimate, CI, n, Holm p (and MDE)."""
    if claim is None:
        return "absent"
    c = claim.test
    # The contrast column names the sides when both runs compare the same cells; otherwise
    # (the runs picked different "best" strategies) each run's cell names its own.
    same_sides = other is not None and (other.x, other.y) == (claim.x, claim.y)
    sides = "" if same_sides else f"{claim.x} − {claim.y}: "
    if claim.decision == "not enough seeds":
        return f"{sides}not enough seeds ({pp(c.estimate)})"
    text = (
        f"{sides}{claim.decision}: {pp(c.estimate)} (95% CI {100 * c.low:+.2f} to "
        f"{100 * c.high:+.2f}, n={c.n}, Holm p={p_text(claim.p_adjusted)}"
    )
    if claim.below_interest:
        text += f"; inside {interest(claim)}"
    if claim.decision == "not supported" and math.isfinite(claim.mde):
        text += f"; detects ≥ {100 * claim.mde:.2f} pp"
    return text + ")"


def _row(m: Matched, settings_moved: list[str]) -> list[str]:
    question, problem, role, slot, metric = m.key
    contrast = f"{role} ({METRIC_NAMES.get(metric, metric)})"
    if m.a is not None and m.b is not None and (m.a.x, m.a.y) == (m.b.x, m.b.y):
        contrast += f": {m.a.x} − {m.a.y}"
    change = m.change() or "same"
    if m.moved and settings_moved:
        change += f"; setting moved: {', '.join(settings_moved)}"
    return [
        question,
        problem_label(problem),
        slot,
        contrast,
        _figures(m.a, m.b),
        _figures(m.b, m.a),
        change,
    ]


def _run_lines(name: str, study: Study) -> list[str]:
    counts = family_counts(list(study.claims.values()))
    families = ", ".join(f"{q.key} {counts[q.key][0]} of {counts[q.key][1]}" for q in QUESTIONS)
    chosen_on = seed_list(study.selection_seeds) if study.selection_seeds else "none (fixed)"
    return [
        (
            f"- **Run {name}**: `{study.path}` — confirmation seeds {seed_list(study.seeds)} "
            f"({len(study.seeds)}), selection seeds {chosen_on}; supported: {families}."
        ),
        *[f"  - left out: {line}" for line in study.warnings],
    ]


def _seed_lines(comparison: Comparison) -> list[str]:
    a, b = comparison.a, comparison.b
    shared = sorted(set(a.seeds) & set(b.seeds))
    disjoint = "yes" if comparison.disjoint else f"no (shared: {seed_list(shared)})"
    same_selection = (
        "the same in both runs" if a.selection_seeds == b.selection_seeds else "different"
    )
    return [
        f"- **Confirmation seeds disjoint**: {disjoint}.",
        f"- **Selection seeds**: {same_selection}.",
    ]


def _selection_lines(comparison: Comparison) -> list[str]:
    moved = comparison.selections_moved()
    both = sum(key in comparison.b.selected for key in comparison.a.selected)
    if not both:
        return []
    lines = [
        (
            f"- **Selected hyperparameters**: {len(moved)} of the {both} tuned cells of both runs "
            "selected another setting."
        ),
    ]
    if moved:
        rows = [[name, setting_label(x), setting_label(y)] for name, x, y in moved]
        lines += ["", markdown_table(["cell", "run A", "run B"], rows)]
    return lines


def _interest(smallest_effect: float) -> str:
    if smallest_effect == 0.0:
        return "0"
    return f"±{100 * smallest_effect:.2g} pp, the smallest effect of interest"


def write_comparison(comparison: Comparison, path: str | Path) -> Path:
    """Write the comparison as Markdown: the runs and their seeds, the agreement, then a table
    of every primary claim, the moved ones first.

    Args:
      comparison: from ``compare_studies``.
      path: the file to write (its directory is created).

    Returns:
      ``path``.

    Example:
      >>> write_comparison(compare_studies("a", "b"), "a/comparison.md")  # doctest: +SKIP
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    c = comparison
    solid, with_settings = c.solid_agreement_line(), c.moved_with_settings_line()
    consistency, expected = c.consistency_line(), c.expected_agreement_line()
    lines = [
        "# Replication: primary claims of two runs",
        "",
        *_run_lines("A", c.a),
        *_run_lines("B", c.b),
        *_seed_lines(c),
        f"- **Agreement**: {c.agreement_line()}",
        *([f"- **Claims not marked fragile**: {solid}"] if solid else []),
        *([f"- **Expected from power**: {expected}"] if expected else []),
        *([f"- **Estimates**: {consistency}"] if consistency else []),
        f"- **Decisions that differ**: {len(c.moved)} of {len(c.claims)} primary claims.",
        *([f"- **Moved with a setting**: {with_settings}"] if with_settings else []),
        *_selection_lines(c),
        "",
        (
            "Primary claims are the Answer's declared families (Holm within each question's "
            f"family, decided by the {'paired t' if c.test == 't' else 'exact sign-flip'} p), "
            "matched by question, problem, contrast, data size and metric. A claim is *supported* "
            f"(better or worse; its 95% CI beyond {_interest(c.smallest_effect)}) or *not "
            "supported*; a claim that is not supported in one run and "
            "supported in the other has moved, which is not a contradiction unless the signs "
            "differ. A supported claim is *fragile* when its Holm p is above 0.025 or its CI "
            "ends within 1 pp of 0 (the report's mark). Estimates are in pp."
        ),
        "",
        markdown_table(
            ["question", "problem", "where", "contrast", "run A", "run B", "change"],
            [_row(m, c.settings_moved(m)) for m in c.claims],
        ),
        "",
    ]
    path.write_text("\n".join(lines))
    return path
