"""Non-parameter collections under a plan: which BatchNorm statistics are frozen, and keeping them.

A statistic such as ``stage1/BatchNorm_0/mean`` belongs to the module ``stage1/BatchNorm_0``; it
is frozen when every parameter of that module is (a norm without parameters takes the status of
the nearest enclosing module that has some).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from jaxtl.freeze.paths import flatten_with_paths
from jaxtl.freeze.rules import PlanError

if TYPE_CHECKING:
    from jaxtl.freeze.plan import FreezePlan

PyTree = Any


def module_frozen(plan: FreezePlan, module: str) -> bool | None:
    """Whether every parameter of ``module`` (or its nearest ancestor with some) is frozen;
    ``None`` when no enclosing module has parameters.

    Example:
      >>> from jaxtl import freeze
      >>> p = freeze.plan({"stem": {"w": 1.0}, "head": {"w": 1.0}}, [("head/.*", {}), (".*", None)])
      >>> module_frozen(p, "stem/BatchNorm_0"), module_frozen(p, "head")
      (True, False)
    """
    flags = plan.frozen_flags
    while module:
        owned = [f for p, f in zip(plan.paths, flags) if p.startswith(module + "/")]
        if owned:
            return all(owned)
        module = module.rsplit("/", 1)[0] if "/" in module else ""
    return None


def collection_mask(plan: FreezePlan, collection: PyTree) -> PyTree:
    """Frozen mask for a non-parameter collection with the same module paths (``batch_stats``).

    Example:
      >>> from jaxtl import freeze
      >>> params = {"stem": {"BatchNorm_0": {"scale": 1.0}}, "head": {"kernel": 1.0}}
      >>> p = freeze.plan(params, [("head/.*", {}), (".*", None)])
      >>> collection_mask(p, {"stem": {"BatchNorm_0": {"mean": 0.0, "var": 1.0}}})
      {'stem': {'BatchNorm_0': {'mean': True, 'var': True}}}
    """
    paths, _, treedef = flatten_with_paths(collection)
    out = []
    for path in paths:
        status = module_frozen(plan, path.rsplit("/", 1)[0] if "/" in path else "")
        if status is None:
            raise PlanError(
                f"collection leaf {path!r} belongs to no module with parameters; the"
                " collection must share module paths with the params the plan was built on"
            )
        out.append(status)
    return jax.tree_util.tree_unflatten(treedef, out)


def restore_frozen_stats(plan: FreezePlan, old: PyTree, new: PyTree) -> PyTree:
    """Frozen modules' statistics from ``old``, the rest from ``new`` (Linen ``batch_stats``).

    Example:
      >>> from jaxtl import freeze
      >>> params = {"stem": {"BN": {"scale": 1.0}}, "head": {"BN": {"scale": 1.0}}}
      >>> p = freeze.plan(params, [("head/.*", {}), (".*", None)])
      >>> old = {"stem": {"BN": {"mean": 0.0}}, "head": {"BN": {"mean": 0.0}}}
      >>> new = {"stem": {"BN": {"mean": 5.0}}, "head": {"BN": {"mean": 5.0}}}
      >>> jax.tree.map(float, restore_frozen_stats(p, old, new))
      {'head': {'BN': {'mean': 5.0}}, 'stem': {'BN': {'mean': 0.0}}}
    """
    if not jax.tree_util.tree_leaves(old):
        return new
    mask = collection_mask(plan, old)
    return jax.tree_util.tree_map(
        lambda m, o, n: o if m else jnp.asarray(n).astype(jnp.result_type(o)), mask, old, new
    )
