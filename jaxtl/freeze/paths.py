"""Leaf paths of arbitrary parameter pytrees.

A leaf's path is its keys joined with "/", e.g. ``stage2/block0/Conv_0/kernel``. The same
string names a leaf whether the tree is a plain dict, a flax ``FrozenDict``, Linen
``variables["params"]`` or an ``nnx.State`` (whose Variable wrappers are transparent).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import jax
from jax.tree_util import DictKey, FlattenedIndexKey, GetAttrKey, SequenceKey

PyTree = Any

# nnx.Variable flattens to a node whose single child sits under this attribute; dropping it makes
# `layers/0/kernel` name the same parameter in Linen and NNX trees.
_VARIABLE_VALUE_KEYS = ("value", "raw_value")


def _key_str(key: Any) -> str:
    if isinstance(key, DictKey):
        return str(key.key)
    if isinstance(key, GetAttrKey):
        return key.name
    if isinstance(key, SequenceKey):
        return str(key.idx)
    if isinstance(key, FlattenedIndexKey):
        return str(key.key)
    return str(key)


def path_str(keypath: Sequence[Any]) -> str:
    """Joins a JAX key path into jaxtl's "/"-separated path string.

    Args:
      keypath: a key path as produced by ``jax.tree_util.tree_flatten_with_path``.

    Returns:
      The path string, e.g. ``"block1/Dense_0/kernel"``.

    Example:
      >>> import jax
      >>> [(kp, _)] = jax.tree_util.tree_flatten_with_path({"a": {"b": 1}})[0]
      >>> path_str(kp)
      'a/b'
    """
    keys = list(keypath)
    if len(keys) > 1 and isinstance(keys[-1], GetAttrKey) and keys[-1].name in _VARIABLE_VALUE_KEYS:
        keys = keys[:-1]
    return "/".join(_key_str(k) for k in keys)


def flatten_with_paths(tree: PyTree) -> tuple[list[str], list[Any], Any]:
    """Flattens ``tree`` into (paths, leaves, treedef), in JAX's leaf order.

    Example:
      >>> paths, leaves, _ = flatten_with_paths({"b": 2, "a": {"x": 1}})
      >>> paths
      ['a/x', 'b']
    """
    keyed, treedef = jax.tree_util.tree_flatten_with_path(tree)
    paths = [path_str(kp) for kp, _ in keyed]
    leaves = [leaf for _, leaf in keyed]
    return paths, leaves, treedef


def leaf_paths(tree: PyTree) -> list[str]:
    """Returns the path of every leaf of ``tree``, in JAX's leaf order.

    Example:
      >>> leaf_paths({"head": {"kernel": 0, "bias": 0}})
      ['head/bias', 'head/kernel']
    """
    return flatten_with_paths(tree)[0]


def _variable_type() -> type | None:
    # flax is never imported here: a tree can only hold nnx Variables once flax.nnx is loaded.
    module = sys.modules.get("flax.nnx.variablelib")
    return getattr(module, "Variable", None)


def is_variable(x: Any) -> bool:
    """Whether ``x`` is a Flax NNX ``Variable`` (``nnx.Param``, ``nnx.BatchStat``, ...)."""
    variable = _variable_type()
    return variable is not None and isinstance(x, variable)


def _is_slot(x: Any) -> bool:
    return x is None or is_variable(x)


def flatten_slots(tree: PyTree) -> tuple[list[Any], Any]:
    """Flattens ``tree`` down to its parameter slots: arrays, ``None`` holes and NNX Variables.

    The treedef is the same for a Variable-wrapped ``nnx.State``, its ``nnx.as_pure`` form and a
    partition of either with ``None`` holes, so one plan serves all of them.

    Example:
      >>> slots, treedef = flatten_slots({"a": None, "b": 1.0})
      >>> slots
      [None, 1.0]
    """
    return jax.tree_util.tree_flatten(tree, is_leaf=_is_slot)


def slot_paths(tree: PyTree) -> list[str]:
    """The path of every slot of :func:`flatten_slots`, in the same order."""
    keyed = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_slot)[0]
    return [path_str(kp) for kp, _ in keyed]


def slot_value(slot: Any) -> Any:
    """The array held by a slot (the Variable's value for an NNX Variable)."""
    return slot.get_raw_value() if is_variable(slot) else slot


def rewrap(slot: Any, value: Any) -> Any:
    """``value`` in the container ``slot`` had: wrapped in a Variable of the same kind if it was."""
    if not is_variable(slot):
        return value
    one_level = jax.tree_util.tree_structure(slot, is_leaf=lambda x: x is not slot)
    return jax.tree_util.tree_unflatten(one_level, [value])
