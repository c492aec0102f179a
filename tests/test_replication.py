"""Replication: two study directories with disjoint confirmation seeds, their primary claims
matched, the ones that moved listed first, and the agreement on supported claims."""

from __future__ import annotations

import math

import pytest
from report_records import cell, tuned_block, write

from jaxtl.report import ResultsError
from jaxtl.report.replication import compare_studies, write_comparison

PARAMS = {"dataset_a": "a", "dataset_b": "b", "model": "cnn"}
FT_JITTER = (0.01, 0.0, -0.01, 0.02, 0.0)
LP_JITTER = (0.02, -0.01, 0.0, -0.02, 0.01)
# Validation losses that make full_ft the best strategy that trains everything (and
# linear_probe the only frozen one) in both runs.
LOSS = {"full_ft": 0.4, "scratch": 0.8, "linear_probe": 0.9}


def block(strategy: str, selected_lr: float = 1e-3) -> dict:
    grid = [({"lr": lr}, [LOSS[strategy] + (lr > 2e-3)] * 5, [0.7] * 5) for lr in (1e-3, 1e-2)]
    return tuned_block({"lr": selected_lr}, grid)


def study(seeds, gain_at_20: float, probe_at_5: float, scratch_lr_at_20: float = 1e-3):
    """full_ft − scratch: +10 pp at 5/class, ``gain_at_20`` at 20/class; linear_probe −
    full_ft: ``probe_at_5`` at 5/class, jitter only at 20/class."""
    records = []
    for size, gain, probe in ((5, 0.1, probe_at_5), (20, gain_at_20, 0.0)):
        params = {**PARAMS, "n_per_class": size}
        scratch_lr = scratch_lr_at_20 if size == 20 else 1e-3
        records += cell("strategies", "scratch", params, 0.6, seeds=seeds,
                        protocol=block("scratch", scratch_lr))  # fmt: skip
        records += cell("strategies", "full_ft", params, 0.6 + gain, FT_JITTER, seeds=seeds,
                        protocol=block("full_ft"))  # fmt: skip
        records += cell("strategies", "linear_probe", params, 0.6 + gain + probe, LP_JITTER,
                        seeds=seeds, protocol=block("linear_probe"))  # fmt: skip
    return records


@pytest.fixture
def runs(tmp_path):
    a = write(tmp_path / "a", study(range(5), gain_at_20=0.1, probe_at_5=0.05))
    b_records = study(range(5, 10), gain_at_20=0.005, probe_at_5=-0.05, scratch_lr_at_20=1e-2)
    # Run B also has all of B's data for full_ft and scratch: a claim run A lacks.
    everything = {**PARAMS, "n_per_class": None}
    b_records += cell("strategies", "scratch", everything, 0.8, seeds=range(5, 10))
    b_records += cell("strategies", "full_ft", everything, 0.9, FT_JITTER, seeds=range(5, 10))
    return a, write(tmp_path / "b", b_records)


def test_claims_are_matched_and_the_moved_ones_come_first(runs):
    comparison = compare_studies(*runs)
    found = {(m.key[0], m.key[3]): m for m in comparison.claims}
    assert sorted(found) == [
        ("Q1", "20/class"), ("Q1", "5/class"), ("Q2", "20/class"), ("Q2", "5/class"),
        ("Q2", "all"), ("Q3", "20/class"), ("Q3", "5/class"),
    ]  # fmt: skip
    decisions = {k: (m.a and m.a.decision, m.b and m.b.decision) for k, m in found.items()}
    assert decisions[("Q2", "5/class")] == ("better", "better")
    assert decisions[("Q2", "20/class")] == ("better", "not supported")
    assert decisions[("Q1", "5/class")] == decisions[("Q3", "5/class")] == ("better", "worse")
    assert decisions[("Q1", "20/class")] == ("not supported", "not supported")
    assert decisions[("Q2", "all")] == (None, "better")
    changes = [(m.key[0], m.key[3], m.change()) for m in comparison.moved]
    # Moved first, each group in run A's Answer order (by size, then question).
    assert changes == [
        ("Q1", "5/class", "sign flipped"), ("Q3", "5/class", "sign flipped"),
        ("Q2", "20/class", "support moved"), ("Q2", "all", "only in run B"),
    ]  # fmt: skip
    assert comparison.claims[: len(comparison.moved)] == comparison.moved


def test_agreement_counts_claims_supported_in_either_run(runs):
    comparison = compare_studies(*runs)
    # Supported in either run: Q2 at 5/class (both), Q2 at 20/class (A), Q1 at 5/class
    # (opposite signs), Q2 at all (B only): one of four agrees. Q3 compares the same cells as
    # Q1 at both sizes (full_ft is the best that trains everything in both runs): at 5/class
    # that comparison is supported, and it counts once.
    assert comparison.repeats == {
        m.key for m in comparison.claims if m.key[0] == "Q3" and m.key[3] in ("5/class", "20/class")
    }
    assert comparison.agreement == pytest.approx(1 / 4)
    assert comparison.agreement_line() == (
        "Of the 4 distinct primary claims supported in either run (1 more repeats the comparison"
        " of a claim of an earlier question and counts once), 1 (25%) are supported in both with"
        " the same sign."
    )
    assert comparison.disjoint and comparison.a.seeds == (0, 1, 2, 3, 4)
    assert comparison.b.seeds == (5, 6, 7, 8, 9)
    assert comparison.selections_moved() == [
        ("strategies scratch, 20/class, a → b (cnn)", {"lr": 1e-3}, {"lr": 1e-2})
    ]


def test_a_moved_claim_names_the_cells_whose_selected_setting_moved_with_it(runs):
    comparison = compare_studies(*runs)
    reasons = {(m.key[0], m.key[3]): comparison.settings_moved(m) for m in comparison.moved}
    # scratch chose another lr at 20/class: the claim that compares it names it; the sign flip
    # at 5/class happened on the same settings; a claim run A lacks has no reason to give.
    assert reasons == {
        ("Q1", "5/class"): [], ("Q3", "5/class"): [], ("Q2", "all"): [],
        ("Q2", "20/class"): ["strategies scratch, 20/class, a → b (cnn)"],
    }  # fmt: skip
    assert comparison.moved_with_settings_line() == (
        "Of the 3 claims that moved, 1 compares a cell whose selected setting differs between the"
        " runs (or a different best strategy); 2 moved on the same settings (their seeds and"
        " arithmetic alone)."
    )


def test_jaxtl_compare_prints_how_many_moved_claims_moved_with_a_setting(runs, tmp_path, capsys):
    from jaxtl import cli

    assert cli.main(["compare", *map(str, runs), "--out", str(tmp_path / "cmp.md")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert compare_studies(*runs).moved_with_settings_line() in printed


def test_jaxtl_compare_decides_with_the_smallest_effect_it_is_given(runs, tmp_path, capsys):
    from jaxtl import cli

    out = tmp_path / "cmp.md"
    assert cli.main(["compare", *map(str, runs), "--out", str(out), "--smallest-effect", "1"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert compare_studies(*runs, smallest_effect=0.01).agreement_line() in printed
    assert "its 95% CI beyond ±1 pp, the smallest effect of interest)" in out.read_text()
    assert cli.main(["compare", *map(str, runs), "--out", str(out)]) == 0
    assert "its 95% CI beyond 0)" in out.read_text()
    for given, rule in (
        (["0.5"], "the 95% CI lies wholly beyond ±0.5 pp"),
        ([], "the 95% CI excl"),
    ):
        flag = ["--smallest-effect", *given] if given else []
        assert cli.main(["report", str(runs[0]), "--out", str(tmp_path / "r"), *flag]) == 0
        assert rule in (tmp_path / "r" / "report.md").read_text()
    with pytest.raises(SystemExit) as info:
        cli.main(["compare", *map(str, runs), "--smallest-effect", "-0.5"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        "jaxtl compare: error: argument --smallest-effect: '-0.5' is not a number of percentage"
        " points in [0, 100), e.g. 0.5 or 0"
    )


def test_a_smallest_effect_outside_zero_to_one_is_one_line_naming_the_range(runs):
    with pytest.raises(ValueError) as info:
        compare_studies(*runs, smallest_effect=float("nan"))
    assert str(info.value) == (
        "smallest effect of interest nan must be a fraction of accuracy in [0, 1) (e.g. 0.005 "
        "for 0.5 pp; 0 decides on the interval excluding 0)"
    )


def test_the_comparison_is_written_as_markdown(runs, tmp_path):
    path = write_comparison(compare_studies(*runs), tmp_path / "out" / "comparison.md")
    text = path.read_text()
    a, b = runs
    assert f"- **Run A**: `{a}` — confirmation seeds 0–4 (5), selection seeds 1000–1004" in text
    assert f"- **Run B**: `{b}` — confirmation seeds 5–9 (5)" in text
    assert "supported: Q1 1 of 2, Q2 2 of 2, Q3 1 of 2." in text  # run A's families
    assert "- **Confirmation seeds disjoint**: yes." in text
    assert "- **Selection seeds**: the same in both runs." in text
    assert (
        "- **Agreement**: Of the 4 distinct primary claims supported in either run (1 more" in text
    )
    assert "- **Decisions that differ**: 4 of 7 primary claims." in text
    assert "1 of the 6 tuned cells of both runs selected another setting" in text
    rows = [line for line in text.splitlines() if line.startswith("| Q")]
    assert [r.rsplit("|", 2)[-2].strip() for r in rows] == [
        "sign flipped", "sign flipped",
        "support moved; setting moved: strategies scratch, 20/class, a → b (cnn)",
        "only in run B", "same", "same", "same",
    ]  # fmt: skip
    assert "- **Moved with a setting**: Of the 3 claims that moved, 1 compares" in text
    q2 = next(r for r in rows if "| Q2 |" in r and "20/class" in r)
    assert "| better: +10.40 pp (95% CI " in q2 and ", n=5, Holm p=" in q2
    assert "| not supported: +0.90 pp (95% CI " in q2 and "; detects ≥ " in q2


def test_a_run_compared_with_itself_agrees_everywhere(runs):
    a, _ = runs
    comparison = compare_studies(a, a)
    assert comparison.moved == [] and comparison.agreement == 1.0
    assert not comparison.disjoint and comparison.selections_moved() == []


def test_a_directory_without_results_is_a_one_line_error(runs, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResultsError, match="no results.json found under"):
        compare_studies(runs[0], tmp_path / "empty")


def test_q3_counts_as_its_own_claim_where_a_run_picked_another_best(tmp_path, monkeypatch):
    a = write(tmp_path / "a", study(range(5), gain_at_20=0.1, probe_at_5=0.05))
    # Run B's validation losses make scratch the best that trains everything: its Q3 compares
    # linear_probe with scratch, another comparison than Q1's, so nothing repeats.
    monkeypatch.setitem(LOSS, "scratch", 0.3)
    b = write(tmp_path / "b", study(range(5, 10), gain_at_20=0.1, probe_at_5=0.05))
    comparison = compare_studies(a, b)
    q3 = next(m for m in comparison.claims if m.key[0] == "Q3" and m.key[3] == "5/class")
    assert (q3.a.y, q3.b.y) == ("full_ft", "scratch")
    assert q3.key not in comparison.repeats


def test_claims_marked_fragile_are_left_out_of_the_second_agreement(tmp_path):
    # Q2 at 20/class: +1.5 pp in run A, supported but fragile (its CI ends 0.5 pp above 0);
    # nothing in run B. The other supported claims (Q1 = Q3 and Q2 at 5/class) agree.
    a = write(tmp_path / "a", study(range(5), gain_at_20=0.015, probe_at_5=0.05))
    b = write(tmp_path / "b", study(range(5, 10), gain_at_20=0.0, probe_at_5=0.05))
    comparison = compare_studies(a, b, smallest_effect=0.0)
    q2 = next(m for m in comparison.claims if m.key[0] == "Q2" and m.key[3] == "20/class")
    assert q2.a.supported and q2.a.fragile and not q2.b.supported and q2.moved
    assert comparison.agreement == pytest.approx(2 / 3)
    assert comparison.solid_agreement == 1.0
    assert comparison.solid_agreement_line() == (
        "Of the 2 claims supported without a fragile mark in either run, 2 (100%) are supported in"
        " both with the same sign."
    )
    text = write_comparison(comparison, tmp_path / "comparison.md").read_text()
    assert f"- **Claims not marked fragile**: {comparison.solid_agreement_line()}" in text


def test_estimates_are_compared_within_their_prediction_interval(runs):
    comparison = compare_studies(*runs)
    by_key = {(m.key[0], m.key[3], m.key[4]): m for m in comparison.claims}
    same = by_key[("Q2", "5/class", "acc_b")]  # +10 pp in both runs
    flipped = by_key[("Q1", "5/class", "acc_b")]  # +5 pp against -5 pp
    assert same.consistent is True and flipped.consistent is False
    a, b = flipped.a.test, flipped.b.test
    assert abs(a.estimate - b.estimate) > 1.96 * (a.se**2 + b.se**2) ** 0.5
    assert by_key[("Q2", "all", "acc_b")].consistent is None  # only run B has it
    compared = [
        m for m in comparison.claims if m.key not in comparison.repeats and m.consistent is not None
    ]
    agree = sum(m.consistent for m in compared)
    assert comparison.consistency_line().startswith(
        f"The estimates of {agree} of the {len(compared)} distinct primary claims both runs compare"
    )
    assert 0 < agree < len(compared)


def test_a_claim_inside_the_smallest_effect_of_interest_is_not_supported_in_either_run(tmp_path):
    # The fragile claim above (+1.5 pp, CI from +0.5 pp) with a smallest effect of 1 pp: its
    # interval reaches inside it, so neither run supports it and it no longer moves.
    a = write(tmp_path / "a", study(range(5), gain_at_20=0.015, probe_at_5=0.05))
    b = write(tmp_path / "b", study(range(5, 10), gain_at_20=0.0, probe_at_5=0.05))
    comparison = compare_studies(a, b, smallest_effect=0.01)
    q2 = next(m for m in comparison.claims if m.key[0] == "Q2" and m.key[3] == "20/class")
    assert q2.a.p_adjusted < 0.05 and q2.a.test.low > 0
    assert q2.a.decision == "not supported" and q2.a.below_interest and not q2.moved
    assert comparison.agreement == 1.0
    text = write_comparison(comparison, tmp_path / "comparison.md").read_text()
    assert "its 95% CI beyond ±1 pp, the smallest effect of interest" in text
    assert "; inside ±1.00 pp; detects ≥" in text


def test_the_expected_agreement_follows_from_each_claims_power(runs):
    comparison = compare_studies(*runs)
    powers = [
        (m.a.power + m.b.power) / 2
        for m in comparison.claims
        if m.key not in comparison.repeats and m.a is not None and m.b is not None
    ]
    powers = [p for p in powers if math.isfinite(p)]
    assert powers and all(0.0 <= p <= 1.0 for p in powers)
    expected = sum(p * p for p in powers) / sum(2 * p - p * p for p in powers)
    assert comparison.expected_agreement == pytest.approx(expected, rel=1e-12)
    assert f"would agree on about {100 * expected:.0f}% of the claims" in (
        comparison.expected_agreement_line()
    )


@pytest.mark.parametrize("smallest_effect", [0.0, 0.005])
def test_a_claim_at_its_minimum_detectable_effect_has_80_percent_power(runs, smallest_effect):
    comparison = compare_studies(*runs, smallest_effect=smallest_effect)
    claim = next(m.a for m in comparison.claims if m.a is not None and m.a.family)
    at_mde = claim._replace(test=claim.test._replace(estimate=claim.mde))
    assert at_mde.power == pytest.approx(0.8, abs=1e-9)
