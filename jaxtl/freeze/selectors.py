"""Composable predicates over leaf paths: which parameters a rule talks about.

A :class:`Selector` is a named predicate ``(path, leaf) -> bool``. Selectors compose with
``|``, ``&`` and ``~`` and print as the expression that built them, so a freeze plan's
summary shows exactly what each rule meant.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax

from jaxtl.freeze.paths import flatten_with_paths

PyTree = Any


class SelectorError(ValueError):
    """A selector was built from invalid input (bad regex, bad group count, ...)."""


@dataclasses.dataclass(frozen=True)
class Selector:
    """A named predicate over (path, leaf).

    Attributes:
      fn: the predicate.
      description: how the selector prints, e.g. ``regex('stage1/.*')``.
      groups: layer-group prefixes the selector was built from (:func:`first_k_groups`);
        :func:`jaxtl.freeze.plan` checks that each one names something in the tree.
    """

    fn: Callable[[str, Any], bool]
    description: str
    groups: tuple[str, ...] = ()

    def __call__(self, path: str, leaf: Any = None) -> bool:
        return bool(self.fn(path, leaf))

    def __or__(self, other: Selector) -> Selector:
        other = as_selector(other)
        return Selector(
            lambda p, x: self(p, x) or other(p, x),
            f"({self} | {other})",
            self.groups + other.groups,
        )

    def __and__(self, other: Selector) -> Selector:
        other = as_selector(other)
        return Selector(
            lambda p, x: self(p, x) and other(p, x),
            f"({self} & {other})",
            self.groups + other.groups,
        )

    def __invert__(self) -> Selector:
        return Selector(lambda p, x: not self(p, x), f"~{self}", self.groups)

    def __str__(self) -> str:
        return self.description


def regex(pattern: str) -> Selector:
    """Selects leaves whose whole path matches ``pattern`` (``re.fullmatch``).

    Example:
      >>> regex("stage[12]/.*")("stage1/Conv_0/kernel")
      True
    """
    try:
        compiled = re.compile(pattern)
    except re.error as err:
        raise SelectorError(
            f"invalid regex {pattern!r}: {err}; patterns are Python regexes matched against the"
            " whole path, e.g. 'stage1/.*' or '.*/kernel'"
        ) from None
    return Selector(lambda p, _: compiled.fullmatch(p) is not None, repr(pattern))


def glob(pattern: str) -> Selector:
    """Selects leaves whose path matches a shell-style glob (``*`` also crosses "/").

    Example:
      >>> glob("*/BatchNorm_*/scale")("stem/BatchNorm_0/scale")
      True
    """
    return Selector(lambda p, _: fnmatch.fnmatchcase(p, pattern), f"glob({pattern!r})")


def prefix(module: str) -> Selector:
    """Selects ``module`` itself and every leaf below it (``module/...``).

    Example:
      >>> prefix("stage1")("stage1/Conv_0/kernel"), prefix("stage1")("stage10/bias")
      (True, False)
    """
    module = module.rstrip("/")
    return Selector(lambda p, _: p == module or p.startswith(module + "/"), f"prefix({module!r})")


def predicate(fn: Callable[[str, Any], bool], name: str | None = None) -> Selector:
    """Wraps an arbitrary ``fn(path, leaf) -> bool`` (e.g. on leaf shape) as a selector.

    Example:
      >>> is_bias = predicate(lambda path, leaf: path.endswith("bias"), "is_bias")
      >>> is_bias("head/bias")
      True
    """
    return Selector(fn, name or getattr(fn, "__name__", "predicate"))


NOTHING = Selector(lambda p, x: False, "nothing")
EVERYTHING = Selector(lambda p, x: True, "everything")


def as_selector(pattern: str | Selector) -> Selector:
    """A regex string becomes :func:`regex`; a :class:`Selector` is returned unchanged."""
    if isinstance(pattern, Selector):
        return pattern
    if isinstance(pattern, str):
        return regex(pattern)
    raise SelectorError(
        f"a rule pattern must be a regex string or a jaxtl.freeze selector, got {type(pattern).__name__}"
    )


def first_k_groups(layer_groups: Sequence[str], k: int) -> Selector:
    """Selects every leaf under the first ``k`` of an ordered list of group prefixes.

    This is depth in a model-agnostic form: "freeze the first k layer groups" means the same for
    an MLP, a ResNet or a ViT once each model lists its groups from input to head.

    Args:
      layer_groups: group prefixes ordered from the input to the head.
      k: how many leading groups, ``0 <= k <= len(layer_groups)``.

    Returns:
      A selector; ``k == 0`` selects nothing. :func:`jaxtl.freeze.plan` checks every group name
      against the parameter tree (a misspelt group fails with a did-you-mean instead of silently
      leaving that group trainable). A group may itself be a leaf (``embed``).

    Example:
      >>> sel = first_k_groups(["stem", "stage1", "stage2", "head"], 2)
      >>> sel("stage1/Conv_0/kernel"), sel("stage2/Conv_0/kernel")
      (True, False)
    """
    groups = list(layer_groups)
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= len(groups):
        raise SelectorError(
            f"k={k!r} is out of range; choose an int in 0..{len(groups)} for groups {groups}"
        )
    selected = NOTHING
    for group in groups[:k]:
        selected = prefix(group) if selected is NOTHING else selected | prefix(group)
    return Selector(
        selected.fn, f"first_k_groups(k={k}: {', '.join(groups[:k]) or 'none'})", tuple(groups)
    )


def select(tree: PyTree, selector: str | Selector) -> PyTree:
    """Returns a bool pytree shaped like ``tree``: True where ``selector`` matches the leaf.

    Example:
      >>> select({"head": {"kernel": 1}, "stem": {"kernel": 2}}, prefix("head"))
      {'head': {'kernel': True}, 'stem': {'kernel': False}}
    """
    selector = as_selector(selector)
    paths, leaves, treedef = flatten_with_paths(tree)
    return jax.tree_util.tree_unflatten(treedef, [selector(p, x) for p, x in zip(paths, leaves)])
