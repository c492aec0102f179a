"""Whether a tree fits the plan it is handed to, and trees rebuilt from a plan's leaves.

A plan is built on one parameter tree; masks, partitions, gradients and updates must have its
structure (or, for NNX, be its trainable leaves only). These checks say where a tree differs.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from jaxtl.freeze.paths import flatten_slots, rewrap, slot_paths
from jaxtl.freeze.rules import PlanError

if TYPE_CHECKING:
    from jaxtl.freeze.plan import FreezePlan

PyTree = Any


def unflatten(plan: FreezePlan, values: Sequence[Any]) -> PyTree:
    """A tree with the plan's structure holding ``values``, one per leaf in leaf order."""
    return jax.tree_util.tree_unflatten(plan.treedef, list(values))


def trainable_paths(plan: FreezePlan) -> tuple[str, ...]:
    """The paths of the trainable leaves, in leaf order."""
    return tuple(p for p, f in zip(plan.paths, plan.frozen_flags) if not f)


def _root_type_name(treedef: Any) -> str:
    data = treedef.node_data()
    return "leaf" if data is None else data[0].__name__


def mismatch(plan: FreezePlan, tree: PyTree, what: str) -> PlanError:
    """The error for ``tree`` not having the plan's structure, naming the first difference."""
    theirs = slot_paths(tree)
    mine_set, theirs_set = set(plan.paths), set(theirs)
    detail = None
    for mine, their in itertools.zip_longest(plan.paths, theirs):
        if their is not None and their not in mine_set:
            detail = f"first difference: unexpected {their!r}"
        elif mine is not None and mine not in theirs_set:
            detail = f"first difference: missing {mine!r}"
        elif mine != their:
            detail = f"first difference: leaf order at {mine!r}"
        if detail:
            break
    if detail is None:
        got = type(tree).__name__
        want = _root_type_name(plan.treedef)
        detail = (
            f"same paths, but a {got} where the plan has a {want}; convert it (e.g."
            " flax.core.unfreeze) or build the plan on this container"
            if got != want
            else "same paths, different container types below the top level"
        )
    return PlanError(
        f"{what} does not have the structure the plan was built for ({detail});"
        " build the plan from this tree with freeze.plan(tree, rules)"
    )


def slots(
    plan: FreezePlan, tree: PyTree, what: str, trainable_only_ok: bool = False
) -> tuple[list[Any], Any, bool]:
    """(one slot per plan leaf, the caller's treedef, whether the tree held trainable leaves
    only). A trainable-only tree (``nnx.state(model, plan.nnx_filter)``) gets ``None`` in its
    frozen slots."""
    found, treedef = flatten_slots(tree)
    if treedef == plan.treedef:
        return found, treedef, False
    if trainable_only_ok and tuple(slot_paths(tree)) == trainable_paths(plan):
        it = iter(found)
        return [None if f else next(it) for f in plan.frozen_flags], treedef, True
    raise mismatch(plan, tree, what)


def rebuild(
    plan: FreezePlan, treedef: Any, slots_: Sequence[Any], values: Sequence[Any], only: bool
) -> PyTree:
    """``values`` put back into the caller's slots; frozen ones dropped for a trainable-only tree."""
    pairs = zip(slots_, values, plan.frozen_flags)
    return jax.tree_util.tree_unflatten(
        treedef, [rewrap(s, v) for s, v, f in pairs if not (only and f)]
    )


def check_shapes(plan: FreezePlan, left: Sequence[Any], right: Sequence[Any], names: str) -> None:
    """Raises :class:`PlanError` where two leaves of a path differ in shape (``names="a/b"``)."""
    a, b = names.split("/")
    for path, x, y in zip(plan.paths, left, right):
        if x is not None and y is not None and jnp.shape(x) != jnp.shape(y):
            raise PlanError(
                f"the {a} at {path!r} has shape {tuple(jnp.shape(x))} but its {b} has"
                f" {tuple(jnp.shape(y))}; pass {a}s of the params the plan was built for"
            )
