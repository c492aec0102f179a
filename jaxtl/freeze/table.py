"""A plan as counts and a printed table: per rule, per top-level module, and in total."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jaxtl.freeze.rules import setting_str
from jaxtl.freeze.summary import format_table

if TYPE_CHECKING:
    from jaxtl.freeze.plan import FreezePlan


def _rule_rows(plan: FreezePlan) -> list[dict[str, Any]]:
    rows = []
    for index, (selector, setting) in enumerate(plan.rules):
        members = [i for i, r in enumerate(plan.rule_of_leaf) if r == index]
        rows.append(
            {
                "rule": index,
                "pattern": str(selector),
                "setting": "frozen" if setting is None else setting_str(setting),
                "leaves": len(members),
                "params": sum(plan.sizes[i] for i in members),
                "bytes": sum(plan.nbytes[i] for i in members),
            }
        )
    return rows


def _module_rows(plan: FreezePlan) -> list[dict[str, Any]]:
    flags = plan.frozen_flags
    modules: dict[str, dict[str, Any]] = {}
    for i, path in enumerate(plan.paths):
        row = modules.setdefault(
            path.split("/", 1)[0],
            {
                "module": path.split("/", 1)[0],
                "leaves": 0,
                "params": 0,
                "bytes": 0,
                "frozen_params": 0,
                "trainable_params": 0,
            },
        )
        row["leaves"] += 1
        row["params"] += plan.sizes[i]
        row["bytes"] += plan.nbytes[i]
        row["frozen_params" if flags[i] else "trainable_params"] += plan.sizes[i]
    for row in modules.values():
        row["status"] = (
            "frozen"
            if row["trainable_params"] == 0
            else "trainable"
            if row["frozen_params"] == 0
            else "partial"
        )
    return list(modules.values())


def summary(plan: FreezePlan) -> dict[str, Any]:
    """Counts per rule and per top-level module as plain data.

    Returns:
      ``{"rules": [...], "modules": [...], "total": {...}}``; each row has leaves, params,
      bytes, and (per module) frozen/trainable parameter counts.

    Example:
      >>> from jaxtl import freeze
      >>> p = freeze.plan({"a": 1.0, "b": 2.0}, [("a", None), ("b", {})])
      >>> summary(p)["total"]
      {'leaves': 2, 'params': 2, 'bytes': 0, 'frozen_params': 1, 'trainable_params': 1}
    """
    total = {
        "leaves": len(plan.paths),
        "params": sum(plan.sizes),
        "bytes": sum(plan.nbytes),
        "frozen_params": plan.num_frozen,
        "trainable_params": plan.num_trainable,
    }
    return {"rules": _rule_rows(plan), "modules": _module_rows(plan), "total": total}


def table(plan: FreezePlan) -> str:
    """The summary as a printable text table (also what ``print(plan)`` shows)."""
    s = summary(plan)
    rules = format_table(s["rules"], ["rule", "pattern", "setting", "leaves", "params", "bytes"])
    modules = format_table(
        s["modules"],
        ["module", "status", "leaves", "params", "trainable_params", "frozen_params", "bytes"],
    )
    t = s["total"]
    share = t["trainable_params"] / max(t["params"], 1)
    return (
        f"{rules}\n\n{modules}\n\ntrainable {t['trainable_params']:,} of {t['params']:,}"
        f" parameters ({share:.1%}), frozen {t['frozen_params']:,}"
    )
