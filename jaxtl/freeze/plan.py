"""Freeze plans: an ordered list of (pattern, setting) rules resolved against a parameter tree.

big_vision's convention: the first rule whose pattern matches a leaf decides it; ``None`` freezes
it; a dict trains it with per-rule multipliers. Every leaf must be covered and every rule must
match something, so a typo fails loudly instead of silently training (or freezing) the wrong
thing.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxtl.freeze import selectors as sel
from jaxtl.freeze.paths import (
    flatten_slots,
    flatten_with_paths,
    leaf_paths,
    rewrap,
    slot_paths,
    slot_value,
)
from jaxtl.freeze.summary import format_table, leaf_bytes, leaf_size
from jaxtl.suggest import did_you_mean

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


FROZEN = "frozen"
TRAINABLE = "trainable"


class PlanOptimizerState(NamedTuple):
    """State of :meth:`FreezePlan.optimizer`.

    Attributes:
      inner: an ``optax.PartitionState`` over the labels ``"frozen"`` (``set_to_zero``: no state)
        and ``"trainable"`` (the wrapped transformation, masked to the trainable leaves).
      count: steps taken, for a ``weight_decay`` schedule.
    """

    inner: Any
    count: jax.Array


def _negative_zeros() -> optax.GradientTransformation:
    # optax.set_to_zero alone gives +0.0, and a frozen weight holding -0.0 becomes +0.0 under
    # optax.apply_updates (-0.0 + 0.0 == +0.0). Scaling the zeros by -1 gives -0.0, the one
    # additive identity of IEEE floats, so frozen leaves keep their bits even with optax's apply.
    return optax.chain(optax.set_to_zero(), optax.scale(-1.0))


@dataclasses.dataclass(frozen=True)
class _PathFilter:
    """An ``nnx`` filter (``(path, value) -> bool``) that accepts the given parameter paths."""

    paths: frozenset[str]
    description: str

    def __call__(self, path: tuple[Any, ...], value: Any) -> bool:
        return "/".join(str(key) for key in path) in self.paths

    def __repr__(self) -> str:
        return self.description


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
    def _setting(self, leaf_index: int) -> dict[str, float] | None:
        return self.rules[self.rule_of_leaf[leaf_index]][1]

    def _unflatten(self, values: Sequence[Any]) -> PyTree:
        return jax.tree_util.tree_unflatten(self.treedef, list(values))

    @property
    def frozen_flags(self) -> tuple[bool, ...]:
        return tuple(self._setting(i) is None for i in range(len(self.paths)))

    @property
    def frozen_mask(self) -> PyTree:
        """Bool pytree shaped like the params: True where the leaf is frozen."""
        return self._unflatten(self.frozen_flags)

    @property
    def trainable_mask(self) -> PyTree:
        """Bool pytree shaped like the params: True where the leaf trains.

        Hand it to ``optax.masked(tx, plan.trainable_mask)`` (which passes frozen updates through
        unchanged: pair it with ``plan.apply_updates``).
        """
        return self._unflatten([not f for f in self.frozen_flags])

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
            elif setting == _DEFAULT_SETTING:
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
        return self._unflatten(
            [
                names[None if s is None else tuple(sorted(s.items()))]
                for s in (self._setting(i) for i in range(len(self.paths)))
            ]
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
                f"no parameter at {path!r}; closest: {', '.join(_closest(path, self.paths))}"
            ) from None

    # ---- structure checks ----------------------------------------------------------------------
    def _mismatch(self, tree: PyTree, what: str) -> PlanError:
        theirs = slot_paths(tree)
        mine_set, theirs_set = set(self.paths), set(theirs)
        detail = None
        for mine, their in itertools.zip_longest(self.paths, theirs):
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
            want = _root_type_name(self.treedef)
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

    def _slots(
        self, tree: PyTree, what: str, trainable_only_ok: bool = False
    ) -> tuple[list[Any], Any, bool]:
        """(one slot per plan leaf, the caller's treedef, whether the tree held trainable leaves
        only). A trainable-only tree (``nnx.state(model, plan.nnx_filter)``) gets ``None`` in its
        frozen slots."""
        slots, treedef = flatten_slots(tree)
        if treedef == self.treedef:
            return slots, treedef, False
        if trainable_only_ok and tuple(slot_paths(tree)) == self._trainable_paths:
            it = iter(slots)
            return [None if f else next(it) for f in self.frozen_flags], treedef, True
        raise self._mismatch(tree, what)

    @property
    def _trainable_paths(self) -> tuple[str, ...]:
        return tuple(p for p, f in zip(self.paths, self.frozen_flags) if not f)

    def _rebuild(self, treedef: Any, slots: Sequence[Any], values: Sequence[Any], only: bool):
        pairs = zip(slots, values, self.frozen_flags)
        return jax.tree_util.tree_unflatten(
            treedef, [rewrap(s, v) for s, v, f in pairs if not (only and f)]
        )

    def _check_shapes(self, left: Sequence[Any], right: Sequence[Any], names: str) -> None:
        a, b = names.split("/")
        for path, x, y in zip(self.paths, left, right):
            if x is not None and y is not None and jnp.shape(x) != jnp.shape(y):
                raise PlanError(
                    f"the {a} at {path!r} has shape {tuple(jnp.shape(x))} but its {b} has"
                    f" {tuple(jnp.shape(y))}; pass {a}s of the params the plan was built for"
                )

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
        slots, treedef, _ = self._slots(tree, "the tree to split")
        flags = self.frozen_flags
        trainable = [rewrap(s, None) if f else s for s, f in zip(slots, flags)]
        frozen = [s if f else rewrap(s, None) for s, f in zip(slots, flags)]
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
        t_slots, treedef, _ = self._slots(trainable, "the trainable partition")
        f_slots, _, _ = self._slots(frozen, "the frozen partition")
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

    # ---- optax ---------------------------------------------------------------------------------
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
        partition = optax.partition(
            {FROZEN: _negative_zeros(), TRAINABLE: tx},
            self._unflatten([FROZEN if f else TRAINABLE for f in flags]),
        )

        def init_fn(params):
            slots, _, _ = self._slots(params, "the params passed to opt.init", True)
            values = [slot_value(s) for s in slots]
            for value, flag, path in zip(values, flags, self.paths):
                if value is None and not flag:
                    raise PlanError(
                        f"the params passed to opt.init have no value at trainable leaf {path!r};"
                        " pass the full params (or their trainable partition)"
                    )
            return PlanOptimizerState(
                inner=partition.init(self._unflatten(values)), count=jnp.zeros([], jnp.int32)
            )

        def update_fn(updates, state, params=None):
            g_slots, g_treedef, only = self._slots(
                updates, "the gradients passed to opt.update", True
            )
            grads = [slot_value(s) for s in g_slots]
            p_values = (
                [None] * len(flags)
                if params is None
                else [
                    slot_value(s)
                    for s in self._slots(params, "the params passed to opt.update", True)[0]
                ]
            )
            if has_decay and params is None:
                raise PlanError("weight_decay needs params: call opt.update(grads, state, params)")
            self._check_shapes(grads, p_values, "gradient/param")
            for i, (g, p) in enumerate(zip(grads, p_values)):
                if g is not None or only:
                    continue
                if not flags[i]:
                    raise PlanError(
                        f"the gradients have no value at trainable leaf {self.paths[i]!r}; pass"
                        " the full gradients or those of plan.split(params)[0]"
                    )
                if p is None:
                    raise PlanError(
                        f"no gradient or param for frozen leaf {self.paths[i]!r}; pass params"
                        " to opt.update(grads, state, params)"
                    )
                grads[i] = p  # set_to_zero reads only its shape and dtype
            inner_updates, inner = partition.update(
                self._unflatten(grads),
                state.inner,
                None if params is None else self._unflatten(p_values),
            )
            rate = decay(state.count)
            out = []
            for i, u in enumerate(self.treedef.flatten_up_to(inner_updates)):
                if not flags[i]:
                    if lr_mults[i] != 1.0:
                        u = u * jnp.asarray(lr_mults[i], u.dtype)
                    if has_decay and wd_mults[i]:
                        u = u - (rate * wd_mults[i] * p_values[i]).astype(u.dtype)
                out.append(u)
            return self._rebuild(g_treedef, g_slots, out, only), PlanOptimizerState(
                inner=inner, count=optax.safe_increment(state.count)
            )

        return optax.GradientTransformation(init_fn, update_fn)

    def apply_updates(self, params: PyTree, updates: PyTree) -> PyTree:
        """Applies ``updates`` to trainable leaves only; frozen leaves are passed through untouched.

        Unlike ``optax.apply_updates`` this never reads or writes a frozen leaf, so a jitted step
        spends no memory traffic on them (and their bits cannot change).
        """
        p_slots, treedef, only = self._slots(params, "the params passed to apply_updates", True)
        u_slots, _, _ = self._slots(updates, "the updates passed to apply_updates", True)
        p_values = [slot_value(s) for s in p_slots]
        u_values = [slot_value(s) for s in u_slots]
        self._check_shapes(u_values, p_values, "update/param")
        train = [i for i, f in enumerate(self.frozen_flags) if not f]
        new = optax.apply_updates([p_values[i] for i in train], [u_values[i] for i in train])
        values = list(p_values)
        for i, value in zip(train, new):
            values[i] = value
        return self._rebuild(treedef, p_slots, values, only)

    # ---- other collections ---------------------------------------------------------------------
    def _module_frozen(self, module: str) -> bool | None:
        """Whether every parameter of ``module`` (or its nearest ancestor with some) is frozen."""
        flags = self.frozen_flags
        while module:
            owned = [f for p, f in zip(self.paths, flags) if p.startswith(module + "/")]
            if owned:
                return all(owned)
            module = module.rsplit("/", 1)[0] if "/" in module else ""
        return None

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
        out = []
        for path in paths:
            status = self._module_frozen(path.rsplit("/", 1)[0] if "/" in path else "")
            if status is None:
                raise PlanError(
                    f"collection leaf {path!r} belongs to no module with parameters; the"
                    " collection must share module paths with the params the plan was built on"
                )
            out.append(status)
        return jax.tree_util.tree_unflatten(treedef, out)

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
        if not jax.tree_util.tree_leaves(old):
            return new
        mask = self.collection_mask(old)
        return jax.tree_util.tree_map(
            lambda m, o, n: o if m else jnp.asarray(n).astype(jnp.result_type(o)), mask, old, new
        )

    # ---- flax nnx ------------------------------------------------------------------------------
    @property
    def nnx_filter(self) -> _PathFilter:
        """An ``nnx`` filter selecting the trainable parameters.

        Use it as ``wrt=`` of ``nnx.Optimizer`` and in ``nnx.DiffState`` so that neither the
        optimizer state nor the gradient covers frozen variables.

        Example:
          >>> p = plan({"body": {"kernel": 1.0}, "head": {"kernel": 1.0}},
          ...          [("head/.*", {}), (".*", None)])
          >>> p.nnx_filter(("head", "kernel"), None), p.nnx_filter(("body", "kernel"), None)
          (True, False)
        """
        trainable = self._trainable_paths
        return _PathFilter(
            frozenset(trainable), f"trainable({len(trainable)} of {len(self.paths)})"
        )

    def nnx_view(self, model: Any) -> Any:
        """A view of an NNX model whose frozen modules' BatchNorms use their running statistics.

        The view shares every Variable with ``model`` (``nnx.view``); call it in the train step
        and differentiate the view: frozen BatchNorms then normalise with, and never update,
        their running mean and variance, while trainable ones train as usual.

        Example:
          >>> view = plan_.nnx_view(model)  # doctest: +SKIP
        """
        from flax import nnx  # the freezing core imports flax only for NNX users

        def frozen_norm(path: tuple[Any, ...], node: Any) -> bool:
            if not hasattr(node, "use_running_average"):
                return False
            return bool(self._module_frozen("/".join(str(k) for k in path)))

        return nnx.view(model, only=frozen_norm, raise_if_not_found=False, use_running_average=True)

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


def _root_type_name(treedef: Any) -> str:
    data = treedef.node_data()
    return "leaf" if data is None else data[0].__name__


def _module_prefixes(paths: Sequence[str]) -> set[str]:
    """Every path and every module above one: what a layer-group name may spell."""
    out = set()
    for path in paths:
        parts = path.split("/")
        out.update("/".join(parts[: j + 1]) for j in range(len(parts)))
    return out


def _check_group(group: str, prefixes: set[str], paths: Sequence[str], where: str) -> None:
    if group.rstrip("/") not in prefixes:
        tops = sorted({p.split("/", 1)[0] for p in paths})
        raise PlanError(
            f"{where}layer group {group!r} names nothing in the parameter tree"
            f"{did_you_mean(group, prefixes)}; top-level groups: {', '.join(tops)}"
        )


def _param_tree(params: PyTree) -> PyTree:
    # An nnx.Module is planned on its nnx.Param state; flax is already imported if one was passed.
    nnx = sys.modules.get("flax.nnx")
    if nnx is not None and isinstance(params, nnx.Module):
        return nnx.state(params, nnx.Param)
    return params


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
    slots, treedef = flatten_slots(params)
    if len(slots) != len(paths):
        hole = next(p for p, s in zip(slot_paths(params), slots) if slot_value(s) is None)
        raise PlanError(
            f"the parameter tree has no value at {hole!r}; build the plan on the full params,"
            " not on a partition"
        )
    prefixes = _module_prefixes(paths)
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
            _check_group(group, prefixes, paths, f"rule {index} ({selector}): ")
        checked.append((selector, _check_setting(index, str(selector), setting)))

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
                f" {', '.join(_closest(pattern, paths))}"
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
    return FreezePlan(
        rules=tuple(checked),
        paths=tuple(paths),
        rule_of_leaf=tuple(rule_of_leaf),
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
        prefixes = _module_prefixes(paths)
        for group in layer_groups:
            _check_group(group, prefixes, paths, "")
        leaves = set(paths)
    n = len(layer_groups)
    return [
        (
            re.escape(g) if g in leaves else f"{re.escape(g)}/.*",
            None if g in frozen else {"lr_mult": float(decay ** (n - 1 - i))},
        )
        for i, g in enumerate(layer_groups)
    ]
