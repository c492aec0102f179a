"""The Answer's declared claim families: Holm within each question's family, "best" picked on
validation loss and never on the reported seeds' test accuracy, and every claim that is not
supported stating the smallest effect the run could have detected."""

from __future__ import annotations

import re

import numpy as np
import pytest
from report_records import cell, tuned_block, write

from jaxtl.report import load_results, write_report
from jaxtl.report.answer import answer_section
from jaxtl.report.cells import group_cells
from jaxtl.report.claims import adjust_family
from jaxtl.report.families import answer_claims, family_counts
from jaxtl.report.literature import literature_section
from jaxtl.report.stats import detectable_effect, minimum_detectable_effect

PARAMS = {"dataset_a": "a", "dataset_b": "b", "model": "mlp"}
# full_ft - scratch per seed: paired t p = 0.018 with 5 seeds, between 0.05/6 and 0.05/2.
GAIN = (0.01, 0.05, 0.02, 0.06, 0.04)
# Words that state an absence of effect where the data only failed to show one.
ABSENCE = re.compile(
    r"indistinguishable|no effect|does not count|no difference|freezing is optional|"
    r"no supported difference|shows no transfer",
    re.IGNORECASE,
)


def two_sizes() -> list[dict]:
    """Q2 gains at two sizes with p = 0.018 each; Q1's frozen strategy ahead by noise only."""
    records = []
    for size in (5, 20):
        params = {**PARAMS, "n_per_class": size}
        records += cell("strategies", "scratch", params, 0.6, acc_a=0.2)
        records += cell("strategies", "full_ft", params, 0.6, GAIN, acc_a=[0.5, 0.6, 0.4, 0.5, 0.6])
        records += cell(
            "strategies", "linear_probe", params, 0.6, (0.02, -0.01, 0.0, -0.02, 0.01),
            acc_a=[0.55, 0.5, 0.45, 0.6, 0.5],
        )  # fmt: skip
    return records


def claims_of(tmp_path, records):
    return answer_claims(group_cells(load_results(write(tmp_path, records))))


def test_holm_runs_within_each_question_family(tmp_path):
    claims = claims_of(tmp_path, two_sizes())
    q2 = [c for c in claims if c.question == "Q2"]
    assert [round(c.test.p, 3) for c in q2] == [0.018, 0.018]
    # Alone, Q2's two claims survive Holm (2 x 0.018 < 0.05) ...
    assert [c.decision for c in q2] == ["better", "better"] and {c.family for c in q2} == {2}
    assert {c.family for c in claims if c.question == "Q1"} == {4}  # on B and on A, 2 sizes
    assert {c.family for c in claims if c.question == "Q3"} == {2}
    # ... pooled with Q1's and Q3's claims as one family (6 distinct contrasts) they would not.
    pooled = adjust_family(claims)
    assert {c.family for c in pooled} == {6}
    assert [c.decision for c in pooled if c.question == "Q2"] == ["not supported"] * 2
    assert family_counts(claims) == {"Q1": (0, 4), "Q2": (2, 2), "Q3": (0, 2)}


def test_the_rule_states_the_families_and_their_sizes(tmp_path):
    text = write_report(write(tmp_path, two_sizes())).read_text()
    answer = text.split("## Answer", 1)[1].split("\n## ", 1)[0]
    assert (
        "per model × A→B pair × data size (Yosinski: AnB vs AnB+ per copied depth) — 4 " in answer
    )
    assert "full_ft − scratch per model × A→B pair × data size" in answer
    assert "— 2 tested claims; **Q3**" in answer and "Holm runs within each family" in answer
    assert "*Family Q2*: 2 of 2 tested claims supported (Holm within this family)." in answer
    assert "*Family Q1*: 0 of 4 tested claims supported" in answer
    assert "### Where model families disagree (exploratory)" in answer
    summary = text.split("## Summary", 1)[1].split("\n## ", 1)[0]
    assert "**Claims supported** (primary, Holm within each question's family): Q1 0 of 4, " in (
        summary
    )
    assert "Q2 2 of 2, Q3 0 of 2" in summary
    assert "## Literature check (exploratory)" in text
    assert not ABSENCE.search(text), ABSENCE.search(text)


def test_a_claim_that_is_not_supported_states_its_minimum_detectable_effect(tmp_path):
    cells = group_cells(load_results(write(tmp_path, two_sizes())))
    # Q1 on B at 5/class: linear_probe - full_ft per seed, in a family of 4.
    d = np.array([0.02, -0.01, 0.0, -0.02, 0.01]) - GAIN
    sd = float(d.std(ddof=1))

    def line_of(answer: str) -> str:
        q1 = answer.split("### Q1", 1)[1].split("### Q2", 1)[0]
        return next(x for x in q1.splitlines() if x.startswith("- **5/class**"))

    # Without a smallest effect of interest: the paired t test's own MDE (G*Power's value).
    line = line_of(answer_section(cells, smallest_effect=0.0))
    assert line.startswith(
        f"- **5/class**: not supported: linear_probe − full_ft = {100 * d.mean():+.2f} pp on "
        "accuracy on B (paired over 5 seeds: 95% CI "
    )
    mde = minimum_detectable_effect(sd, 5, 0.05 / 4)
    assert (
        f"; this run would detect ≥ {100 * mde:.2f} pp with 80% power (paired t, α/m = "
        "0.05/4 = 0.013)" in line
    )
    # With a smallest effect of interest, detection also needs the CI beyond it: a larger effect.
    beyond = detectable_effect(sd / 5**0.5, 4, 0.05 / 4, smallest_effect=0.005)
    assert beyond > mde
    assert (
        f"; this run would detect ≥ {100 * beyond:.2f} pp with 80% power (paired t, CI beyond "
        "±0.50 pp, α/m = 0.05/4 = 0.013)" in line_of(answer_section(cells, smallest_effect=0.005))
    )


def tuned_slot(frozen_test: float) -> list[dict]:
    """One data size, every cell tuned: freeze_first_k has the lowest validation loss of the
    frozen strategies, linear_probe the highest mean test accuracy on B (``frozen_test``)."""
    params = {**PARAMS, "n_per_class": 5}

    def block(loss: float) -> dict:
        return tuned_block({"lr": 1e-3}, [({"lr": 1e-3}, [loss] * 5, [0.7] * 5)])

    return (
        cell("strategies", "full_ft", params, 0.75, protocol=block(0.4))
        + cell("strategies", "scratch", params, 0.6, protocol=block(0.8))
        + cell("strategies", "freeze_first_k", params, 0.7, protocol=block(0.5))
        + cell("strategies", "linear_probe", params, frozen_test, protocol=block(0.9))
    )


@pytest.mark.parametrize("linear_probe_test", [0.8, 0.99])
def test_best_is_picked_on_validation_loss_never_on_test_accuracy(tmp_path, linear_probe_test):
    # Poisoning the confirmation seeds' test accuracy leaves the choice where it was.
    claims = claims_of(tmp_path, tuned_slot(linear_probe_test))
    q1, q3 = (
        next(c for c in claims if c.question == q and c.metric == "acc_b") for q in ("Q1", "Q3")
    )
    assert (q1.x, q1.y, q3.x, q3.y) == ("freeze_first_k", "full_ft", "freeze_first_k", "full_ft")
    assert q1.note == "" and q3.note == ""


def test_without_validation_data_best_is_picked_on_test_accuracy_and_says_so(tmp_path):
    records = tuned_slot(0.8)
    for r in records:
        del r["protocol"]
    answer = answer_section(group_cells(load_results(write(tmp_path, records))))
    q1 = answer.split("### Q1", 1)[1].split("### Q2", 1)[0]
    assert "linear_probe is better than full_ft on accuracy on B" in q1
    assert "(best frozen picked on test accuracy: fixed protocol, no validation data)" in q1
    q3 = answer.split("### Q3", 1)[1]
    assert "best trains-everything picked on test accuracy: fixed protocol" in q3


def test_literature_claims_that_are_not_supported_state_what_was_detectable(tmp_path):
    records = []
    jitters = {5: (0.01, 0.0, -0.01, 0.02, 0.0), None: (0.0, 0.02, 0.0, -0.01, 0.01)}
    for size, gap in ((5, 0.1), (None, 0.09)):
        params = {**PARAMS, "n_per_class": size}
        records += cell("strategies", "scratch", params, 0.6)
        records += cell("strategies", "full_ft", params, 0.6 + gap, jitters[size])
    text = literature_section(group_cells(load_results(write(tmp_path, records))))
    assert text.startswith("## Literature check (exploratory)\n\n**Exploratory**")
    row = next(x for x in text.splitlines() if x.startswith("| the gain from transfer"))
    # Its own family of 2 (with He et al.'s claim at the largest size).
    d = 0.01 + np.array(jitters[5]) - jitters[None]
    mde = minimum_detectable_effect(float(d.std(ddof=1)), 5, 0.05 / 2)
    assert f"= {100 * d.mean():+.2f} pp" in row and "**same direction, not supported**" in row
    assert f"this run would detect ≥ {100 * mde:.2f} pp with 80% power" in row
    assert "α/m = 0.05/2 = 0.025" in row
