"""Confidence intervals over seeds: per-cell means and Welch differences of means.

Only numpy and a hard-coded t table, so the report has no scipy dependency.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np

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
