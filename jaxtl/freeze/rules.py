"""A rule's setting and its checks: what ``None`` and ``{"lr_mult": ...}`` mean, and the error.

Shared by the plan that resolves rules and the modules beside it (optax wrapper, statistics,
NNX adapters, table), so none of them has to import the plan itself.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from typing import Any

from jaxtl.suggest import did_you_mean

SETTING_KEYS = ("lr_mult", "wd_mult")
DEFAULT_SETTING = {"lr_mult": 1.0, "wd_mult": 1.0}
FROZEN = "frozen"
TRAINABLE = "trainable"


class PlanError(ValueError):
    """A freeze plan's rules do not fit the parameter tree; the message says how to fix them."""


def closest(pattern: str, paths: Sequence[str], n: int = 3) -> list[str]:
    """The ``n`` paths closest to ``pattern`` (the first ``n`` when none is close)."""
    candidates = sorted(set(paths))
    close = difflib.get_close_matches(pattern, candidates, n=n, cutoff=0.0)
    return close or candidates[:n]


def check_setting(index: int, pattern: str, setting: Any) -> dict[str, float] | None:
    """Rule ``index``'s setting resolved to a full dict (``None`` stays ``None``: frozen).

    Example:
      >>> check_setting(0, "head/.*", {"lr_mult": 0.1})
      {'lr_mult': 0.1, 'wd_mult': 1.0}
    """
    where = f"rule {index} ({pattern})"
    if setting is None:
        return None
    if not isinstance(setting, Mapping):
        raise PlanError(
            f"{where} has setting {setting!r}; use None to freeze or a dict such as"
            f" {{'lr_mult': 0.1}} to train ({{}} = defaults)"
        )
    unknown = sorted(set(setting) - set(SETTING_KEYS))
    if unknown:
        raise PlanError(
            f"{where} has unknown setting key {unknown[0]!r}; valid keys: {', '.join(SETTING_KEYS)}"
            " (use None instead of a dict to freeze)"
        )
    resolved = {**DEFAULT_SETTING, **{k: float(v) for k, v in setting.items()}}
    if not resolved["lr_mult"] > 0 or not math.isfinite(resolved["lr_mult"]):
        raise PlanError(
            f"{where} sets lr_mult={setting['lr_mult']!r}; use None to freeze (lr_mult must be a"
            " finite number > 0)"
        )
    if not resolved["wd_mult"] >= 0 or not math.isfinite(resolved["wd_mult"]):
        raise PlanError(
            f"{where} sets wd_mult={setting['wd_mult']!r}; wd_mult must be a finite number >= 0"
        )
    return resolved


def setting_str(setting: Mapping[str, float]) -> str:
    """A trainable setting as the table prints it: ``train`` or ``train lr_mult=0.1``."""
    changed = {k: v for k, v in setting.items() if v != DEFAULT_SETTING[k]}
    return "train" + (
        "" if not changed else " " + ", ".join(f"{k}={v:g}" for k, v in changed.items())
    )


def module_prefixes(paths: Sequence[str]) -> set[str]:
    """Every path and every module above one: what a layer-group name may spell."""
    out = set()
    for path in paths:
        parts = path.split("/")
        out.update("/".join(parts[: j + 1]) for j in range(len(parts)))
    return out


def check_group(group: str, prefixes: set[str], paths: Sequence[str], where: str) -> None:
    """Raises :class:`PlanError` with a did-you-mean when ``group`` names nothing in ``paths``."""
    if group.rstrip("/") not in prefixes:
        tops = sorted({p.split("/", 1)[0] for p in paths})
        raise PlanError(
            f"{where}layer group {group!r} names nothing in the parameter tree"
            f"{did_you_mean(group, prefixes)}; top-level groups: {', '.join(tops)}"
        )
