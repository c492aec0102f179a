"""Freeze plans: an ordered list of (pattern, setting) rules resolved against a parameter tree.

big_vision's convention: the first rule whose pattern matches a leaf decides it; ``None`` freezes
it; a dict trains it with per-rule multipliers. Every leaf must be covered and every rule must
match something, so a typo fails loudly instead of silently training (or freezing) the wrong
thing.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxtl.freeze import selectors as sel
from jaxtl.freeze.paths import flatten_with_paths, leaf_paths
from jaxtl.freeze.summary import format_table, leaf_bytes, leaf_size

PyTree = Any
Rule = tuple["str | sel.Selector", "Mapping[str, float] | None"]

SETTING_KEYS = ("lr_mult", "wd_mult")
_DEFAULT_SETTING = {"lr_mult": 1.0, "wd_mult": 1.0}


class PlanError(ValueError):
    """A freeze plan's rules do not fit the parameter tree; the message says how to fix them."""


def _closest(pattern: str, paths: Sequence[str], n: int = 3) -> list[str]:
    candidates = sorted(set(paths))
    close = difflib.get_close_matches(pattern, candidates, n=n, cutoff=0.0)
    return close or candidates[:n]


def _check_setting(index: int, pattern: str, setting: Any) -> dict[str, float] | None:
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
    resolved = {**_DEFAULT_SETTING, **{k: float(v) for k, v in setting.items()}}
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


class PlanOptimizerState(NamedTuple):
    """State of :meth:`FreezePlan.optimizer`: the inner state over the trainable partition only."""

    inner: Any
    count: jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class FreezePlan:
    """Which leaves of a parameter tree train, and how. Build it with :func:`plan`.

    Attributes:
      rules: the validated rules as (selector, setting) with settings resolved to full dicts.
      paths: every leaf path, in JAX leaf order.
      rule_of_leaf: for each leaf, the index of the rule that decided it.
    """

    rules: tuple[tuple[sel.Selector, dict[str, float] | None], ...]
    paths: tuple[str, ...]
    rule_of_leaf: tuple[int, ...]
    sizes: tuple[int, ...]
    nbytes: tuple[int, ...]
    treedef: Any

    # ---- masks ---------------------------------------------------------------------------------
    def _setting(self, leaf_index: int) -> dict[str, float] | None:
        return self.rules[self.rule_of_leaf[leaf_index]][1]

    @property
    def frozen_flags(self) -> tuple[bool, ...]:
        return tuple(self._setting(i) is None for i in range(len(self.paths)))

    @property
    def frozen_mask(self) -> PyTree:
        """Bool pytree shaped like the params: True where the leaf is frozen."""
        return jax.tree_util.tree_unflatten(self.treedef, list(self.frozen_flags))

    @property
    def trainable_mask(self) -> PyTree:
        """Bool pytree shaped like the params: True where the leaf trains."""
        return jax.tree_util.tree_unflatten(self.treedef, [not f for f in self.frozen_flags])

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
                f"no parameter at {path!r}; closest: {', '.join(_closest(path, self.paths))}"
            ) from None

    # ---- split / merge -------------------------------------------------------------------------
    def _leaves(self, tree: PyTree, what: str) -> list[Any]:
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        if treedef != self.treedef:
            paths = leaf_paths(tree)
            extra = sorted(set(paths) - set(self.paths))
            missing = sorted(set(self.paths) - set(paths))
            detail = (
                f"unexpected {extra[0]!r}"
                if extra
                else f"missing {missing[0]!r}"
                if missing
                else "same paths, different container types"
            )
            raise PlanError(
                f"{what} does not have the structure the plan was built for ({detail});"
                " build the plan from this tree with freeze.plan(tree, rules)"
            )
        return leaves

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
        leaves = self._leaves(tree, "the tree to split")
        flags = self.frozen_flags
        trainable = [None if f else x for x, f in zip(leaves, flags)]
        frozen = [x if f else None for x, f in zip(leaves, flags)]
        return (
            jax.tree_util.tree_unflatten(self.treedef, trainable),
            jax.tree_util.tree_unflatten(self.treedef, frozen),
        )

    def _unflatten_partition(self, leaves: Sequence[Any], keep_frozen: bool) -> PyTree:
        flags = self.frozen_flags
        return jax.tree_util.tree_unflatten(
            self.treedef, [x if f == keep_frozen else None for x, f in zip(leaves, flags)]
        )

    def merge(self, trainable: PyTree, frozen: PyTree) -> PyTree:
        """Inverse of :meth:`split`: takes each leaf from the partition that owns it.

        Example:
          >>> p = plan({"a": 1.0, "b": 2.0}, [("a", None), ("b", {})])
          >>> p.merge(*p.split({"a": 1.0, "b": 2.0}))
          {'a': 1.0, 'b': 2.0}
        """
        flags = self.frozen_flags
        t_leaves = self._partition_leaves(trainable, flags, want_frozen=False)
        f_leaves = self._partition_leaves(frozen, flags, want_frozen=True)
        return jax.tree_util.tree_unflatten(
            self.treedef, [f if flag else t for t, f, flag in zip(t_leaves, f_leaves, flags)]
        )

    def _partition_leaves(
        self, part: PyTree, flags: Sequence[bool], want_frozen: bool
    ) -> list[Any]:
        leaves = self.treedef.flatten_up_to(part)
        name = "frozen" if want_frozen else "trainable"
        for leaf, flag, path in zip(leaves, flags, self.paths):
            if flag == want_frozen and leaf is None:
                raise PlanError(
                    f"the {name} partition has no value at {path!r}; pass the partitions"
                    " returned by plan.split in the order (trainable, frozen)"
                )
        return leaves

    # ---- optax ---------------------------------------------------------------------------------
    def optimizer(
        self, tx: optax.GradientTransformation, weight_decay: float | optax.Schedule = 0.0
    ) -> optax.GradientTransformation:
        """Wraps ``tx`` so it sees only the trainable partition of params, grads and state.

        * frozen leaves get no optimizer state at all (not zeros: nothing) and updates of ``-0.0``,
          the exact additive identity, so ``optax.apply_updates`` leaves their bits unchanged;
        * transforms inside ``tx`` (global-norm clipping, adamw's decay, ...) see trainable leaves
          only, so frozen gradients never enter the clipping norm;
        * ``lr_mult`` scales each leaf's final update (a PyTorch param-group learning rate);
        * ``weight_decay`` adds decoupled decay ``-weight_decay(step) * wd_mult * param`` per step,
          big_vision's convention (not multiplied by the learning rate). Use it when rules set
          ``wd_mult``; otherwise put decay in ``tx`` (e.g. ``optax.adamw``) as usual.

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
        uses_wd_mult = any(s is not None and s["wd_mult"] != 1.0 for _, s in self.rules)
        if uses_wd_mult and not callable(weight_decay) and weight_decay == 0.0:
            raise PlanError(
                "a rule sets wd_mult but plan.optimizer got weight_decay=0; pass"
                " plan.optimizer(tx, weight_decay=...) (decoupled decay the plan applies)"
            )
        flags = self.frozen_flags
        lr_mults = [None if f else self._setting(i)["lr_mult"] for i, f in enumerate(flags)]
        wd_mults = [None if f else self._setting(i)["wd_mult"] for i, f in enumerate(flags)]
        decay = weight_decay if callable(weight_decay) else (lambda _: weight_decay)
        has_decay = callable(weight_decay) or weight_decay != 0.0

        def init_fn(params):
            trainable, _ = self.split(params)
            return PlanOptimizerState(inner=tx.init(trainable), count=jnp.zeros([], jnp.int32))

        def update_fn(updates, state, params=None):
            # Gradients may come as a full tree or as the trainable partition (None where frozen),
            # which is what differentiating w.r.t. plan.split(params)[0] produces.
            g_leaves = self.treedef.flatten_up_to(updates)
            p_leaves = (
                self.treedef.flatten_up_to(params) if params is not None else [None] * len(flags)
            )
            if has_decay and params is None:
                raise PlanError("weight_decay needs params: call opt.update(grads, state, params)")
            grads = self._unflatten_partition(g_leaves, keep_frozen=False)
            trainable_params = (
                None if params is None else self._unflatten_partition(p_leaves, keep_frozen=False)
            )
            inner_updates, inner = tx.update(grads, state.inner, trainable_params)
            u_leaves = self.treedef.flatten_up_to(inner_updates)
            rate = decay(state.count)
            out = []
            for i, (u, g, p) in enumerate(zip(u_leaves, g_leaves, p_leaves)):
                if flags[i]:
                    like = g if g is not None else p
                    if like is None:
                        raise PlanError(
                            f"no gradient or param for frozen leaf {self.paths[i]!r}; pass params"
                            " to opt.update(grads, state, params)"
                        )
                    out.append(jnp.full(jnp.shape(like), -0.0, jnp.result_type(like)))
                    continue
                if lr_mults[i] != 1.0:
                    u = u * jnp.asarray(lr_mults[i], u.dtype)
                if has_decay and wd_mults[i]:
                    u = u - (rate * wd_mults[i] * p).astype(u.dtype)
                out.append(u)
            new_updates = jax.tree_util.tree_unflatten(self.treedef, out)
            return new_updates, PlanOptimizerState(
                inner=inner, count=optax.safe_increment(state.count)
            )

        return optax.GradientTransformation(init_fn, update_fn)

    def apply_updates(self, params: PyTree, updates: PyTree) -> PyTree:
        """Applies ``updates`` to trainable leaves only; frozen leaves are passed through untouched.

        Unlike ``optax.apply_updates`` this never reads or writes a frozen leaf, so a jitted step
        spends no memory traffic on them (and their bits cannot change).
        """
        trainable, frozen = self.split(params)
        trainable_updates, _ = self.split(updates)
        return self.merge(optax.apply_updates(trainable, trainable_updates), frozen)

    # ---- other collections ---------------------------------------------------------------------
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
        paths, _, treedef = flatten_with_paths(collection)
        flags = self.frozen_flags
        out = []
        for path in paths:
            module = path.rsplit("/", 1)[0] if "/" in path else ""
            status = None
            while module and status is None:
                owned = [f for p, f in zip(self.paths, flags) if p.startswith(module + "/")]
                status = all(owned) if owned else None
                module = module.rsplit("/", 1)[0] if "/" in module else ""
            if status is None:
                raise PlanError(
                    f"collection leaf {path!r} belongs to no module with parameters; the"
                    " collection must share module paths with the params the plan was built on"
                )
            out.append(status)
        return jax.tree_util.tree_unflatten(treedef, out)

    # ---- summary -------------------------------------------------------------------------------
    def summary(self) -> dict[str, list[dict[str, Any]]]:
        """Counts per rule and per top-level module as plain data.

        Returns:
          ``{"rules": [...], "modules": [...], "total": {...}}``; each row has leaves, params,
          bytes, and (per module) frozen/trainable parameter counts.
        """
        flags = self.frozen_flags
        rule_rows = []
        for index, (selector, setting) in enumerate(self.rules):
            members = [i for i, r in enumerate(self.rule_of_leaf) if r == index]
            rule_rows.append(
                {
                    "rule": index,
                    "pattern": str(selector),
                    "setting": "frozen" if setting is None else _setting_str(setting),
                    "leaves": len(members),
                    "params": sum(self.sizes[i] for i in members),
                    "bytes": sum(self.nbytes[i] for i in members),
                }
            )
        modules: dict[str, dict[str, Any]] = {}
        for i, path in enumerate(self.paths):
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
            row["params"] += self.sizes[i]
            row["bytes"] += self.nbytes[i]
            row["frozen_params" if flags[i] else "trainable_params"] += self.sizes[i]
        for row in modules.values():
            row["status"] = (
                "frozen"
                if row["trainable_params"] == 0
                else "trainable"
                if row["frozen_params"] == 0
                else "partial"
            )
        total = {
            "leaves": len(self.paths),
            "params": sum(self.sizes),
            "bytes": sum(self.nbytes),
            "frozen_params": self.num_frozen,
            "trainable_params": self.num_trainable,
        }
        return {"rules": rule_rows, "modules": list(modules.values()), "total": total}

    def table(self) -> str:
        """The summary as a printable text table (also what ``print(plan)`` shows)."""
        s = self.summary()
        rules = format_table(
            s["rules"], ["rule", "pattern", "setting", "leaves", "params", "bytes"]
        )
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

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return (
            f"FreezePlan({len(self.rules)} rules, {len(self.paths)} leaves, "
            f"trainable={self.num_trainable:,}, frozen={self.num_frozen:,})"
        )


def _setting_str(setting: Mapping[str, float]) -> str:
    changed = {k: v for k, v in setting.items() if v != _DEFAULT_SETTING[k]}
    return "train" + (
        "" if not changed else " " + ", ".join(f"{k}={v:g}" for k, v in changed.items())
    )


def plan(params: PyTree, rules: Sequence[Rule]) -> FreezePlan:
    """Resolves ordered ``(pattern, setting)`` rules against a parameter tree.

    Args:
      params: any pytree of arrays: a dict, flax FrozenDict, Linen ``variables["params"]`` or an
        ``nnx.State``. Only shapes and dtypes are read, so abstract arrays work too.
      rules: ordered ``(pattern, setting)`` pairs. ``pattern`` is a regex matched against the
        whole path, or a selector (:func:`~jaxtl.freeze.prefix`, ...). ``setting`` is ``None`` to
        freeze, or a dict with optional ``lr_mult`` / ``wd_mult`` (``{}`` = train with defaults).
        The first matching rule decides a leaf.

    Returns:
      The validated :class:`FreezePlan`.

    Raises:
      PlanError: with a one-line fix when a rule matches nothing, a leaf is covered by no rule,
        nothing is trainable, ``lr_mult <= 0`` is used to freeze, a regex is invalid or a
        setting key is unknown.

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
    paths, leaves, treedef = flatten_with_paths(params)
    if not paths:
        raise PlanError(
            "the parameter tree has no leaves; pass variables['params'], not an empty tree"
        )
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
        checked.append((selector, _check_setting(index, str(selector), setting)))

    rule_of_leaf = []
    uncovered = []
    matched = [False] * len(checked)
    for path, leaf in zip(paths, leaves):
        hits = [i for i, (selector, _) in enumerate(checked) if selector(path, leaf)]
        for i in hits:
            matched[i] = True
        if hits:
            rule_of_leaf.append(hits[0])
        else:
            uncovered.append(path)
    for index, was_matched in enumerate(matched):
        if not was_matched:
            pattern = str(checked[index][0]).strip("'")
            raise PlanError(
                f"rule {index} ({checked[index][0]}) matches no parameter; closest paths:"
                f" {', '.join(_closest(pattern, paths))}"
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
    return FreezePlan(
        rules=tuple(checked),
        paths=tuple(paths),
        rule_of_leaf=tuple(rule_of_leaf),
        sizes=tuple(leaf_size(x) for x in leaves),
        nbytes=tuple(leaf_bytes(x) for x in leaves),
        treedef=treedef,
    )


def layerwise_lr_rules(
    layer_groups: Sequence[str], decay: float, frozen: Sequence[str] = ()
) -> list[Rule]:
    """Rules for layer-wise LR decay (discriminative fine-tuning).

    The group at distance ``d`` from the head (the last group) gets ``lr_mult = decay ** d``.

    Args:
      layer_groups: group prefixes ordered from the input to the head.
      decay: per-group factor in (0, 1].
      frozen: groups to freeze instead (get ``None``).

    Returns:
      Rules for :func:`plan`, one per group.

    Example:
      >>> layerwise_lr_rules(["stem", "block1", "head"], 0.5)
      [('stem/.*', {'lr_mult': 0.25}), ('block1/.*', {'lr_mult': 0.5}), ('head/.*', {'lr_mult': 1.0})]
    """
    if not 0.0 < decay <= 1.0:
        raise PlanError(f"decay={decay!r} must be in (0, 1]; e.g. 0.65 (ELECTRA/BEiT) or 0.8")
    unknown = sorted(set(frozen) - set(layer_groups))
    if unknown:
        raise PlanError(
            f"frozen group {unknown[0]!r} is not a layer group; groups: {', '.join(layer_groups)}"
        )
    n = len(layer_groups)
    return [
        (f"{re.escape(g)}/.*", None if g in frozen else {"lr_mult": float(decay ** (n - 1 - i))})
        for i, g in enumerate(layer_groups)
    ]
