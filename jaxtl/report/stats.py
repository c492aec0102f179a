"""Statistics over seeds: per-cell means, paired differences, sign-flip tests, Holm, and the
smallest effect a test could have detected.

Every strategy of a seed shares the same few-shot subset, source model and head init, so
differences between strategies are computed per seed (paired); Welch's unpaired difference is the
fallback when two cells share fewer than 2 seeds. The per-cell tables keep a hard-coded t table
(rounded to 3 decimals, as printed in textbooks); the paired tests use ``scipy.stats.t``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

import numpy as np
from scipy import optimize as scipy_optimize
from scipy import stats as scipy_stats

# Two-sided 95% critical values of Student's t (the 0.975 quantile) for df 1..30, then 40, 60, 120.
_T_975 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    11: 2.201,
    12: 2.179,
    13: 2.160,
    14: 2.145,
    15: 2.131,
    16: 2.120,
    17: 2.110,
    18: 2.101,
    19: 2.093,
    20: 2.086,
    21: 2.080,
    22: 2.074,
    23: 2.069,
    24: 2.064,
    25: 2.060,
    26: 2.056,
    27: 2.052,
    28: 2.048,
    29: 2.045,
    30: 2.042,
    40: 2.021,
    60: 2.000,
    120: 1.980,
}

Verdict = Literal["better", "worse", "indistinguishable", "insufficient"]


class Summary(NamedTuple):
    """Mean of one metric over seeds with the half-width of its 95% CI (nan when n < 2)."""

    mean: float
    half_width: float
    n: int


class Difference(NamedTuple):
    """Difference of two means (x - y) with the half-width of its 95% Welch CI."""

    diff: float
    half_width: float
    df: float
    n_x: int
    n_y: int


def t_critical(df: float) -> float:
    """Two-sided 95% critical value of Student's t.

    A fractional df (Welch) is rounded down to the nearest tabled df, which widens the
    interval slightly rather than narrowing it; df beyond 120 uses the normal value 1.96.

    Args:
      df: degrees of freedom (> 0; values below 1 use df = 1).

    Returns:
      The 0.975 quantile of t with ``df`` degrees of freedom.

    Example:
      >>> t_critical(2)
      4.303
    """
    if math.isinf(df) or df > 120:
        return 1.96
    tabled = max((d for d in _T_975 if d <= max(df, 1.0)), default=1)
    return _T_975[tabled]


def mean_ci(values: Sequence[float]) -> Summary:
    """Mean and 95% t-interval half-width of ``values``.

    Args:
      values: one number per seed.

    Returns:
      ``Summary(mean, half_width, n)``; mean is nan for no values, half_width nan for n < 2.

    Example:
      >>> s = mean_ci([0.8, 0.9, 1.0])
      >>> round(s.mean, 3), round(s.half_width, 4), s.n
      (0.9, 0.2484, 3)
    """
    x = np.asarray(values, dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return Summary(math.nan, math.nan, 0)
    mean = float(x.mean())
    if n < 2:
        return Summary(mean, math.nan, n)
    return Summary(mean, t_critical(n - 1) * float(x.std(ddof=1)) / math.sqrt(n), n)


def welch_difference(x: Sequence[float], y: Sequence[float]) -> Difference:
    """Difference of means ``mean(x) - mean(y)`` with its 95% Welch CI.

    Args:
      x: per-seed values of the treated cell.
      y: per-seed values of the reference cell.

    Returns:
      ``Difference``; half_width is nan when either side has fewer than 2 values, and 0 when
      both sides have zero variance (deterministic runs).

    Example:
      >>> d = welch_difference([0.9, 0.91, 0.92], [0.8, 0.81, 0.82])
      >>> round(d.diff, 3), verdict(d)
      (0.1, 'better')
    """
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    diff = float(a.mean() - b.mean()) if a.size and b.size else math.nan
    if a.size < 2 or b.size < 2:
        return Difference(diff, math.nan, math.nan, int(a.size), int(b.size))
    va, vb = float(a.var(ddof=1)) / a.size, float(b.var(ddof=1)) / b.size
    se2 = va + vb
    if se2 == 0.0:
        return Difference(diff, 0.0, math.inf, int(a.size), int(b.size))
    df = se2**2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    return Difference(diff, t_critical(df) * math.sqrt(se2), df, int(a.size), int(b.size))


def verdict(d: Difference) -> Verdict:
    """Decision rule used throughout the report: a difference counts only if its CI excludes 0.

    Args:
      d: a ``Difference`` from ``welch_difference``.

    Returns:
      "better" (CI above 0), "worse" (CI below 0), "indistinguishable" (CI contains 0) or
      "insufficient" (fewer than 2 seeds on a side).

    Example:
      >>> verdict(welch_difference([1.0, 1.1], [1.0]))
      'insufficient'
    """
    if math.isnan(d.half_width) or math.isnan(d.diff):
        return "insufficient"
    if d.diff - d.half_width > 0:
        return "better"
    if d.diff + d.half_width < 0:
        return "worse"
    return "indistinguishable"


# ---- paired contrasts --------------------------------------------------------------------------

ALPHA = 0.05
# Exact sign-flip enumeration up to 2**16 sign vectors; beyond that a seeded Monte Carlo.
EXACT_SIGN_FLIP_MAX_N = 16
SIGN_FLIP_RESAMPLES = 100_000
Method = Literal["paired", "welch", "insufficient"]


class Contrast(NamedTuple):
    """A linear contrast of cell means (e.g. x - y) over seeds, with its test.

    Attributes:
      estimate: mean over paired seeds of the per-seed contrast (paired), or the contrast of the
        cell means (welch, insufficient); nan when a cell has no value.
      half_width: half-width of the 95% t interval; nan when method is "insufficient".
      df: degrees of freedom of the t interval (n - 1 paired; Welch-Satterthwaite otherwise).
      p: two-sided p-value of the t test (paired or Welch); nan when "insufficient".
      sign_flip_p: two-sided sign-flip permutation p-value of the per-seed contrasts (exact for
        n <= 16); nan unless paired.
      n: seeds used: paired seeds, or the smallest cell's seed count otherwise.
      method: "paired" (>= 2 shared seeds), "welch" (cells share < 2 seeds, each has >= 2) or
        "insufficient".
      sizes: seeds available per cell (before pairing).
      se: standard error of the estimate (sd of the per-seed contrasts over sqrt(n) when
        paired); nan when "insufficient".
    """

    estimate: float
    half_width: float
    df: float
    p: float
    sign_flip_p: float
    n: int
    method: Method
    sizes: tuple[int, ...]
    se: float = math.nan

    @property
    def low(self) -> float:
        return self.estimate - self.half_width

    @property
    def high(self) -> float:
        return self.estimate + self.half_width


def paired_t(d: Sequence[float]) -> tuple[float, float, float]:
    """Mean, 95% half-width and two-sided p of a one-sample t test of paired differences.

    Zero spread (deterministic runs) gives a zero-width interval and p = 0 for a nonzero mean,
    p = 1 for a zero mean, where the t statistic itself would be undefined.

    Args:
      d: per-seed differences x_s - y_s, at least 2.

    Returns:
      ``(mean, half_width, p)``.

    Example:
      >>> m, h, p = paired_t([0.01, 0.03, 0.02])
      >>> round(m, 3), round(h, 4), round(p, 4)
      (0.02, 0.0248, 0.0742)
    """
    x = np.asarray(d, dtype=np.float64)
    n = x.size
    if n < 2:
        raise ValueError(f"paired_t needs at least 2 differences, got {n}")
    mean = float(x.mean())
    se = float(x.std(ddof=1)) / math.sqrt(n)
    if se == 0.0:
        return mean, 0.0, 0.0 if mean != 0.0 else 1.0
    t = mean / se
    return (
        mean,
        float(scipy_stats.t.ppf(0.975, n - 1)) * se,
        float(2 * scipy_stats.t.sf(abs(t), n - 1)),
    )


def sign_flip_p(d: Sequence[float], n_resamples: int = SIGN_FLIP_RESAMPLES, seed: int = 0) -> float:
    """Two-sided sign-flip permutation p-value of the mean of paired differences.

    Under "no difference" each seed's x and y are exchangeable, so every sign pattern of the
    differences is equally likely. For n <= 16 all 2**n patterns are enumerated (exact);
    beyond that ``n_resamples`` random patterns from ``numpy.random.default_rng(seed)`` are drawn
    and the observed pattern counts once (p = (hits + 1) / (n_resamples + 1)), as
    ``scipy.stats.permutation_test`` does. Note the floor: with n seeds the exact p is at least
    2 / 2**n (0.0625 at n = 5).

    Args:
      d: per-seed differences x_s - y_s.
      n_resamples: Monte Carlo draws when n > 16.
      seed: seed of the Monte Carlo draws.

    Returns:
      The p-value in (0, 1].

    Example:
      >>> sign_flip_p([0.01, 0.02, 0.03])  # 2 of 8 patterns are as extreme
      0.25
    """
    x = np.asarray(d, dtype=np.float64)
    n = x.size
    if n == 0:
        return math.nan
    observed = abs(float(x.mean()))
    # Sums of the same magnitudes in another order may differ in the last bits.
    tolerance = 1e-12 * max(observed, float(np.abs(x).max()))
    if n <= EXACT_SIGN_FLIP_MAX_N:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
        means = np.abs(signs @ x) / n
        return float(np.mean(means >= observed - tolerance))
    rng = np.random.default_rng(seed)
    signs = rng.choice((1.0, -1.0), size=(n_resamples, n))
    hits = int(np.sum(np.abs(signs @ x) / n >= observed - tolerance))
    return (hits + 1) / (n_resamples + 1)


def welch_contrast(samples: Sequence[Sequence[float]], coefs: Sequence[float]) -> Contrast:
    """Contrast sum_i c_i mean(sample_i) of independent samples, Welch-Satterthwaite t interval.

    Args:
      samples: per-cell values (one number per seed).
      coefs: one coefficient per cell, e.g. (1, -1) for x - y.

    Returns:
      A ``Contrast`` with method "welch" ("insufficient" when a cell has < 2 values).

    Example:
      >>> c = welch_contrast([[0.9, 0.91, 0.92], [0.8, 0.81, 0.82]], (1, -1))
      >>> round(c.estimate, 3), round(c.df, 1), c.method
      (0.1, 4.0, 'welch')
    """
    arrays = [np.asarray(s, dtype=np.float64) for s in samples]
    sizes = tuple(int(a.size) for a in arrays)
    if min(sizes) == 0:
        return Contrast(math.nan, math.nan, math.nan, math.nan, math.nan, 0, "insufficient", sizes)
    estimate = float(sum(c * a.mean() for c, a in zip(coefs, arrays, strict=True)))
    if min(sizes) < 2:
        return Contrast(
            estimate, math.nan, math.nan, math.nan, math.nan, min(sizes), "insufficient", sizes
        )
    parts = [c * c * float(a.var(ddof=1)) / a.size for c, a in zip(coefs, arrays, strict=True)]
    se2 = sum(parts)
    if se2 == 0.0:
        p = 0.0 if estimate != 0.0 else 1.0
        return Contrast(estimate, 0.0, math.inf, p, math.nan, min(sizes), "welch", sizes, 0.0)
    df = se2**2 / sum(v**2 / (a.size - 1) for v, a in zip(parts, arrays, strict=True) if v > 0)
    se = math.sqrt(se2)
    return Contrast(
        estimate,
        float(scipy_stats.t.ppf(0.975, df)) * se,
        df,
        float(2 * scipy_stats.t.sf(abs(estimate) / se, df)),
        math.nan,
        min(sizes),
        "welch",
        sizes,
        se,
    )


def contrast(
    per_seed: Sequence[Mapping[int, float]], coefs: Sequence[float] = (1.0, -1.0)
) -> Contrast:
    """Contrast of cells, paired by seed when they share at least 2 seeds, else Welch.

    Args:
      per_seed: one ``{seed: value}`` mapping per cell.
      coefs: one coefficient per cell; the default (1, -1) is x - y.

    Returns:
      A ``Contrast``: "paired" over the shared seeds (paired t interval and p, exact sign-flip
      p), "welch" when fewer than 2 seeds are shared, "insufficient" when a cell has < 2 values.

    Example:
      >>> c = contrast([{0: 0.9, 1: 0.8, 2: 0.7}, {0: 0.8, 1: 0.7, 2: 0.65}])
      >>> c.method, c.n, round(c.estimate, 4), c.sign_flip_p
      ('paired', 3, 0.0833, 0.25)
    """
    sizes = tuple(len(values) for values in per_seed)
    shared = sorted(set.intersection(*(set(values) for values in per_seed)))
    if len(shared) < 2:
        c = welch_contrast([list(values.values()) for values in per_seed], coefs)
        return c._replace(sizes=sizes)
    d = [sum(c * values[s] for c, values in zip(coefs, per_seed, strict=True)) for s in shared]
    mean, half, p = paired_t(d)
    se = float(np.std(d, ddof=1)) / math.sqrt(len(d))
    return Contrast(mean, half, len(d) - 1.0, p, sign_flip_p(d), len(d), "paired", sizes, se)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values; nan entries (untested claims) stay nan and do not count.

    The i-th smallest of m p-values is multiplied by (m - i + 1); adjusted values are made
    non-decreasing in that order and capped at 1. Rejecting where adjusted p < alpha controls
    the family-wise error rate at alpha.

    Args:
      p_values: raw p-values of one family of claims.

    Returns:
      Adjusted p-values in input order.

    Example:
      >>> [round(p, 4) for p in holm([0.01, 0.04, 0.03, float("nan")])]
      [0.03, 0.06, 0.06, nan]
    """
    tested = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    m = len(tested)
    out = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


Decision = Literal["better", "worse", "not supported", "not enough seeds"]


# The smallest effect of interest a supported claim's 95% interval must clear by default: none
# (the interval need only exclude 0). Declared at 0.5 pp before four fresh pairs of runs (a run
# and its replication on disjoint seeds under another CPU's arithmetic), it did not raise their
# agreement (10 of 11, 8 of 15, 7 of 15, 8 of 13; without it 11 of 12, 9 of 16, 7 of 18, 9 of
# 14): claims moved with the selected learning rate and, near any threshold, with the seeds
# (docs/study.md). It stays a choice (`--smallest-effect` on `jaxtl report` and `compare`).
SMALLEST_EFFECT = 0.0


def decide(
    c: Contrast, p_adjusted: float, alpha: float = ALPHA, smallest_effect: float = 0.0
) -> Decision:
    """The report's rule: supported when Holm-adjusted p < alpha AND the 95% CI lies wholly
    beyond ±``smallest_effect`` (beyond 0 when it is 0).

    Example:
      >>> decide(contrast([{0: 0.9, 1: 0.91}, {0: 0.8, 1: 0.8}]), 0.01)
      'better'
      >>> decide(contrast([{0: 0.803, 1: 0.804}, {0: 0.8, 1: 0.8}]), 0.01, smallest_effect=0.005)
      'not supported'
    """
    if c.method == "insufficient" or math.isnan(p_adjusted):
        return "not enough seeds"
    if p_adjusted < alpha and c.low > smallest_effect:
        return "better"
    if p_adjusted < alpha and c.high < -smallest_effect:
        return "worse"
    return "not supported"


# A supported claim is fragile when it would not survive a modest change: its adjusted p within a
# factor 2 of alpha, or the end of its CI nearer 0 within 1 pp (0.01) of 0.
FRAGILE_P_FACTOR = 2.0
FRAGILE_MARGIN = 0.01


def is_fragile(c: Contrast, p_adjusted: float, alpha: float = ALPHA) -> bool:
    """Whether a supported claim sits near the decision boundary (see FRAGILE_* constants).

    Example:
      >>> c = contrast([{0: 0.905, 1: 0.906, 2: 0.904}, {0: 0.9, 1: 0.9, 2: 0.9}])
      >>> is_fragile(c, 0.001)  # 0.5 pp above 0
      True
    """
    near_end = min(abs(c.low), abs(c.high))
    return p_adjusted > alpha / FRAGILE_P_FACTOR or near_end < FRAGILE_MARGIN


# ---- what a test could have detected ----------------------------------------------------------

POWER = 0.8


# Quantiles of chi-square at which ``_power_beyond`` averages: enough for 1e-4 of power.
_CHI2_POINTS = 4096


def _power_beyond(
    shift: float, se: float, df: float, alpha: float, smallest_effect: float
) -> float:
    """P(a claim is supported) when the true effect is ``shift``, under ``decide``'s rule.

    The estimate is normal around ``shift`` with standard error ``se``; the observed standard
    error is se * sqrt(V / df), V ~ chi-square(df). Supported (upward) needs the estimate beyond
    both t_{1-alpha/2} observed SEs (the test) and smallest_effect + t_{0.975} observed SEs (its
    CI clear of the smallest effect): the stricter of the two, averaged over V.
    """
    v = scipy_stats.chi2.ppf((np.arange(_CHI2_POINTS) + 0.5) / _CHI2_POINTS, df)
    observed = se * np.sqrt(v / df)
    test = float(scipy_stats.t.ppf(1.0 - alpha / 2.0, df))
    ci = float(scipy_stats.t.ppf(1.0 - ALPHA / 2.0, df))
    need = np.maximum(test * observed, smallest_effect + ci * observed)
    up = scipy_stats.norm.sf((need - shift) / se)
    down = scipy_stats.norm.cdf((-need - shift) / se)
    return float(np.mean(up + down))


def t_test_power(
    shift: float, se: float, df: float, alpha: float = ALPHA, smallest_effect: float = 0.0
) -> float:
    """Power of a two-sided t test at level ``alpha`` when the true effect is ``shift``.

    The t statistic of an estimate with standard error ``se`` then follows a noncentral t with
    ``df`` degrees of freedom and noncentrality ``shift / se``; power is its mass beyond
    ±t_{1-alpha/2, df}. With a ``smallest_effect`` the claim also needs its 95% CI beyond
    ±smallest_effect (``decide``'s rule), and the power is that of both together.

    Example:
      >>> round(t_test_power(0.0, 1.0, 19), 3)  # no effect: rejects at the test's level
      0.05
    """
    if se == 0.0:
        return 1.0 if abs(shift) > smallest_effect else alpha
    if smallest_effect > 0.0:
        return _power_beyond(shift, se, df, alpha, smallest_effect)
    critical = float(scipy_stats.t.ppf(1.0 - alpha / 2.0, df))
    nc = shift / se
    upper = float(scipy_stats.nct.sf(critical, df, nc))
    # Far out in the other tail scipy's nct returns nan for what is below 1e-300.
    lower = float(scipy_stats.nct.cdf(-critical, df, nc))
    return upper + (0.0 if math.isnan(lower) else lower)


def detectable_effect(
    se: float,
    df: float,
    alpha: float = ALPHA,
    power: float = POWER,
    smallest_effect: float = 0.0,
) -> float:
    """Smallest true effect a two-sided t test (standard error ``se``, ``df`` degrees of freedom)
    detects with probability ``power`` at level ``alpha``.

    Args:
      se: standard error of the estimate (for a paired test: sd of the differences / sqrt(n)).
      df: degrees of freedom of the test (n - 1 paired).
      alpha: two-sided level the p-value must fall below.
      power: the probability of detection asked for (> alpha).
      smallest_effect: the 95% CI must also lie beyond ±this (``decide``'s rule).

    Returns:
      The effect, in the estimate's units (``smallest_effect`` when ``se`` is 0: anything
      beyond it is detected; nan when ``se`` or ``df`` is nan).

    Example:
      >>> round(detectable_effect(1.0 / 20**0.5, 19), 4)  # Cohen's d_z for n = 20
      0.6604
    """
    if math.isnan(se) or math.isnan(df):
        return math.nan
    if se == 0.0:
        return smallest_effect
    if not alpha < power < 1.0:
        raise ValueError(f"power={power} must lie between alpha={alpha} and 1")
    delta = smallest_effect / se  # in standard errors, as the search below

    def short_of(x: float) -> float:
        return t_test_power(x, 1.0, df, alpha, delta) - power

    high = delta + float(scipy_stats.t.ppf(1.0 - alpha / 2.0, df)) + 1.0
    while short_of(high) < 0.0:
        high *= 2.0
    return float(scipy_optimize.brentq(short_of, delta, high, xtol=1e-12)) * se


def minimum_detectable_effect(
    sd: float, n: int, alpha: float = ALPHA, power: float = POWER
) -> float:
    """Minimum detectable effect of a two-sided paired t test over ``n`` seeds.

    The smallest true mean difference that a paired t test, with per-seed differences of
    standard deviation ``sd``, rejects at two-sided level ``alpha`` with probability ``power``
    (noncentral t, as G*Power's "means: difference from constant (one sample case)").

    Args:
      sd: standard deviation of the per-seed differences.
      n: seeds (pairs), at least 2.
      alpha: two-sided level, e.g. a Holm family's alpha / m.
      power: probability of detection.

    Returns:
      The effect in the units of ``sd``.

    Example:
      >>> round(minimum_detectable_effect(1.0, 20), 2)  # d_z = 0.66 at n = 20, 5%, 80%
      0.66
    """
    if n < 2:
        raise ValueError(f"a paired t test needs at least 2 seeds, got {n}")
    return detectable_effect(sd / math.sqrt(n), n - 1.0, alpha, power)


def contrast_mde(
    c: Contrast, alpha: float = ALPHA, power: float = POWER, smallest_effect: float = 0.0
) -> float:
    """The smallest effect ``c``'s own test would detect with ``power`` at level ``alpha``,
    from its observed standard error (paired: sd of the per-seed contrasts over sqrt(n)).

    Returns nan for an "insufficient" contrast.

    Example:
      >>> c = contrast([{0: 0.9, 1: 0.8, 2: 0.7}, {0: 0.8, 1: 0.7, 2: 0.65}])
      >>> round(contrast_mde(c), 3)
      0.094
    """
    if c.method == "insufficient":
        return math.nan
    return detectable_effect(c.se, c.df, alpha, power, smallest_effect)
