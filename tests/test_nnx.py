"""Freezing a Flax NNX model end to end: nnx.Optimizer with plan.optimizer, plan.nnx_filter as
wrt= and in nnx.DiffState, frozen BatchNorms on running statistics, under nnx.jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxtl import freeze

HEAD_ONLY = [("head/.*", {}), (".*", None)]


class Block(nnx.Module):
    def __init__(self, din, dout, rngs):
        self.linear = nnx.Linear(din, dout, rngs=rngs)
        self.bn = nnx.BatchNorm(dout, momentum=0.5, rngs=rngs)

    def __call__(self, x):
        return nnx.relu(self.bn(self.linear(x)))


class Net(nnx.Module):
    def __init__(self, rngs, width=16):
        self.body = Block(8, width, rngs)
        self.head = Block(width, 3, rngs)

    def __call__(self, x):
        return self.head(self.body(x))


def batch():
    x = jax.random.normal(jax.random.key(0), (16, 8))
    return x, jnp.arange(16) % 3


def tx():
    return optax.chain(optax.clip_by_global_norm(0.1), optax.adamw(1e-2, weight_decay=0.5))


def bits(tree):
    return [np.asarray(x).tobytes() for x in jax.tree.leaves(nnx.as_pure(tree))]


def loss_fn(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def plan_step(model, optimizer, plan, x, y):
    """The docs' NNX step: frozen BatchNorms on running statistics, grads of trainable params."""
    grads = nnx.grad(loss_fn, argnums=nnx.DiffState(0, plan.nnx_filter))(plan.nnx_view(model), x, y)
    optimizer.update(model, grads)


def test_frozen_params_and_batch_stats_bit_identical_after_20_adamw_clip_steps():
    model = Net(nnx.Rngs(0))
    plan = freeze.plan(model, HEAD_ONLY)
    assert plan.paths[0] == "body/bn/bias" and plan.num_trainable == 16 * 3 + 3 + 2 * 3
    optimizer = nnx.Optimizer(model, plan.optimizer(tx()), wrt=plan.nnx_filter)
    frozen_before = nnx.as_pure(nnx.state(model.body))  # Params and BatchStats
    head_before = nnx.as_pure(nnx.state(model.head))
    step = nnx.jit(lambda m, o, x, y: plan_step(m, o, plan, x, y))
    x, y = batch()
    for _ in range(20):
        step(model, optimizer, x, y)
    assert bits(nnx.state(model.body)) == bits(frozen_before)
    assert bits(nnx.state(model.head.linear)) != bits(head_before["linear"])
    assert bits(nnx.state(model.head.bn, nnx.BatchStat)) != bits(
        nnx.state(head_before["bn"], nnx.BatchStat)
    )
    arrays = [x for x in jax.tree.leaves(nnx.as_pure(optimizer.opt_state)) if np.ndim(x) > 0]
    head = jax.tree.leaves(nnx.as_pure(nnx.state(model.head, nnx.Param)))
    assert len(arrays) == 2 * len(head)  # adam's mu and nu, for the head only
    assert sum(a.nbytes for a in arrays) == 2 * sum(h.nbytes for h in head)


def test_without_the_view_frozen_batch_stats_drift():
    """The control for the test above: nnx.view is what keeps frozen BatchStats fixed."""
    model = Net(nnx.Rngs(0))
    plan = freeze.plan(model, HEAD_ONLY)
    optimizer = nnx.Optimizer(model, plan.optimizer(tx()), wrt=plan.nnx_filter)
    stats_before = nnx.as_pure(nnx.state(model.body, nnx.BatchStat))

    @nnx.jit
    def step(model, optimizer, x, y):
        grads = nnx.grad(loss_fn, argnums=nnx.DiffState(0, plan.nnx_filter))(model, x, y)
        optimizer.update(model, grads)

    step(model, optimizer, *batch())
    assert bits(nnx.state(model.body, nnx.BatchStat)) != bits(stats_before)
    assert bits(nnx.state(model.body, nnx.Param)) == bits(
        nnx.as_pure(nnx.state(Net(nnx.Rngs(0)).body, nnx.Param))
    )


def test_wrt_param_with_full_gradients_still_holds_no_state_for_frozen_variables():
    model = Net(nnx.Rngs(0))
    plan = freeze.plan(model, HEAD_ONLY)
    optimizer = nnx.Optimizer(model, plan.optimizer(tx()), wrt=nnx.Param)
    frozen_before = nnx.as_pure(nnx.state(model.body))

    @nnx.jit
    def step(model, optimizer, x, y):
        grads = nnx.grad(loss_fn)(plan.nnx_view(model), x, y)
        optimizer.update(model, grads)

    for _ in range(3):
        step(model, optimizer, *batch())
    assert bits(nnx.state(model.body)) == bits(frozen_before)
    arrays = [x for x in jax.tree.leaves(nnx.as_pure(optimizer.opt_state)) if np.ndim(x) > 0]
    assert len(arrays) == 2 * len(jax.tree.leaves(nnx.state(model.head, nnx.Param)))


@pytest.mark.parametrize("built_on", ["variables", "pure"])
def test_a_plan_serves_variable_wrapped_and_pure_states(built_on):
    model = Net(nnx.Rngs(0))
    wrapped = nnx.state(model, nnx.Param)
    pure = nnx.as_pure(wrapped)
    plan = freeze.plan(wrapped if built_on == "variables" else pure, HEAD_ONLY)
    assert freeze.leaf_paths(plan.trainable_mask) == freeze.leaf_paths(pure)
    opt = plan.optimizer(tx())
    state_w, state_p = opt.init(wrapped), opt.init(pure)
    assert bits(state_w) == bits(state_p)
    grads = jax.tree.map(jnp.ones_like, pure)
    u_p, _ = opt.update(grads, state_p, pure)
    u_w, _ = opt.update(jax.tree.map(jnp.ones_like, wrapped), state_w, wrapped)
    assert bits(u_p) == bits(u_w)
    assert isinstance(u_w["head"]["linear"]["kernel"], nnx.Param)  # the caller's container
    # The plan's masks and labels fit optax code on either container.
    masked = optax.masked(optax.sgd(1.0), plan.trainable_mask)
    for tree in (wrapped, pure):
        masked.init(tree)
    labels = optax.multi_transform({"trainable": tx(), "frozen": optax.set_to_zero()}, plan.labels)
    nnx.Optimizer(model, labels, wrt=nnx.Param).update(model, nnx.grad(loss_fn)(model, *batch()))


def test_user_masks_work_inside_nnx_optimizer():
    model = Net(nnx.Rngs(0))
    plan = freeze.plan(nnx.state(model, nnx.Param), HEAD_ONLY)
    optimizer = nnx.Optimizer(
        model, optax.masked(optax.adam(1e-2), plan.trainable_mask), wrt=nnx.Param
    )
    optimizer.update(model, nnx.grad(loss_fn)(model, *batch()))
    mu = [x for x in jax.tree.leaves(nnx.as_pure(optimizer.opt_state)) if np.ndim(x) > 0]
    assert len(mu) == 2 * len(jax.tree.leaves(nnx.state(model.head, nnx.Param)))


def test_frozen_body_step_costs_fewer_flops_than_the_all_trainable_step():
    def step_flops(rules, view):
        model = Net(nnx.Rngs(0), width=64)
        plan = freeze.plan(model, rules)
        optimizer = nnx.Optimizer(model, plan.optimizer(optax.adam(1e-3)), wrt=plan.nnx_filter)
        graphdef, state = nnx.split((model, optimizer))

        def step(state, x, y):
            model, optimizer = nnx.merge(graphdef, state)
            grads = nnx.grad(loss_fn, argnums=nnx.DiffState(0, plan.nnx_filter))(
                plan.nnx_view(model) if view else model, x, y
            )
            optimizer.update(model, grads)
            return nnx.state((model, optimizer))

        return freeze.cost(step, state, *batch())["flops"]

    full = step_flops([(".*", {})], view=False)
    head_only = step_flops(HEAD_ONLY, view=True)
    assert head_only < 0.5 * full, (head_only, full)


def test_nnx_filter_and_view_select_by_plan_paths():
    model = Net(nnx.Rngs(0))
    plan = freeze.plan(model, HEAD_ONLY)
    assert sorted(freeze.leaf_paths(nnx.state(model, plan.nnx_filter))) == [
        "head/bn/bias",
        "head/bn/scale",
        "head/linear/bias",
        "head/linear/kernel",
    ]
    view = plan.nnx_view(model)
    assert view.body.bn.use_running_average and not view.head.bn.use_running_average
    assert not model.body.bn.use_running_average  # the model itself is unchanged
    assert view.body.linear.kernel is model.body.linear.kernel
