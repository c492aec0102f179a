"""The Answer and Literature check: per-problem Q1-Q3 from any experiment, paired claims, Holm,
fragile marks, model-family disagreement and the published effects."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from report_records import SEED_EFFECT, cell, write
from scipy import stats

from jaxtl.report import load_results
from jaxtl.report.answer import answer_claims, answer_section
from jaxtl.report.cells import group_cells
from jaxtl.report.literature import literature_section
from jaxtl.report.stats import SMALLEST_EFFECT, minimum_detectable_effect


def answer_of(
    tmp_path: Path, records: list[dict], test: str = "t", smallest_effect: float = SMALLEST_EFFECT
) -> str:
    cells = group_cells(load_results(write(tmp_path, records)))
    return answer_section(cells, test, smallest_effect=smallest_effect)


def cross_domain(model="cnn", lift=0.1, pair=("mnist", "usps")) -> list[dict]:
    records = []
    for size, extra in ((5, 0.0), (None, 0.2)):
        params = {"dataset_a": pair[0], "dataset_b": pair[1], "model": model, "n_per_class": size}
        records += cell("cross_domain", "scratch", params, 0.5 + extra, (0.0, 0.01, -0.01, 0, 0))
        records += cell(
            "cross_domain", "full_ft", params, 0.5 + extra + lift, (0.01, 0.0, 0.0, -0.01, 0.0)
        )
        records += cell("cross_domain", "linear_probe", params, 0.55 + extra, (0, 0, 0.01, 0, 0))
    return records


def test_answer_of_a_cross_domain_only_results_directory_is_computed(tmp_path):
    answer = answer_of(tmp_path, cross_domain())
    assert "No data size" not in answer
    assert "### cross_domain: mnist → usps (cnn)" in answer
    ft = 0.6 + np.array(SEED_EFFECT) + [0.01, 0.0, 0.0, -0.01, 0.0]
    sc = 0.5 + np.array(SEED_EFFECT) + [0.0, 0.01, -0.01, 0, 0]
    ref = stats.ttest_rel(ft, sc)
    half = stats.t.ppf(0.975, 4) * stats.sem(ft - sc)
    expected = (
        f"- **5/class**: transfer counts: full_ft is better than scratch on accuracy on B by "
        f"{100 * (ft - sc).mean():.2f} pp (paired over 5 seeds: 95% CI "
        f"{100 * ((ft - sc).mean() - half):+.2f} to {100 * ((ft - sc).mean() + half):+.2f} pp"
    )
    assert expected in answer
    assert f"p={ref.pvalue:.1e}" in answer and "sign-flip p=0.062" in answer
    assert "linear_probe is worse than full_ft on accuracy on B by 4.80 pp" in answer


def test_unpaired_cells_fall_back_to_welch_and_say_so(tmp_path):
    params = {"dataset_a": "a", "dataset_b": "b", "model": "mlp", "n_per_class": 5}
    records = cell("strategies", "full_ft", params, 0.8, seeds=(0, 1, 2)) + cell(
        "strategies", "scratch", params, 0.6, seeds=(5, 6, 7)
    )
    answer = answer_of(tmp_path, records)
    assert "Welch, unpaired: the cells share < 2 seeds, n=3 vs 3" in answer


def test_holm_turns_two_marginal_claims_into_no_claim(tmp_path):
    # Two sizes, each with raw p in (0.025, 0.05): Holm multiplies the smaller by 2.
    records = []
    for size, d in ((5, (0.02, 0.03, 0.015, 0.04, 0.0)), (20, (0.03, 0.015, 0.025, 0.04, 0.0))):
        params = {"dataset_a": "a", "dataset_b": "b", "model": "mlp", "n_per_class": size}
        records += cell("strategies", "scratch", params, 0.6)
        records += cell("strategies", "full_ft", params, 0.6, d)
    # Holm's step alone: no smallest effect of interest.
    claims = answer_claims(group_cells(load_results(write(tmp_path, records))), smallest_effect=0)
    assert len(claims) == 2
    for c in claims:
        assert 0.025 < c.test.p < 0.05 and c.p_adjusted >= 0.05
        assert c.decision == "not supported"
    one = answer_claims(
        group_cells(load_results(write(tmp_path / "one", records[10:]))), smallest_effect=0
    )
    assert [c.decision for c in one] == ["better"]  # the same claim in a family of one


def test_fragile_and_sign_flip_decision(tmp_path):
    params = {"dataset_a": "a", "dataset_b": "b", "model": "mlp", "n_per_class": 5}
    records = cell("strategies", "scratch", params, 0.6) + cell(
        "strategies", "full_ft", params, 0.605, (0.0, 0.001, -0.001, 0.0, 0.0)
    )
    answer = answer_of(tmp_path / "t", records, smallest_effect=0)
    assert "full_ft is better than scratch on accuracy on B by 0.50 pp" in answer
    assert "— *fragile*" in answer  # the CI's lower end is within 1 pp of 0
    # The exact sign-flip p cannot go below 2/2^5 = 0.0625 with 5 seeds: no claim.
    flipped = answer_of(tmp_path / "s", records, test="sign_flip", smallest_effect=0)
    assert "transfer not supported: full_ft − scratch = +0.50 pp" in flipped
    assert "— *fragile*" not in flipped
    # Nor could any effect have been: the floor 2/2^5 is above alpha / m = 0.05.
    assert "the exact sign-flip p cannot fall below 2/2^5, so no effect of any size" in flipped


def test_a_significant_effect_inside_the_smallest_effect_of_interest_is_not_supported(tmp_path):
    # +0.5 pp, Holm p 5e-05, 95% CI +0.41 to +0.59 pp: beyond 0 but inside ±0.6 pp.
    params = {"dataset_a": "a", "dataset_b": "b", "model": "mlp", "n_per_class": 5}
    records = cell("strategies", "scratch", params, 0.6) + cell(
        "strategies", "full_ft", params, 0.605, (0.0, 0.001, -0.001, 0.0, 0.0)
    )
    cells = group_cells(load_results(write(tmp_path, records)))
    (beyond,) = answer_claims(cells, smallest_effect=0.004)
    (inside,) = answer_claims(cells, smallest_effect=0.006)
    assert beyond.decision == "better" and not beyond.below_interest
    assert inside.decision == "not supported" and inside.below_interest
    assert inside.p_adjusted < 0.001 and 0.004 < inside.test.low < 0.006
    answer = answer_section(cells, smallest_effect=0.006)
    assert (
        "transfer not supported: full_ft − scratch = +0.50 pp on accuracy on B (paired over 5 "
        "seeds: 95% CI +0.41 to +0.59 pp"
    ) in answer
    assert (
        "significant after Holm, but its interval reaches inside ±0.60 pp, the smallest" in answer
    )
    assert "the 95% CI lies wholly beyond ±0.6 pp, the smallest effect of interest" in answer


def test_model_families_disagreement_is_reported(tmp_path):
    records = cross_domain("cnn", lift=0.1) + cross_domain("mlp", lift=0.0)
    answer = answer_of(tmp_path, records)
    section = answer.split("### Where model families disagree (exploratory)", 1)[1]
    # The mlp's per-seed differences full_ft - scratch are the two cells' jitters; Q2's family
    # holds 4 claims (2 models x 2 sizes).
    d = np.array([0.01, 0.0, 0.0, -0.01, 0.0]) - [0.0, 0.01, -0.01, 0, 0]
    mde = minimum_detectable_effect(float(d.std(ddof=1)), 5, 0.05 / 4)
    assert (
        "- cross_domain: mnist → usps, Q2 full_ft vs scratch at 5/class: cnn: full_ft better "
        f"(+10.00 pp); mlp: not supported (+0.00 pp, detects ≥ {100 * mde:.2f} pp)." in section
    )
    assert (
        "Q1 best frozen vs full_ft at all: cnn: linear_probe worse (-4.80 pp); "
        "mlp: linear_probe better (+5.20 pp)." in section
    )
    same = answer_of(tmp_path / "same", cross_domain("cnn") + cross_domain("mlp"))
    assert "- cross_domain: mnist → usps: cnn and mlp agree on all 6 shared comparisons" in same


def test_yosinski_and_surgical_problems_get_their_own_questions(tmp_path):
    pair = {"dataset_a": "a", "dataset_b": "a", "model": "cnn", "n_per_class": None}
    records = cell("yosinski", "baseB", pair, 0.8)
    for depth in (1, 2, 3):
        at = {**pair, "depth": depth}
        records += cell("yosinski", "AnB", at, 0.8 - 0.05 * depth, (0, 0.01, 0, 0, 0))
        records += cell("yosinski", "AnB+", at, 0.82, (0, 0, 0.01, 0, 0))
        records += cell(
            "yosinski", "BnB", at, 0.8 - (0.06 if depth == 2 else 0), (0.01, 0, 0, 0, 0)
        )
    answer = answer_of(tmp_path, records)
    assert "### yosinski: a → a (cnn)" in answer
    assert "- **n=2**: transfer counts: AnB+ n=2 is better than baseB" in answer
    assert "- **n=3**: AnB n=3 is worse than AnB+ n=3 on accuracy on B by 17.00 pp" in answer
    literature = literature_section(group_cells(load_results(tmp_path)))
    row = lambda start: next(line for line in literature.splitlines() if line.startswith(start))
    assert "AnB n=1 − AnB n=3 = +10.00 pp" in row("| AnB (frozen copied layers) falls")
    assert "**reproduced (supported)**" in row("| AnB (frozen copied layers) falls")
    assert "BnB n=2 = +6.00 pp" in row("| BnB dips") and "reproduced" in row("| BnB dips")
    # Effects these runs cannot test get no row, only a count.
    assert not any(line.startswith("| LP-FT") for line in literature.splitlines())
    assert "8 of the 11 published effects need cells these runs do not have" in literature


def _strategies_with_ood(lp_ft_ood: float) -> list[dict]:
    params = {"dataset_a": "a", "dataset_b": "b", "model": "mlp", "n_per_class": 5}
    return (
        cell("strategies", "full_ft", params, 0.8, acc_ood=0.5, acc_a=0.3)
        + cell("strategies", "lp_ft", params, 0.8, (0.01, 0.0, 0.0, 0.0, 0.0), acc_ood=lp_ft_ood)
        + cell("strategies", "linear_probe", params, 0.7, acc_ood=0.6, acc_a=0.9)
    )


def test_literature_verdict_follows_the_numbers(tmp_path):
    helps = literature_section(
        group_cells(load_results(write(tmp_path / "a", _strategies_with_ood(0.6))))
    )
    hurts = literature_section(
        group_cells(load_results(write(tmp_path / "b", _strategies_with_ood(0.4))))
    )
    line = lambda text, start: next(x for x in text.splitlines() if x.startswith(start))
    ood = "| LP-FT ≥ FT out of distribution"
    assert "lp_ft − full_ft = +10.00 pp" in line(helps, ood)
    assert "**reproduced (supported)**" in line(helps, ood)
    assert "lp_ft − full_ft = -10.00 pp" in line(hurts, ood)
    assert "**contradicted (supported)**" in line(hurts, ood)
    assert "same direction, not supported" in line(helps, "| LP-FT ≥ FT in distribution")
    assert "**reproduced (supported)**" in line(helps, "| FT < LP out of distribution")
    assert "linear_probe (least retentive frozen) − full_ft = +60.00 pp" in line(
        helps, "| frozen strategies retain A"
    )
    assert not any(x.startswith("| gradual_unfreeze ≥ full_ft") for x in helps.splitlines())


def test_lee_best_group_follows_the_shift_level(tmp_path):
    records = []
    for shift, level, best in (("perm", "input", "stem"), ("labels", "output", "block1")):
        base = {"dataset_a": "m", "dataset_b": "m", "model": "cnn", "n_per_class": 20}
        base |= {"shift": shift, "level": level}
        for group, acc in (("stem", 0.6), ("block1", 0.65), ("head", 0.62)):
            bump = 0.1 if group == best else 0.0
            records += cell("surgical", "surgical", {**base, "tuned_group": group}, acc + bump)
        records += cell("surgical", "full_ft", base, 0.6)
    text = literature_section(group_cells(load_results(write(tmp_path, records))))
    rows = [x for x in text.splitlines() if x.startswith("| the best single tuned group")]
    assert len(rows) == 2
    (output,) = [r for r in rows if "output shift" in r]
    (inputs,) = [r for r in rows if "input shift" in r]
    assert "tuning stem (predicted) − tuning block1 (best other group) = +5.00 pp" in inputs
    assert "reproduced (supported)" in inputs
    assert "tuning head (predicted) − tuning block1 (best other group) = -13.00 pp" in output
    assert "contradicted (supported)" in output


def test_gain_from_transfer_shrinking_is_a_paired_contrast(tmp_path):
    text = literature_section(group_cells(load_results(write(tmp_path, cross_domain()))))
    row = next(x for x in text.splitlines() if x.startswith("| the gain from transfer"))
    # Gap 10 pp at 5/class and 10 pp at all data: no shrinkage, per-seed jitter only.
    assert "(full_ft − scratch) at 5/class − (full_ft − scratch) at all = +0.00 pp" in row
    assert "not supported" in row


def test_p_values_are_finite_or_nan_only_when_untested(tmp_path):
    claims = answer_claims(group_cells(load_results(write(tmp_path, cross_domain()))))
    assert claims and all(0.0 <= c.p_adjusted <= 1.0 for c in claims)
    assert not any(math.isnan(c.test.sign_flip_p) for c in claims)


def test_wall_time_of_parts_trained_at_once_is_not_called_a_timing():
    from jaxtl.report.cells import group_cells
    from jaxtl.report.wording import cost_phrase

    probe = cell("strategies", "linear_probe", {"n_per_class": 5}, 0.7)
    full = cell("strategies", "full_ft", {"n_per_class": 5}, 0.8)
    for i, (p, f) in enumerate(zip(probe, full)):
        p["metrics"]["wall_time_s"], f["metrics"]["wall_time_s"] = 1.0 + 0.01 * (i - 2), 4.0
    x, y = group_cells(probe)[0], group_cells(full)[0]
    assert cost_phrase(x, y).endswith("and 75% less wall time (0.25×, supported)")
    full[2]["config"] = {"parallel_parts": 2}
    y = group_cells(full)[0]
    assert cost_phrase(x, y).endswith(
        "and 75% less wall time (0.25×, measured with 2 study parts training at once, so not a"
        " timing)"
    )
