"""How a claim is said: its evidence, its marks, and what a claim that is not supported could
have detected.

Absence of support is never worded as absence of an effect: a claim that is not supported
states its estimate, its interval and the smallest effect the run would have detected
(``Claim.mde``).
"""

from __future__ import annotations

import math

from jaxtl.report.cells import Cell, summarize
from jaxtl.report.claims import Claim, per_seed
from jaxtl.report.stats import ALPHA, POWER, Contrast, contrast

METRIC_NAMES = {"acc_b": "accuracy on B", "acc_a": "accuracy on A", "acc_ood": "OOD accuracy on B"}


def pp(value: float) -> str:
    """A signed difference in percentage points: "+3.10 pp"."""
    return f"{100 * value:+.2f} pp"


def _ci(c: Contrast, sign: int = 1) -> str:
    """The 95% CI of ``sign * c`` (sign -1 when the sentence states y − x instead of x − y)."""
    lo, hi = sorted((sign * c.low, sign * c.high))
    return f"95% CI {100 * lo:+.2f} to {100 * hi:+.2f} pp"


def p_text(p: float) -> str:
    """A p-value with the digits it needs: "0.21", "0.0042", "3.1e-05"."""
    if math.isnan(p) or p == 0.0:
        return "nan" if math.isnan(p) else "0"
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def _design(c: Contrast) -> str:
    if c.method == "paired":
        shared = "" if len(set(c.sizes)) == 1 and c.sizes[0] == c.n else " shared"
        return f"paired over {c.n}{shared} seeds"
    return "Welch, unpaired: the cells share < 2 seeds, n=" + " vs ".join(map(str, c.sizes))


def evidence(claim: Claim, sign: int = 1) -> str:
    """ "(paired over 5 seeds: 95% CI ...; p=0.001, Holm p=0.004; sign-flip p=0.062)"."""
    c = claim.test
    if c.method == "insufficient":
        return f"(n={' vs '.join(map(str, c.sizes))} seeds: not enough for a test)"
    parts = [_ci(c, sign), f"p={p_text(c.p)}, Holm p={p_text(claim.p_adjusted)}"]
    if c.method == "paired":
        parts.append(f"sign-flip p={p_text(c.sign_flip_p)}")
    return f"({_design(c)}: " + "; ".join(parts) + ")"


def marks(claim: Claim) -> str:
    """ " — *fragile*, *robust*": the marks of a supported claim ("" otherwise)."""
    found = (["*fragile*"] if claim.fragile else []) + (
        [f"*{claim.robust}*"] if claim.robust else []
    )
    return " — " + ", ".join(found) if found else ""


def interest(claim: Claim) -> str:
    """ "±0.50 pp": the smallest effect of interest a claim was decided with."""
    return f"±{100 * claim.smallest_effect:.2f} pp"


def level_text(claim: Claim) -> str:
    """ "α/m = 0.05/12 = 0.0042": the level a claim's MDE is computed at."""
    return f"α/m = {ALPHA:g}/{claim.family} = {p_text(claim.level)}"


def detectable(claim: Claim) -> str:
    """What a claim that is not supported could have detected, in words ("" when untested).

    Example:
      >>> detectable(claim)  # doctest: +SKIP
      'this run would detect ≥ 4.20 pp with 80% power (paired t, α/m = 0.05/12 = 0.0042)'
    """
    if math.isnan(claim.mde):
        return ""
    power = f"{100 * POWER:.0f}% power"
    if math.isinf(claim.mde):
        return (
            f"with {claim.test.n} seeds the exact sign-flip p cannot fall below "
            f"2/2^{claim.test.n}, so no effect of any size could reach {level_text(claim)}"
        )
    test = "paired t" if claim.test.method == "paired" else "Welch t"
    if claim.smallest_effect:
        test += f", CI beyond {interest(claim)}"
    if claim.mde == claim.smallest_effect:
        what = (
            f"difference beyond {interest(claim)}"
            if claim.smallest_effect
            else "nonzero difference"
        )
        return (
            f"with no spread between seeds this run would detect any {what} "
            f"({test}, {level_text(claim)})"
        )
    return (
        f"this run would detect ≥ {100 * claim.mde:.2f} pp with {power} "
        f"({test}, {level_text(claim)})"
    )


def claim_clause(claim: Claim | None, what: str | None = None) -> str:
    """One clause stating how x compares with y, worded by the claim's decision.

    Example:
      >>> claim_clause(claim)  # doctest: +SKIP
      'lp is better than ft on accuracy on B by 10.00 pp (paired over 3 seeds: 95% CI ...)'
    """
    if claim is None:
        return f"{what or 'the metric'} was not measured for both sides"
    what = what or METRIC_NAMES.get(claim.metric, claim.metric)
    x, y, c = claim.x, claim.y, claim.test
    decision = claim.decision
    if decision == "better":
        return f"{x} is better than {y} on {what} by {100 * c.estimate:.2f} pp {evidence(claim)}{marks(claim)}"
    if decision == "worse":
        return (
            f"{x} is worse than {y} on {what} by {-100 * c.estimate:.2f} pp "
            f"{evidence(claim, sign=-1)}{marks(claim)}"
        )
    if decision == "not supported":
        inside = (
            f"significant after Holm, but its interval reaches inside {interest(claim)}, the "
            "smallest effect of interest; "
            if claim.below_interest
            else ""
        )
        return (
            f"not supported: {x} − {y} = {pp(c.estimate)} on {what} {evidence(claim)}; "
            f"{inside}{detectable(claim)}"
        )
    return (
        f"{x} − {y} = {pp(c.estimate)} on {what} with n={' vs '.join(map(str, c.sizes))} "
        "seeds (< 2 paired or on a side): not enough seeds for a claim"
    )


def short_outcome(claim: Claim) -> str:
    """ "full_ft better (+4.00 pp)", "not supported (+0.40 pp, detects ≥ 2.10 pp)"."""
    estimate = pp(claim.test.estimate)
    if claim.decision == "not supported" and math.isfinite(claim.mde):
        return f"not supported ({estimate}, detects ≥ {100 * claim.mde:.2f} pp)"
    return {
        "better": f"{claim.x} better ({estimate})",
        "worse": f"{claim.x} worse ({estimate})",
        "not supported": f"not supported ({estimate})",
        "not enough seeds": "not enough seeds",
    }[claim.decision]


def picked_note(claim: Claim) -> str:
    """ " (best frozen picked on test accuracy: fixed protocol, no validation data)" or ""."""
    return f" ({claim.note})" if claim.note else ""


def ratio_phrase(ratio: float, what: str, note: str = "") -> str:
    """Cost of x relative to y, worded by direction.

    Numbers carry the digits they need: a small ratio keeps two significant digits and the
    percentage never rounds to 100% unless it is exactly that.

    Example:
      >>> ratio_phrase(0.25, "training FLOPs"), ratio_phrase(1.2, "wall time", "supported")
      ('75% less training FLOPs (0.25×)', '20% more wall time (1.20×, supported)')
      >>> ratio_phrase(0.0019, "training FLOPs")
      '99.8% less training FLOPs (0.0019×)'
    """
    note = f", {note}" if note else ""
    if not math.isfinite(ratio):
        return f"an incomparable amount of {what} (a reference total of 0{note})"
    if abs(ratio - 1.0) < 0.005:
        return f"the same {what} (1.00×{note})"
    more_or_less = "less" if ratio < 1 else "more"
    percent = 100 * abs(1 - ratio)  # >= 0.5 here
    digits = 0
    while digits < 2 and 0 < ratio < 0.01 and round(percent, digits) == 100:
        digits += 1
    share = f"{percent:.{digits}f}%" if round(percent, digits) != 100 or ratio <= 0 else ">99.99%"
    times = f"{ratio:.2g}" if 0 < ratio < 0.1 else f"{ratio:.2f}"
    return f"{share} {more_or_less} {what} ({times}×{note})"


def ratio(x: float, y: float) -> float:
    return x / y if y else math.nan


def flops_phrase(x: Cell, y: Cell) -> str:
    """ "75% less training FLOPs (0.25×)": x's mean training FLOPs relative to y's."""
    return ratio_phrase(
        ratio(summarize(x, "train_flops").mean, summarize(y, "train_flops").mean),
        "training FLOPs",
    )


def parts_at_once(record: dict) -> int:
    """How many study parts trained side by side when ``record`` ran (``parallel_parts``;
    1 for a record without it): its ``wall_time_s`` then includes the others' load."""
    return int((record.get("config") or {}).get("parallel_parts") or 1)


def cost_phrase(x: Cell, y: Cell) -> str:
    """ "75% less training FLOPs (0.25×) and 75% less wall time (0.25×, supported)".

    Exploratory: the wall-time note uses the uncorrected paired 95% CI, outside any family.
    """
    time = contrast([per_seed(x, "wall_time_s"), per_seed(y, "wall_time_s")])
    beside = max(parts_at_once(r) for r in (*x.runs, *y.runs))
    if beside > 1:
        note = f"measured with {beside} study parts training at once, so not a timing"
    elif time.method == "insufficient":
        note = "too few seeds to tell noise"
    elif time.low > 0 or time.high < 0:
        note = "supported"
    else:
        note = "within run-to-run noise"
    time_ratio = ratio(summarize(x, "wall_time_s").mean, summarize(y, "wall_time_s").mean)
    return f"{flops_phrase(x, y)} and {ratio_phrase(time_ratio, 'wall time', note)}"
