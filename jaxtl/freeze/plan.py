"""Freeze plans: an ordered list of (pattern, setting) rules resolved against a parameter tree.

big_vision's convention: the first rule whose pattern matches a leaf decides it; ``None`` freezes
it; a dict trains it with per-rule multipliers. Every leaf must be covered and every rule must
match something, so a typo fails loudly instead of silently training (or freezing) the wrong
thing.

This module decides (:func:`plan`), and a :class:`FreezePlan` answers with masks, labels and
split/merge. What a plan is used for lives beside it: the optax wrapper in ``transform.py``,
BatchNorm statistics in ``batch_stats.py``, NNX adapters in ``nnx_adapters.py`` and the printed
table in ``table.py``; the plan's methods of those names delegate there.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import optax

from jaxtl.freeze import batch_stats, nnx_adapters, table, transform
from jaxtl.freeze import selectors as sel
from jaxtl.freeze.paths import (
    flatten_slots,
    flatten_with_paths,
    leaf_paths,
    rewrap,
    slot_paths,
    slot_value,
)
from jaxtl.freeze.rules import (
    DEFAULT_SETTING,
    FROZEN,
    SETTING_KEYS,
    TRAINABLE,
    PlanError,
    check_group,
    check_setting,
    closest,
    module_prefixes,
)
from jaxtl.freeze.structure import slots, unflatten
from jaxtl.freeze.summary import leaf_bytes, leaf_size
from jaxtl.freeze.transform import PlanOptimizerState

__all__ = [
    "FROZEN",
    "SETTING_KEYS",
    "TRAINABLE",
    "FreezePlan",
    "PlanError",
    "PlanOptimizerState",
    "layerwise_lr_rules",
    "plan",
]

PyTree = Any
Rule = tuple["str | sel.Selector", "Mapping[str, float] | None"]


@dataclasses.dataclass(frozen=True, eq=False)
class FreezePlan:
    """Which leaves of a parameter tree train, and how. Build it with :func:`plan`.

    A plan built on a Variable-wrapped ``nnx.State`` also takes its ``nnx.as_pure`` form (what
    ``nnx.Optimizer`` hands an optax transformation) and vice versa; masks and labels come in the
    pure container, which optax can map over both.

    Attributes:
      rules: the validated rules as (selector, setting) with settings resolved to full dicts.
      paths: every leaf path, in JAX leaf order.
      rule_of_leaf: for each leaf, the index of the rule that decided it.
      treedef: the tree's structure down to its parameter slots (NNX Variables count as slots).
    """

    rules: tuple[tuple[sel.Selector, dict[str, float] | None], ...]
    paths: tuple[str, ...]
    rule_of_leaf: tuple[int, ...]
    sizes: tuple[int, ...]
    nbytes: tuple[int, ...]
    treedef: Any

    # ---- masks and labels ----------------------------------------------------------------------
    @property
    def frozen_flags(self) -> tuple[bool, ...]:
        """For each leaf, in leaf order, whether it is frozen."""
        return tuple(self.rules[r][1] is None for r in self.rule_of_leaf)

    @property
    def frozen_mask(self) -> PyTree:
        """Bool pytree shaped like the params: True where the leaf is frozen."""
        return unflatten(self, self.frozen_flags)

    @property
    def trainable_mask(self) -> PyTree:
        """Bool pytree shaped like the params: True where the leaf trains.

        Hand it to ``optax.masked(tx, plan.trainable_mask)`` (which passes frozen updates through
        unchanged: pair it with ``plan.apply_updates``).
        """
        return unflatten(self, [not f for f in self.frozen_flags])

    @property
    def label_settings(self) -> dict[str, dict[str, float] | None]:
        """Each label of :attr:`labels` and its setting (``None`` for ``"frozen"``).

        Trainable leaves with the default setting are ``"trainable"``; every other distinct
        setting gets ``"trainable_1"``, ``"trainable_2"``, ... in rule order.

        Example:
          >>> p = plan({"a": 1.0, "b": 2.0, "c": 3.0}, [("a", None), ("b", {"lr_mult": 0.1}),
          ...                                          ("c", {})])
          >>> p.label_settings
          {'frozen': None, 'trainable_1': {'lr_mult': 0.1, 'wd_mult': 1.0}, 'trainable': {'lr_mult': 1.0, 'wd_mult': 1.0}}
        """
        out: dict[str, dict[str, float] | None] = {}
        numbered = 0
        for i in sorted(set(self.rule_of_leaf)):
            setting = self.rules[i][1]
            if setting is None:
                out.setdefault(FROZEN, None)
            elif setting == DEFAULT_SETTING:
                out.setdefault(TRAINABLE, dict(setting))
            elif setting not in out.values():
                numbered += 1
                out[f"{TRAINABLE}_{numbered}"] = dict(setting)
        return out

    @property
    def labels(self) -> PyTree:
        """Label pytree shaped like the params, for ``optax.multi_transform`` / ``partition``.

        Example (the Flax guide's ``path_aware_map`` labels, from a plan)::

          >>> import optax
          >>> params = {"backbone": {"w": 1.0}, "head": {"w": 2.0}}
          >>> labels = plan(params, [("backbone/.*", None), (".*", {})]).labels
          >>> labels
          {'backbone': {'w': 'frozen'}, 'head': {'w': 'trainable'}}
          >>> tx = optax.multi_transform(
          ...     {"trainable": optax.adam(1e-3), "frozen": optax.set_to_zero()}, labels)
        """
        names = {}
        for label, setting in self.label_settings.items():
            names.setdefault(None if setting is None else tuple(sorted(setting.items())), label)
        return unflatten(
            self,
            [
                names[None if s is None else tuple(sorted(s.items()))]
                for s in (self.rules[r][1] for r in self.rule_of_leaf)
            ],
        )

    @property
    def num_trainable(self) -> int:
        """Number of trainable scalar parameters."""
        return sum(s for s, f in zip(self.sizes, self.frozen_flags) if not f)

    @property
    def num_frozen(self) -> int:
        """Number of frozen scalar parameters."""
        return sum(s for s, f in zip(self.sizes, self.frozen_flags) if f)

    def is_frozen(self, path: str) -> bool:
        """Whether the leaf at ``path`` is frozen (KeyError-free: unknown paths raise PlanError)."""
        try:
            return self.frozen_flags[self.paths.index(path)]
        except ValueError:
            raise PlanError(
                f"no parameter at {path!r}; closest: {', '.join(closest(path, self.paths))}"
            ) from None

    # ---- split / merge -------------------------------------------------------------------------
    def split(self, tree: PyTree) -> tuple[PyTree, PyTree]:
        """Splits a tree shaped like the params into (trainable, frozen) partitions.

        Each partition keeps the full structure with ``None`` where the other partition's leaves
        are; ``None`` is an empty pytree, so optax allocates no state and ``jax.grad`` computes no
        gradient for the missing leaves (equinox's partition/combine).

        Example:
          >>> p = plan({"stem": {"w": 1.0}, "head": {"w": 2.0}}, [("head/.*", {}), (".*", None)])
          >>> p.split({"stem": {"w": 1.0}, "head": {"w": 2.0}})
          ({'head': {'w': 2.0}, 'stem': {'w': None}}, {'head': {'w': None}, 'stem': {'w': 1.0}})
        """
        found, treedef, _ = slots(self, tree, "the tree to split")
        flags = self.frozen_flags
        trainable = [rewrap(s, None) if f else s for s, f in zip(found, flags)]
        frozen = [s if f else rewrap(s, None) for s, f in zip(found, flags)]
        return (
            jax.tree_util.tree_unflatten(treedef, trainable),
            jax.tree_util.tree_unflatten(treedef, frozen),
        )

    def merge(self, trainable: PyTree, frozen: PyTree) -> PyTree:
        """Inverse of :meth:`split`: takes each leaf from the partition that owns it.

        Example:
          >>> p = plan({"a": 1.0, "b": 2.0}, [("a", None), ("b", {})])
          >>> p.merge(*p.split({"a": 1.0, "b": 2.0}))
          {'a': 1.0, 'b': 2.0}
        """
        t_slots, treedef, _ = slots(self, trainable, "the trainable partition")
        f_slots, _, _ = slots(self, frozen, "the frozen partition")
        out = []
        for t, f, flag, path in zip(t_slots, f_slots, self.frozen_flags, self.paths):
            owner = f if flag else t
            if slot_value(owner) is None:
                name = "frozen" if flag else "trainable"
                raise PlanError(
                    f"the {name} partition has no value at {path!r}; pass the partitions"
                    " returned by plan.split in the order (trainable, frozen)"
                )
            out.append(owner)
        return jax.tree_util.tree_unflatten(treedef, out)

    # ---- optax (transform.py) ------------------------------------------------------------------
    def optimizer(
        self, tx: optax.GradientTransformation, weight_decay: float | optax.Schedule = 0.0
    ) -> optax.GradientTransformation:
        """Wraps ``tx`` so it sees only the trainable leaves of params, grads and state.

        Built on optax's own partition: ``optax.partition({"frozen": set_to_zero, "trainable":
        tx}, labels)``, where ``optax.masked`` gives ``tx`` the trainable leaves only, then

        * frozen leaves get no optimizer state at all (not zeros: nothing) and updates of ``-0.0``,
          the exact additive identity, so ``optax.apply_updates`` leaves their bits unchanged;
        * transforms inside ``tx`` (global-norm clipping, adamw's decay, ...) see all trainable
          leaves at once and nothing else: frozen gradients never enter the clipping norm, and
          the norm is one norm over every trainable leaf (a partition per ``lr_mult`` group would
          clip each group on its own norm, so ``lr_mult`` is applied after ``tx`` instead);
        * ``lr_mult`` scales each leaf's final update (a PyTorch param-group learning rate);
        * ``weight_decay`` adds decoupled decay ``-weight_decay(step) * wd_mult * param`` per step,
          big_vision's convention (not multiplied by the learning rate). Use it when rules set
          ``wd_mult``; otherwise put decay in ``tx`` (e.g. ``optax.adamw``) as usual.

        Gradients and params may be the full tree, the trainable partition of :meth:`split`
        (``None`` where frozen) or the trainable leaves only (``nnx.state(model,
        plan.nnx_filter)``); updates come back in the gradients' container.

        Args:
          tx: any optax transformation, e.g. ``optax.chain(optax.clip_by_global_norm(1.0),
            optax.adamw(1e-3, weight_decay=1e-4))``.
          weight_decay: per-step decoupled decay (a float or an optax schedule).

        Returns:
          A transformation over the full params tree.

        Example:
          >>> import optax, jax.numpy as jnp
          >>> params = {"stem": {"w": jnp.ones(3)}, "head": {"w": jnp.ones(2)}}
          >>> p = plan(params, [("head/.*", {}), (".*", None)])
          >>> opt = p.optimizer(optax.adam(0.1))
          >>> state = opt.init(params)
          >>> grads = {"stem": {"w": jnp.ones(3)}, "head": {"w": jnp.ones(2)}}
          >>> updates, state = opt.update(grads, state, params)
          >>> optax.apply_updates(params, updates)["stem"]["w"].tolist()
          [1.0, 1.0, 1.0]
        """
        return transform.optimizer(self, tx, weight_decay)

    def apply_updates(self, params: PyTree, updates: PyTree) -> PyTree:
        """Applies ``updates`` to trainable leaves only; frozen leaves are passed through untouched.

        Unlike ``optax.apply_updates`` this never reads or writes a frozen leaf, so a jitted step
        spends no memory traffic on them (and their bits cannot change).
        """
        return transform.apply_updates(self, params, updates)

    # ---- other collections (batch_stats.py) ----------------------------------------------------
    def collection_mask(self, collection: PyTree) -> PyTree:
        """Frozen mask for a non-parameter collection with the same module paths (``batch_stats``).

        A statistic such as ``stage1/BatchNorm_0/mean`` is frozen when every parameter of its module
        (``stage1/BatchNorm_0/...``) is frozen. A norm module without parameters takes the status of
        the nearest enclosing module that has some.

        Example:
          >>> params = {"stem": {"BatchNorm_0": {"scale": 1.0}}, "head": {"kernel": 1.0}}
          >>> p = plan(params, [("head/.*", {}), (".*", None)])
          >>> p.collection_mask({"stem": {"BatchNorm_0": {"mean": 0.0, "var": 1.0}}})
          {'stem': {'BatchNorm_0': {'mean': True, 'var': True}}}
        """
        return batch_stats.collection_mask(self, collection)

    def restore_frozen_stats(self, old: PyTree, new: PyTree) -> PyTree:
        """Frozen modules' statistics from ``old``, the rest from ``new`` (Linen ``batch_stats``).

        A Linen train step with ``mutable=["batch_stats"]`` updates every BatchNorm's running
        statistics, frozen modules' too; call this on the step's result to keep them
        bit-identical.

        Example:
          >>> params = {"stem": {"BN": {"scale": 1.0}}, "head": {"BN": {"scale": 1.0}}}
          >>> p = plan(params, [("head/.*", {}), (".*", None)])
          >>> old = {"stem": {"BN": {"mean": 0.0}}, "head": {"BN": {"mean": 0.0}}}
          >>> new = {"stem": {"BN": {"mean": 5.0}}, "head": {"BN": {"mean": 5.0}}}
          >>> jax.tree.map(float, p.restore_frozen_stats(old, new))
          {'head': {'BN': {'mean': 5.0}}, 'stem': {'BN': {'mean': 0.0}}}
        """
        return batch_stats.restore_frozen_stats(self, old, new)

    # ---- flax nnx (nnx_adapters.py) ------------------------------------------------------------
    @property
    def nnx_filter(self) -> nnx_adapters.PathFilter:
        """An ``nnx`` filter selecting the trainable parameters.

        Use it as ``wrt=`` of ``nnx.Optimizer`` and in ``nnx.DiffState`` so that neither the
        optimizer state nor the gradient covers frozen variables.

        Example:
          >>> p = plan({"body": {"kernel": 1.0}, "head": {"kernel": 1.0}},
          ...          [("head/.*", {}), (".*", None)])
          >>> p.nnx_filter(("head", "kernel"), None), p.nnx_filter(("body", "kernel"), None)
          (True, False)
        """
        return nnx_adapters.nnx_filter(self)

    def nnx_view(self, model: Any) -> Any:
        """A view of an NNX model whose frozen modules' BatchNorms use their running statistics.

        The view shares every Variable with ``model`` (``nnx.view``); call it in the train step
        and differentiate the view: frozen BatchNorms then normalise with, and never update,
        their running mean and variance, while trainable ones train as usual.

        Example:
          >>> view = plan_.nnx_view(model)  # doctest: +SKIP
        """
        return nnx_adapters.nnx_view(self, model)

    # ---- summary (table.py) --------------------------------------------------------------------
    def summary(self) -> dict[str, list[dict[str, Any]]]:
        """Counts per rule and per top-level module as plain data.

        Returns:
          ``{"rules": [...], "modules": [...], "total": {...}}``; each row has leaves, params,
          bytes, and (per module) frozen/trainable parameter counts.
        """
        return table.summary(self)

    def table(self) -> str:
        """The summary as a printable text table (also what ``print(plan)`` shows)."""
        return table.table(self)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return (
            f"FreezePlan({len(self.rules)} rules, {len(self.paths)} leaves, "
            f"trainable={self.num_trainable:,}, frozen={self.num_frozen:,})"
        )


def _param_tree(params: PyTree) -> PyTree:
    # An nnx.Module is planned on its nnx.Param state; flax is already imported if one was passed.
    nnx = sys.modules.get("flax.nnx")
    if nnx is not None and isinstance(params, nnx.Module):
        return nnx.state(params, nnx.Param)
    return params


def _check_rules(
    rules: Sequence[Rule], paths: Sequence[str]
) -> list[tuple[sel.Selector, dict[str, float] | None]]:
    """Each rule as (selector, resolved setting); its layer groups must name something."""
    prefixes = module_prefixes(paths)
    checked: list[tuple[sel.Selector, dict[str, float] | None]] = []
    for index, rule in enumerate(rules):
        if not isinstance(rule, (tuple, list)) or len(rule) != 2:
            raise PlanError(
                f"rule {index} is {rule!r}; each rule is a (pattern, setting) pair such as"
                " ('stem/.*', None)"
            )
        pattern, setting = rule
        try:
            selector = sel.as_selector(pattern)
        except sel.SelectorError as err:
            raise PlanError(f"rule {index}: {err}") from None
        for group in selector.groups:
            check_group(group, prefixes, paths, f"rule {index} ({selector}): ")
        checked.append((selector, check_setting(index, str(selector), setting)))
    return checked


def _decide(
    checked: Sequence[tuple[sel.Selector, dict[str, float] | None]],
    paths: Sequence[str],
    leaves: Sequence[Any],
) -> list[int]:
    """The index of the first rule matching each leaf; every rule must decide some leaf, every
    leaf must be decided and something must train."""
    rule_of_leaf = []
    uncovered = []
    first_hit: list[int | None] = [None] * len(checked)  # the first leaf each rule matches
    for leaf_index, (path, leaf) in enumerate(zip(paths, leaves)):
        hits = [i for i, (selector, _) in enumerate(checked) if selector(path, leaf)]
        for i in hits:
            if first_hit[i] is None:
                first_hit[i] = leaf_index
        if hits:
            rule_of_leaf.append(hits[0])
        else:
            uncovered.append(path)
            rule_of_leaf.append(None)
    for index, hit in enumerate(first_hit):
        if hit is None:
            pattern = str(checked[index][0]).strip("'")
            raise PlanError(
                f"rule {index} ({checked[index][0]}) matches no parameter; closest paths:"
                f" {', '.join(closest(pattern, paths))}"
            )
        if index not in rule_of_leaf:
            earlier = rule_of_leaf[hit]
            raise PlanError(
                f"rule {index} ({checked[index][0]}) is shadowed: every parameter it matches was"
                f" already decided by an earlier rule (e.g. {paths[hit]!r} by rule {earlier}"
                f" ({checked[earlier][0]})); move it before rule {earlier} or remove it"
            )
    if uncovered:
        shown = ", ".join(uncovered[:3]) + (", ..." if len(uncovered) > 3 else "")
        raise PlanError(
            f"{len(uncovered)} parameter leaves are covered by no rule ({shown}); add a"
            " final catch-all rule such as ('.*', None) to freeze the rest"
        )
    if all(checked[r][1] is None for r in rule_of_leaf):
        raise PlanError(
            "every parameter is frozen; give at least one rule a setting dict to train it,"
            " e.g. ('head/.*', {})"
        )
    return rule_of_leaf


def plan(params: PyTree, rules: Sequence[Rule]) -> FreezePlan:
    """Resolves ordered ``(pattern, setting)`` rules against a parameter tree.

    Args:
      params: any pytree of arrays: a dict, flax FrozenDict, Linen ``variables["params"]``, an
        ``nnx.State`` (Variable-wrapped or pure) or an ``nnx.Module`` (its ``nnx.Param``
        variables). Only shapes and dtypes are read, so abstract arrays work too.
      rules: ordered ``(pattern, setting)`` pairs. ``pattern`` is a regex matched against the
        whole path, or a selector (:func:`~jaxtl.freeze.prefix`, ...). ``setting`` is ``None`` to
        freeze, or a dict with optional ``lr_mult`` / ``wd_mult`` (``{}`` = train with defaults).
        The first matching rule decides a leaf.

    Returns:
      The validated :class:`FreezePlan`.

    Raises:
      PlanError: with a one-line fix when a rule matches nothing, a rule matches only leaves an
        earlier rule already decided (it is shadowed), a layer group of a selector names nothing,
        a leaf is covered by no rule, nothing is trainable, ``lr_mult <= 0`` is used to freeze,
        a regex is invalid or a setting key is unknown.

    Example:
      >>> import jax.numpy as jnp
      >>> params = {"stem": {"kernel": jnp.ones((3, 4))}, "head": {"kernel": jnp.ones((4, 2))}}
      >>> p = plan(params, [("head/.*", {}), (".*", None)])
      >>> p.num_trainable, p.num_frozen
      (8, 12)
    """
    if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence) or not rules:
        raise PlanError(
            "rules must be a non-empty list of (pattern, setting) pairs, e.g."
            " [('head/.*', {}), ('.*', None)]"
        )
    params = _param_tree(params)
    paths, leaves, _ = flatten_with_paths(params)
    if not paths:
        raise PlanError(
            "the parameter tree has no leaves; pass variables['params'], not an empty tree"
        )
    found, treedef = flatten_slots(params)
    if len(found) != len(paths):
        hole = next(p for p, s in zip(slot_paths(params), found) if slot_value(s) is None)
        raise PlanError(
            f"the parameter tree has no value at {hole!r}; build the plan on the full params,"
            " not on a partition"
        )
    checked = _check_rules(rules, paths)
    return FreezePlan(
        rules=tuple(checked),
        paths=tuple(paths),
        rule_of_leaf=tuple(_decide(checked, paths, leaves)),
        sizes=tuple(leaf_size(x) for x in leaves),
        nbytes=tuple(leaf_bytes(x) for x in leaves),
        treedef=treedef,
    )


def layerwise_lr_rules(
    layer_groups: Sequence[str],
    decay: float,
    frozen: Sequence[str] = (),
    params: PyTree | None = None,
) -> list[Rule]:
    """Rules for layer-wise LR decay (discriminative fine-tuning).

    The group at distance ``d`` from the head (the last group) gets ``lr_mult = decay ** d``.

    Args:
      layer_groups: group prefixes ordered from the input to the head.
      decay: per-group factor in (0, 1].
      frozen: groups to freeze instead (get ``None``).
      params: the parameter tree (optional). When given, every group name is checked against it
        (a misspelt group fails with a did-you-mean) and a group that is itself a leaf
        (``embed``) gets a rule for exactly that leaf.

    Returns:
      Rules for :func:`plan`, one per group.

    Example:
      >>> layerwise_lr_rules(["stem", "block1", "head"], 0.5)
      [('stem/.*', {'lr_mult': 0.25}), ('block1/.*', {'lr_mult': 0.5}), ('head/.*', {'lr_mult': 1.0})]
      >>> layerwise_lr_rules(["embed", "head"], 0.5, params={"embed": 0.0, "head": {"w": 0.0}})
      [('embed', {'lr_mult': 0.5}), ('head/.*', {'lr_mult': 1.0})]
    """
    if not 0.0 < decay <= 1.0:
        raise PlanError(f"decay={decay!r} must be in (0, 1]; e.g. 0.65 (ELECTRA/BEiT) or 0.8")
    unknown = sorted(set(frozen) - set(layer_groups))
    if unknown:
        raise PlanError(
            f"frozen group {unknown[0]!r} is not a layer group; groups: {', '.join(layer_groups)}"
        )
    leaves: set[str] = set()
    if params is not None:
        paths = leaf_paths(_param_tree(params))
        prefixes = module_prefixes(paths)
        for group in layer_groups:
            check_group(group, prefixes, paths, "")
        leaves = set(paths)
    n = len(layer_groups)
    return [
        (
            re.escape(g) if g in leaves else f"{re.escape(g)}/.*",
            None if g in frozen else {"lr_mult": float(decay ** (n - 1 - i))},
        )
        for i, g in enumerate(layer_groups)
    ]
