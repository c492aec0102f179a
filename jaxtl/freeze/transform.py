"""A plan as an optax transformation: ``optax.partition`` of ``set_to_zero`` and the user's ``tx``.

Frozen leaves get no optimizer state and updates of ``-0.0``; the wrapped transformation sees
the trainable leaves only; ``lr_mult`` and decoupled ``wd_mult`` decay are applied after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxtl.freeze.paths import slot_value
from jaxtl.freeze.rules import FROZEN, TRAINABLE, PlanError
from jaxtl.freeze.structure import check_shapes, rebuild, slots, unflatten

if TYPE_CHECKING:
    from jaxtl.freeze.plan import FreezePlan

PyTree = Any


class PlanOptimizerState(NamedTuple):
    """State of :meth:`FreezePlan.optimizer`.

    Attributes:
      inner: an ``optax.PartitionState`` over the labels ``"frozen"`` (``set_to_zero``: no state)
        and ``"trainable"`` (the wrapped transformation, masked to the trainable leaves).
      count: steps taken, for a ``weight_decay`` schedule.
    """

    inner: Any
    count: jax.Array


def negative_zeros() -> optax.GradientTransformation:
    """``set_to_zero`` with the sign bit set: updates a frozen leaf keeps its bits under.

    Example:
      >>> import jax.numpy as jnp
      >>> tx = negative_zeros()
      >>> tx.update(jnp.ones(2), tx.init(jnp.ones(2)))[0].tolist()
      [-0.0, -0.0]
    """
    # optax.set_to_zero alone gives +0.0, and a frozen weight holding -0.0 becomes +0.0 under
    # optax.apply_updates (-0.0 + 0.0 == +0.0). Scaling the zeros by -1 gives -0.0, the one
    # additive identity of IEEE floats, so frozen leaves keep their bits even with optax's apply.
    return optax.chain(optax.set_to_zero(), optax.scale(-1.0))


def _init_values(plan: FreezePlan, params: PyTree) -> list[Any]:
    found, _, _ = slots(plan, params, "the params passed to opt.init", True)
    values = [slot_value(s) for s in found]
    for value, flag, path in zip(values, plan.frozen_flags, plan.paths):
        if value is None and not flag:
            raise PlanError(
                f"the params passed to opt.init have no value at trainable leaf {path!r};"
                " pass the full params (or their trainable partition)"
            )
    return values


def _fill_frozen_grads(
    plan: FreezePlan, grads: list[Any], p_values: Sequence[Any], only: bool
) -> None:
    """Puts each frozen leaf's param where its gradient is missing (``set_to_zero`` reads only
    its shape and dtype); a missing trainable gradient is an error."""
    flags = plan.frozen_flags
    for i, (g, p) in enumerate(zip(grads, p_values)):
        if g is not None or only:
            continue
        if not flags[i]:
            raise PlanError(
                f"the gradients have no value at trainable leaf {plan.paths[i]!r}; pass"
                " the full gradients or those of plan.split(params)[0]"
            )
        if p is None:
            raise PlanError(
                f"no gradient or param for frozen leaf {plan.paths[i]!r}; pass params"
                " to opt.update(grads, state, params)"
            )
        grads[i] = p


def _check_weight_decay(plan: FreezePlan, weight_decay: float | optax.Schedule) -> None:
    uses_wd_mult = any(s is not None and s["wd_mult"] != 1.0 for _, s in plan.rules)
    if uses_wd_mult and not callable(weight_decay) and weight_decay == 0.0:
        raise PlanError(
            "a rule sets wd_mult but plan.optimizer got weight_decay=0; pass"
            " plan.optimizer(tx, weight_decay=...) (decoupled decay the plan applies)"
        )


def optimizer(
    plan: FreezePlan, tx: optax.GradientTransformation, weight_decay: float | optax.Schedule = 0.0
) -> optax.GradientTransformation:
    """``tx`` restricted to the trainable leaves of ``plan``; see :meth:`FreezePlan.optimizer`.

    Example:
      >>> import optax, jax.numpy as jnp
      >>> from jaxtl import freeze
      >>> params = {"stem": {"w": jnp.ones(3)}, "head": {"w": jnp.ones(2)}}
      >>> p = freeze.plan(params, [("head/.*", {}), (".*", None)])
      >>> opt = optimizer(p, optax.sgd(0.1))
      >>> jax.tree.leaves(opt.init(params).inner) == []
      True
    """
    _check_weight_decay(plan, weight_decay)
    flags = plan.frozen_flags
    settings = [plan.rules[r][1] for r in plan.rule_of_leaf]
    lr_mults = [None if f else s["lr_mult"] for s, f in zip(settings, flags)]
    wd_mults = [None if f else s["wd_mult"] for s, f in zip(settings, flags)]
    decay = weight_decay if callable(weight_decay) else (lambda _: weight_decay)
    has_decay = callable(weight_decay) or weight_decay != 0.0
    partition = optax.partition(
        {FROZEN: negative_zeros(), TRAINABLE: tx},
        unflatten(plan, [FROZEN if f else TRAINABLE for f in flags]),
    )

    def init_fn(params):
        return PlanOptimizerState(
            inner=partition.init(unflatten(plan, _init_values(plan, params))),
            count=jnp.zeros([], jnp.int32),
        )

    def update_fn(updates, state, params=None):
        g_slots, g_treedef, only = slots(plan, updates, "the gradients passed to opt.update", True)
        grads = [slot_value(s) for s in g_slots]
        p_values = (
            [None] * len(flags)
            if params is None
            else [
                slot_value(s)
                for s in slots(plan, params, "the params passed to opt.update", True)[0]
            ]
        )
        if has_decay and params is None:
            raise PlanError("weight_decay needs params: call opt.update(grads, state, params)")
        check_shapes(plan, grads, p_values, "gradient/param")
        _fill_frozen_grads(plan, grads, p_values, only)
        inner_updates, inner = partition.update(
            unflatten(plan, grads),
            state.inner,
            None if params is None else unflatten(plan, p_values),
        )
        rate = decay(state.count)
        out = []
        for i, u in enumerate(plan.treedef.flatten_up_to(inner_updates)):
            if not flags[i]:
                if lr_mults[i] != 1.0:
                    u = u * jnp.asarray(lr_mults[i], u.dtype)
                if has_decay and wd_mults[i]:
                    u = u - (rate * wd_mults[i] * p_values[i]).astype(u.dtype)
            out.append(u)
        return rebuild(plan, g_treedef, g_slots, out, only), PlanOptimizerState(
            inner=inner, count=optax.safe_increment(state.count)
        )

    return optax.GradientTransformation(init_fn, update_fn)


def apply_updates(plan: FreezePlan, params: PyTree, updates: PyTree) -> PyTree:
    """``updates`` added to the trainable leaves of ``params``; frozen leaves are never read.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxtl import freeze
      >>> p = freeze.plan({"a": jnp.ones(1), "b": jnp.ones(1)}, [("a", None), ("b", {})])
      >>> new = apply_updates(p, {"a": jnp.ones(1), "b": jnp.ones(1)},
      ...                     {"a": jnp.ones(1), "b": jnp.ones(1)})
      >>> new["a"].tolist(), new["b"].tolist()
      ([1.0], [2.0])
    """
    p_slots, treedef, only = slots(plan, params, "the params passed to apply_updates", True)
    u_slots, _, _ = slots(plan, updates, "the updates passed to apply_updates", True)
    p_values = [slot_value(s) for s in p_slots]
    u_values = [slot_value(s) for s in u_slots]
    check_shapes(plan, u_values, p_values, "update/param")
    train = [i for i, f in enumerate(plan.frozen_flags) if not f]
    new = optax.apply_updates([p_values[i] for i in train], [u_values[i] for i in train])
    values = list(p_values)
    for i, value in zip(train, new):
        values[i] = value
    return rebuild(plan, treedef, p_slots, values, only)
