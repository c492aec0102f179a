"""Optimizer-state carry-over between two freeze plans (a phase switch).

When training moves from one plan to the next (LP-FT's probe to its fine-tune, gradual
unfreezing), the per-parameter state of leaves that train in both phases (Adam's moments,
momentum traces) should carry over, so the head does not restart cold when the body thaws.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtl.freeze.paths import path_str
from jaxtl.freeze.plan import FreezePlan

PyTree = Any


def _param_leaf_index(state: PyTree, param_paths: frozenset[str]) -> dict[tuple[str, str], Any]:
    """Maps (state prefix, param path) -> leaf for every state leaf shaped like a parameter.

    A state leaf belongs to a parameter when a suffix of its key path spells the parameter's path
    (``.inner.inner_states['trainable'].inner_state[0].mu['head']['kernel']`` -> that prefix up
    to ``.mu``, param ``head/kernel``). ``plan.optimizer`` labels every trainable leaf
    ``"trainable"`` inside its state whatever the rules' ``lr_mult``/``wd_mult`` groups, so the
    prefix is the same in both plans' states.
    """
    index = {}
    for keypath, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        keys = list(keypath)
        for cut in range(len(keys)):
            path = path_str(keys[cut:])
            if path in param_paths:
                index[(jax.tree_util.keystr(tuple(keys[:cut])), path)] = leaf
                break
    return index


def carry_optimizer_state(
    old_state: PyTree, old_plan: FreezePlan, new_state: PyTree, new_plan: FreezePlan
) -> tuple[PyTree, tuple[str, ...]]:
    """Copies per-parameter optimizer state of leaves trainable in both phases into a new state.

    Works for any optax state: it walks ``new_state``, and every leaf that sits under a
    parameter's path (Adam's ``mu``/``nu``, momentum traces, ...) takes the old phase's value at
    the same place when that parameter was trainable before and is now, with the same shape.
    All other leaves (step counters, newly thawed parameters) keep their fresh init, so bias
    correction and schedules restart with the phase.

    Args:
      old_state, old_plan: the finished phase's optimizer state and plan.
      new_state, new_plan: the next phase's freshly initialised state and plan.

    Returns:
      ``(state, carried)``: the merged state and the sorted parameter paths whose state carried.

    Example:
      >>> opt_state, carried = carry_optimizer_state(s_lp, plan_lp, s_ft, plan_ft)  # doctest: +SKIP
    """
    trainable_old = {p for p, f in zip(old_plan.paths, old_plan.frozen_flags) if not f}
    trainable_new = {p for p, f in zip(new_plan.paths, new_plan.frozen_flags) if not f}
    both = frozenset(trainable_old & trainable_new)
    old_index = _param_leaf_index(old_state, frozenset(old_plan.paths))
    carried = set()
    leaves = []
    for keypath, leaf in jax.tree_util.tree_flatten_with_path(new_state)[0]:
        keys = list(keypath)
        value = leaf
        for cut in range(len(keys)):
            path = path_str(keys[cut:])
            if path in new_plan.paths:
                old = old_index.get((jax.tree_util.keystr(tuple(keys[:cut])), path))
                if (
                    path in both
                    and old is not None
                    and np.shape(old) == np.shape(leaf)
                    and jnp.result_type(old) == jnp.result_type(leaf)
                ):
                    value = old
                    carried.add(path)
                break
        leaves.append(value)
    treedef = jax.tree_util.tree_structure(new_state)
    return jax.tree_util.tree_unflatten(treedef, leaves), tuple(sorted(carried))
