"""jaxtl.report.stats against scipy on fixed arrays: paired t, sign-flip permutation, Welch, Holm,
and the minimum detectable effect against textbook values and a simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from jaxtl.report.stats import (
    contrast,
    contrast_mde,
    decide,
    detectable_effect,
    holm,
    is_fragile,
    minimum_detectable_effect,
    paired_t,
    sign_flip_p,
    t_test_power,
    welch_contrast,
)

X = np.array([0.712, 0.695, 0.731, 0.704, 0.688])
Y = np.array([0.701, 0.690, 0.712, 0.709, 0.671])


def _scipy_sign_flip(x, y, n_resamples=9999) -> float:
    return stats.permutation_test(
        (x, y),
        lambda a, b, axis: np.mean(a - b, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=n_resamples,
    ).pvalue


def test_paired_t_matches_scipy_ttest_rel_and_t_ppf():
    mean, half, p = paired_t(X - Y)
    d = X - Y
    assert mean == pytest.approx(d.mean(), abs=1e-15)
    assert p == pytest.approx(stats.ttest_rel(X, Y).pvalue, rel=1e-12)
    assert half == pytest.approx(stats.t.ppf(0.975, 4) * stats.sem(d), rel=1e-12)
    assert p > 0.05  # this fixed example is not significant: the test can fail


@pytest.mark.parametrize(
    "x, y",
    [
        (X, Y),
        (X, X - 0.01),  # every seed in the same direction
        (np.array([0.5, 0.6, 0.55, 0.52, 0.58, 0.61, 0.49, 0.57]), np.full(8, 0.55)),
        (np.array([0.9, 0.8, 0.85]), np.array([0.9, 0.82, 0.8])),  # a tie (d = 0) among seeds
    ],
)
def test_exact_sign_flip_matches_scipy_permutation_test(x, y):
    assert sign_flip_p(x - y) == pytest.approx(_scipy_sign_flip(x, y), rel=1e-12)


def test_sign_flip_floor_is_two_over_two_to_the_n():
    assert sign_flip_p([0.01] * 5) == 2 / 32
    assert sign_flip_p([0.0, 0.0, 0.0]) == 1.0


def test_monte_carlo_sign_flip_beyond_16_seeds_is_seeded_and_close_to_exact():
    rng = np.random.default_rng(3)
    x, y = rng.normal(0.02, 0.05, 18), np.zeros(18)
    mc = sign_flip_p(x - y, n_resamples=20_000, seed=0)
    assert mc == sign_flip_p(x - y, n_resamples=20_000, seed=0)
    exact = _scipy_sign_flip(x, y, n_resamples=2**18)
    assert mc == pytest.approx(exact, abs=0.01)


def test_paired_contrast_uses_shared_seeds_only():
    x = {s: float(v) for s, v in enumerate(X)} | {9: 0.1}
    y = {s: float(v) for s, v in enumerate(Y)}
    c = contrast([x, y])
    assert c.method == "paired" and c.n == 5 and c.sizes == (6, 5)
    assert c.p == pytest.approx(stats.ttest_rel(X, Y).pvalue, rel=1e-12)
    assert c.sign_flip_p == pytest.approx(_scipy_sign_flip(X, Y), rel=1e-12)
    assert c.low == pytest.approx((X - Y).mean() - stats.t.ppf(0.975, 4) * stats.sem(X - Y))


def test_contrast_of_four_cells_is_the_paired_t_of_the_per_seed_contrast():
    a, b, c_, d = X, Y, X[::-1], Y[::-1]
    per_seed = [{s: float(v) for s, v in enumerate(arr)} for arr in (a, b, c_, d)]
    got = contrast(per_seed, (1, -1, -1, 1))
    expected = stats.ttest_1samp((a - b) - (c_ - d), 0.0)
    assert got.p == pytest.approx(expected.pvalue, rel=1e-12)


def test_cells_without_shared_seeds_fall_back_to_welch():
    x = {0: 0.9, 1: 0.91, 2: 0.93}
    y = {3: 0.8, 4: 0.83, 5: 0.81, 6: 0.79}
    c = contrast([x, y])
    ref = stats.ttest_ind(list(x.values()), list(y.values()), equal_var=False)
    assert c.method == "welch" and math.isnan(c.sign_flip_p)
    assert c.p == pytest.approx(ref.pvalue, rel=1e-10)
    assert c.df == pytest.approx(ref.df, rel=1e-10)
    assert c.half_width == pytest.approx(
        stats.t.ppf(0.975, ref.df) * abs(c.estimate / ref.statistic), rel=1e-10
    )
    assert welch_contrast([[0.9], [0.8, 0.7]], (1, -1)).method == "insufficient"


def test_fewer_than_two_paired_or_unpaired_seeds_is_not_enough():
    c = contrast([{0: 0.9}, {0: 0.7}])
    assert c.method == "insufficient" and c.estimate == pytest.approx(0.2)
    assert decide(c, holm([c.p])[0]) == "not enough seeds"


def test_holm_against_a_hand_computed_example():
    # Sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> max(0.06, 0.04).
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1 and monotone
    adjusted = holm([0.02, math.nan, 0.01])
    assert math.isnan(adjusted[1]) and adjusted[0] == pytest.approx(0.02)  # nan not counted
    assert adjusted[2] == pytest.approx(0.02)


def test_decision_rule_and_fragility():
    per_seed = lambda v: {s: x for s, x in enumerate(v)}
    strong = contrast([per_seed([0.9, 0.92, 0.91]), per_seed([0.8, 0.8, 0.8])])
    assert decide(strong, 0.001) == "better" and not is_fragile(strong, 0.001)
    assert decide(strong, 0.03) == "better" and is_fragile(strong, 0.03)  # within 2x of 0.05
    assert decide(strong, 0.06) == "not supported"
    worse = contrast([per_seed([0.8, 0.8, 0.8]), per_seed([0.9, 0.92, 0.91])])
    assert decide(worse, 0.001) == "worse"
    close = contrast([per_seed([0.805, 0.806, 0.807]), per_seed([0.8, 0.8, 0.8])])
    assert decide(close, 0.001) == "better" and is_fragile(close, 0.001)  # CI end < 1 pp from 0


def test_a_supported_claim_needs_its_interval_beyond_the_smallest_effect_of_interest():
    per_seed = lambda v: {s: x for s, x in enumerate(v)}
    close = contrast([per_seed([0.805, 0.806, 0.807]), per_seed([0.8, 0.8, 0.8])])
    assert close.low == pytest.approx(0.00352, abs=1e-5)  # CI +0.35 to +0.85 pp
    assert decide(close, 0.001, smallest_effect=0.003) == "better"
    assert decide(close, 0.001, smallest_effect=0.005) == "not supported"
    flipped = contrast([per_seed([0.8, 0.8, 0.8]), per_seed([0.805, 0.806, 0.807])])
    assert decide(flipped, 0.001, smallest_effect=0.003) == "worse"
    assert decide(flipped, 0.001, smallest_effect=0.005) == "not supported"


# ---- minimum detectable effect ------------------------------------------------------------------

# G*Power 3.1, "t tests - Means: Difference from constant (one sample case)" (the paired t),
# two-tailed, alpha 0.05, power 0.80: the effect size d_z each sample size detects.
GPOWER_DZ = {10: 0.9960, 20: 0.6604, 30: 0.5292}


@pytest.mark.parametrize("n, d_z", sorted(GPOWER_DZ.items()))
def test_mde_matches_the_textbook_paired_t_effect_sizes(n, d_z):
    assert minimum_detectable_effect(1.0, n) == pytest.approx(d_z, abs=5e-5)
    # In the units of the differences: d_z times their standard deviation.
    assert minimum_detectable_effect(0.031, n) == pytest.approx(0.031 * d_z, rel=1e-4)


def test_mde_has_the_stated_power_in_a_simulation():
    n, sd, alpha = 20, 0.03, 0.05 / 12
    mde = minimum_detectable_effect(sd, n, alpha)
    rng = np.random.default_rng(0)
    critical = stats.t.ppf(1 - alpha / 2, n - 1)

    def power(shift: float) -> float:
        d = rng.normal(shift, sd, size=(200_000, n))
        t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
        return float(np.mean(np.abs(t) > critical))

    # 200,000 draws: the simulated power's standard error is about 0.001.
    assert power(mde) == pytest.approx(0.80, abs=0.005)
    assert power(0.9 * mde) < 0.74 and power(1.1 * mde) > 0.85


def test_mde_beyond_a_smallest_effect_has_the_stated_power_in_a_simulation():
    # Supported needs |t| beyond the test's level AND the 95% CI beyond ±delta.
    n, sd, alpha, delta = 20, 0.02, 0.05 / 12, 0.005
    mde = detectable_effect(sd / math.sqrt(n), n - 1, alpha, smallest_effect=delta)
    assert mde > max(delta, minimum_detectable_effect(sd, n, alpha))
    rng = np.random.default_rng(1)
    test, ci = stats.t.ppf(1 - alpha / 2, n - 1), stats.t.ppf(0.975, n - 1)

    def power(shift: float) -> float:
        d = rng.normal(shift, sd, size=(200_000, n))
        mean, se = d.mean(axis=1), d.std(axis=1, ddof=1) / math.sqrt(n)
        return float(np.mean((mean > test * se) & (mean - ci * se > delta)))

    assert power(mde) == pytest.approx(0.80, abs=0.005)
    # Its power function agrees with the plain t test's as delta goes to 0.
    for shift in (0.5, 2.0, 3.5):
        plain = t_test_power(shift, 1.0, 4, 0.05 / 4)
        assert t_test_power(shift, 1.0, 4, 0.05 / 4, 1e-12) == pytest.approx(plain, abs=1e-4)


def test_mde_beyond_a_smallest_effect_approaches_the_normal_formula_with_many_seeds():
    # Known variance, the CI's condition the stricter: delta + (z_0.975 + z_0.8) SE.
    se, delta = 0.001, 0.005
    normal = delta + (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * se
    assert detectable_effect(se, 10**6, smallest_effect=delta) == pytest.approx(normal, rel=1e-4)
    assert detectable_effect(0.0, 19, smallest_effect=delta) == delta  # no spread: anything past


def test_mde_approaches_the_normal_formula_with_many_seeds():
    n, alpha = 5000, 0.01
    normal = (stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(0.8)) / math.sqrt(n)
    assert minimum_detectable_effect(1.0, n, alpha) == pytest.approx(normal, rel=2e-3)


def test_mde_grows_with_the_family_and_shrinks_with_seeds():
    assert minimum_detectable_effect(1.0, 20, 0.05 / 27) > minimum_detectable_effect(1.0, 20)
    assert minimum_detectable_effect(1.0, 20) < minimum_detectable_effect(1.0, 5)
    # Holm's strictest level for 27 claims with 5 seeds: about 4 standard deviations.
    assert minimum_detectable_effect(1.0, 5, 0.05 / 27) == pytest.approx(4.08, abs=0.01)
    with pytest.raises(ValueError, match="at least 2 seeds"):
        minimum_detectable_effect(1.0, 1)


def test_contrast_mde_uses_the_observed_sd_of_the_per_seed_differences():
    x = {s: float(v) for s, v in enumerate(X)}
    y = {s: float(v) for s, v in enumerate(Y)}
    d = X - Y
    expected = minimum_detectable_effect(float(d.std(ddof=1)), 5, 0.05 / 3)
    assert contrast_mde(contrast([x, y]), 0.05 / 3) == pytest.approx(expected, rel=1e-9)
    # Welch: its own standard error and degrees of freedom.
    w = contrast([{0: 0.9, 1: 0.91, 2: 0.93}, {3: 0.8, 4: 0.83, 5: 0.81}])
    assert contrast_mde(w) == pytest.approx(detectable_effect(w.se, w.df), rel=1e-12)
    assert math.isnan(contrast_mde(contrast([{0: 0.9}, {0: 0.7}])))
    # No spread between seeds: any nonzero difference is detected.
    assert contrast_mde(contrast([{0: 0.75, 1: 0.5}, {0: 0.5, 1: 0.25}])) == 0.0
