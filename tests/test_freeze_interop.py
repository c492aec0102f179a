"""plan.optimizer on optax's partition: bit-identical to the hand-written optimizer it replaced,
interchangeable with hand-written optax recipes, and loud about wrong inputs."""

from __future__ import annotations

import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util
from flax.core import freeze as frozen_dict

from jaxtl import freeze


def bits(tree):
    return [np.asarray(x).tobytes() for x in jax.tree_util.tree_leaves(tree)]


def small_params():
    keys = jax.random.split(jax.random.key(0), 5)
    params = {
        "stem": {"kernel": jax.random.normal(keys[0], (3, 4)), "bias": jnp.zeros(4)},
        "block": {"kernel": jax.random.normal(keys[1], (4, 4)), "bias": jnp.zeros(4)},
        "head": {"kernel": jax.random.normal(keys[2], (4, 2)), "bias": jnp.zeros(2)},
    }
    # A frozen -0.0 weight: where "add a +0.0 update" would change the bits.
    params["stem"]["kernel"] = params["stem"]["kernel"].at[0, 0].set(-0.0)
    return params


def grads_at(params, step):
    key = jax.random.fold_in(jax.random.key(1), step)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten([jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


# ---- the optimizer before optax.partition, frozen here as the bit-for-bit reference -------------


def old_optimizer(plan, tx, weight_decay=0.0):
    """plan.optimizer as of commit 57d6872 (a hand-written split of the trainable partition)."""
    flags = plan.frozen_flags
    setting = lambda i: plan.rules[plan.rule_of_leaf[i]][1]
    lr_mults = [None if f else setting(i)["lr_mult"] for i, f in enumerate(flags)]
    wd_mults = [None if f else setting(i)["wd_mult"] for i, f in enumerate(flags)]
    decay = weight_decay if callable(weight_decay) else (lambda _: weight_decay)
    has_decay = callable(weight_decay) or weight_decay != 0.0

    def partition(leaves):
        return plan.treedef.unflatten([None if f else x for x, f in zip(leaves, flags)])

    def init_fn(params):
        return (tx.init(plan.split(params)[0]), jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params):
        inner_state, count = state
        g_leaves = plan.treedef.flatten_up_to(updates)
        p_leaves = plan.treedef.flatten_up_to(params)
        inner_updates, inner_state = tx.update(
            partition(g_leaves), inner_state, partition(p_leaves)
        )
        u_leaves = plan.treedef.flatten_up_to(inner_updates)
        rate = decay(count)
        out = []
        for i, (u, g, p) in enumerate(zip(u_leaves, g_leaves, p_leaves)):
            if flags[i]:
                like = g if g is not None else p
                out.append(jnp.full(jnp.shape(like), -0.0, jnp.result_type(like)))
                continue
            if lr_mults[i] != 1.0:
                u = u * jnp.asarray(lr_mults[i], u.dtype)
            if has_decay and wd_mults[i]:
                u = u - (rate * wd_mults[i] * p).astype(u.dtype)
            out.append(u)
        return plan.treedef.unflatten(out), (inner_state, optax.safe_increment(count))

    return optax.GradientTransformation(init_fn, update_fn)


RULES = {
    "head_only": [("head/.*", {}), (".*", None)],
    "lr_groups": [("head/.*", {}), ("block/.*", {"lr_mult": 0.3}), (".*", None)],
    "wd_groups": [
        ("head/.*", {"wd_mult": 2.0}),
        ("block/kernel", {"lr_mult": 0.1, "wd_mult": 0.5}),
        ("block/bias", {"wd_mult": 0.0}),
        (".*", None),
    ],
    "all": [(".*", {})],
}
TXS = {
    "sgd": lambda: optax.sgd(0.1, momentum=0.9),
    "adam": lambda: optax.adam(1e-2),
    "adamw": lambda: optax.adamw(1e-2, weight_decay=0.3),
    "clip_adamw": lambda: optax.chain(
        optax.clip_by_global_norm(0.5), optax.adamw(1e-2, weight_decay=0.3)
    ),
}
DECAYS = {"none": 0.0, "const": 1e-2, "schedule": optax.linear_schedule(1e-2, 1e-3, 5)}


@pytest.mark.parametrize("rules", list(RULES))
@pytest.mark.parametrize("tx", list(TXS))
def test_updates_and_params_bit_identical_to_the_old_optimizer(rules, tx):
    params = small_params()
    plan = freeze.plan(params, RULES[rules])
    decay = DECAYS["schedule" if rules == "wd_groups" else "const" if tx == "sgd" else "none"]
    new_opt, old_opt = plan.optimizer(TXS[tx](), decay), old_optimizer(plan, TXS[tx](), decay)
    new_step = jax.jit(lambda g, s, p: new_opt.update(g, s, p))
    old_step = jax.jit(lambda g, s, p: old_opt.update(g, s, p))
    new_p = old_p = params
    new_s, old_s = new_opt.init(params), old_opt.init(params)
    for step in range(5):
        grads = grads_at(params, step)
        # Every other step the way jaxtl's train step passes them: zeros where frozen.
        if step % 2:
            trainable, frozen = plan.split(grads)
            grads = plan.merge(trainable, jax.tree.map(jnp.zeros_like, frozen))
        new_u, new_s = new_step(grads, new_s, new_p)
        old_u, old_s = old_step(grads, old_s, old_p)
        assert bits(new_u) == bits(old_u), step
        new_p, old_p = optax.apply_updates(new_p, new_u), optax.apply_updates(old_p, old_u)
        assert bits(new_p) == bits(old_p), step
    assert bits(plan.split(new_p)[1]) == bits(plan.split(params)[1])
    frozen_updates = jax.tree.leaves(plan.split(new_u)[1])
    assert all(np.signbit(u).all() and not u.any() for u in map(np.asarray, frozen_updates))


def test_partition_gradients_give_the_full_gradients_updates():
    params = small_params()
    plan = freeze.plan(params, RULES["lr_groups"])
    opt = plan.optimizer(TXS["clip_adamw"]())
    grads = grads_at(params, 0)
    full, _ = opt.update(grads, opt.init(params), params)
    part, _ = opt.update(plan.split(grads)[0], opt.init(params), params)
    assert bits(part) == bits(full)


def test_optimizer_is_built_on_optax_partition_with_no_state_for_frozen_leaves():
    params = small_params()
    plan = freeze.plan(params, RULES["head_only"])
    state = plan.optimizer(optax.adam(1e-3)).init(params)
    assert isinstance(state.inner, optax.PartitionState)
    assert set(state.inner.inner_states) == {"frozen", "trainable"}
    arrays = [x for x in jax.tree.leaves(state) if np.ndim(x) > 0]
    head = jax.tree.leaves(params["head"])
    assert len(arrays) == 2 * len(head)
    assert sum(x.nbytes for x in arrays) == 2 * sum(x.nbytes for x in head)


# ---- hand-written optax recipes ------------------------------------------------------------------


def test_multi_transform_on_plan_labels_matches_plan_optimizer_bit_for_bit():
    params = small_params()
    plan = freeze.plan(params, RULES["lr_groups"])
    assert plan.label_settings == {
        "trainable": {"lr_mult": 1.0, "wd_mult": 1.0},
        "trainable_1": {"lr_mult": 0.3, "wd_mult": 1.0},
        "frozen": None,
    }
    assert plan.labels["block"] == {"bias": "trainable_1", "kernel": "trainable_1"}
    transforms = {
        label: optax.set_to_zero()
        if setting is None
        else optax.chain(optax.adam(1e-2), optax.scale(setting["lr_mult"]))
        for label, setting in plan.label_settings.items()
    }
    by_hand = optax.multi_transform(transforms, plan.labels)
    ours = plan.optimizer(optax.adam(1e-2))
    s_hand, s_ours = by_hand.init(params), ours.init(params)
    for step in range(3):
        grads = grads_at(params, step)
        u_hand, s_hand = by_hand.update(grads, s_hand, params)
        u_ours, s_ours = ours.update(grads, s_ours, params)
        assert bits(plan.split(u_hand)[0]) == bits(plan.split(u_ours)[0])


def test_masked_with_trainable_mask_matches_plan_optimizer_bit_for_bit():
    params = small_params()
    plan = freeze.plan(params, RULES["head_only"])
    tx = lambda: optax.chain(optax.clip_by_global_norm(0.5), optax.adamw(1e-2, weight_decay=0.3))
    by_hand, ours = optax.masked(tx(), plan.trainable_mask), plan.optimizer(tx())
    s_hand, s_ours = by_hand.init(params), ours.init(params)
    for step in range(3):
        grads = grads_at(params, step)
        u_hand, s_hand = by_hand.update(grads, s_hand, params)
        u_ours, s_ours = ours.update(grads, s_ours, params)
        assert bits(plan.split(u_hand)[0]) == bits(plan.split(u_ours)[0])
        # masked passes frozen gradients through unchanged; plan.apply_updates ignores them.
        assert bits(plan.apply_updates(params, u_hand)) == bits(plan.apply_updates(params, u_ours))


def test_flax_guide_path_aware_map_labels_are_one_plan_line():
    params = frozen_dict({"backbone": small_params(), "classifier": {"kernel": jnp.ones((4, 2))}})
    # The Flax "transfer learning" guide's recipe ...
    guide = traverse_util.path_aware_map(
        lambda path, v: "frozen" if "backbone" in path else "trainable", params
    )
    # ... and the same labels from a plan.
    labels = freeze.plan(params, [("backbone/.*", None), (".*", {})]).labels
    assert labels == guide
    tx = optax.multi_transform(
        {"trainable": optax.adam(1e-3), "frozen": optax.set_to_zero()}, labels
    )
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert not any(np.asarray(u).any() for u in jax.tree.leaves(updates["backbone"]))


def test_labels_and_masks_of_a_plan_on_a_frozendict_fit_its_trees():
    params = frozen_dict(small_params())
    plan = freeze.plan(params, RULES["head_only"])
    opt = optax.masked(optax.sgd(1.0), plan.trainable_mask)
    updates, _ = opt.update(params, opt.init(params), params)
    assert bits(updates["head"]) == bits(jax.tree.map(lambda x: -x, params["head"]))


# ---- carry-over of optimizer state between plans with different labels ---------------------------


def test_state_carries_from_head_only_to_lr_grouped_plans():
    params = small_params()
    tx = TXS["clip_adamw"]
    lp = freeze.plan(params, RULES["head_only"])
    ft = freeze.plan(params, [("head/.*", {}), ("block/.*", {"lr_mult": 0.1}), (".*", {})])
    assert set(ft.label_settings) == {"trainable", "trainable_1"}
    lp_opt = lp.optimizer(tx())
    state = lp_opt.init(params)
    for step in range(2):
        _, state = lp_opt.update(grads_at(params, step), state, params)
    fresh = ft.optimizer(tx()).init(params)
    carried_state, carried = freeze.carry_optimizer_state(state, lp, fresh, ft)
    assert carried == ("head/bias", "head/kernel")
    old_adam = state.inner.inner_states["trainable"].inner_state[1][0]
    new_adam = carried_state.inner.inner_states["trainable"].inner_state[1][0]
    assert bits(new_adam.mu["head"]) == bits(old_adam.mu["head"])
    assert not any(np.asarray(x).any() for x in jax.tree.leaves(new_adam.mu["stem"]))
    assert int(new_adam.count) == 0
    _, carried_back = freeze.carry_optimizer_state(carried_state, ft, lp_opt.init(params), lp)
    assert carried_back == ("head/bias", "head/kernel")


# ---- Linen: frozen BatchNorm statistics in your own step ----------------------------------------


class BNNet(nn.Module):
    @nn.compact
    def __call__(self, x, train):
        for name in ("body", "head"):
            x = nn.Dense(4, name=f"{name}_dense")(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.5, name=f"{name}_bn")(x)
        return x


def test_restore_frozen_stats_keeps_frozen_batchnorm_bit_identical_in_a_linen_step():
    model = BNNet()
    x = jax.random.normal(jax.random.key(0), (8, 3))
    variables = model.init(jax.random.key(1), x, train=False)
    plan = freeze.plan(variables["params"], [("head_.*", {}), (".*", None)])
    opt = plan.optimizer(optax.adam(1e-2))

    @jax.jit
    def step(params, stats, opt_state):
        def loss_fn(params):
            out, upd = model.apply(
                {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
            )
            return jnp.mean(out**2), upd["batch_stats"]

        grads, new_stats = jax.grad(loss_fn, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (
            plan.apply_updates(params, updates),
            plan.restore_frozen_stats(stats, new_stats),
            opt_state,
        )

    params, stats, opt_state = (
        variables["params"],
        variables["batch_stats"],
        opt.init(variables["params"]),
    )
    for _ in range(3):
        params, stats, opt_state = step(params, stats, opt_state)
    assert bits(stats["body_bn"]) == bits(variables["batch_stats"]["body_bn"])
    assert bits(stats["head_bn"]) != bits(variables["batch_stats"]["head_bn"])


# ---- validation: shadowed rules, misspelt groups, shapes that do not fit -------------------------


def one_line(info):
    assert "\n" not in str(info.value) and len(str(info.value)) < 400, str(info.value)
    return str(info.value)


def test_a_rule_shadowed_by_an_earlier_rule_is_rejected():
    params = small_params()
    with pytest.raises(freeze.PlanError) as info:
        freeze.plan(params, [(".*/kernel", None), ("head/kernel", {}), (".*", {})])
    assert one_line(info).startswith(
        "rule 1 ('head/kernel') is shadowed: every parameter it matches was already decided by an"
        " earlier rule (e.g. 'head/kernel' by rule 0 ('.*/kernel'))"
    )
    with pytest.raises(freeze.PlanError, match=r"rule 2 \('\.\*'\) is shadowed"):
        freeze.plan(params, [("head/.*", {}), ("(stem|block)/.*", None), (".*", None)])


def test_first_k_groups_with_a_misspelt_group_is_rejected_with_a_suggestion():
    params = small_params()
    rules = [(freeze.first_k_groups(["stm", "block", "head"], 2), None), (".*", {})]
    with pytest.raises(freeze.PlanError) as info:
        freeze.plan(params, rules)
    assert "layer group 'stm' names nothing in the parameter tree (did you mean 'stem'?)" in (
        one_line(info)
    )


def test_leaf_groups_work_in_first_k_groups_and_layerwise_lr_rules():
    params = {
        "embed": jnp.ones(3),
        "body": {"kernel": jnp.ones(2)},
        "head": {"kernel": jnp.ones(1)},
    }
    groups = ["embed", "body", "head"]
    plan = freeze.plan(params, [(freeze.first_k_groups(groups, 1), None), (".*", {})])
    assert plan.is_frozen("embed") and not plan.is_frozen("body/kernel")
    rules = freeze.layerwise_lr_rules(groups, 0.5, params=params)
    assert rules[0] == ("embed", {"lr_mult": 0.25})
    plan = freeze.plan(params, rules)
    assert plan.label_settings["trainable_1"] == {"lr_mult": 0.25, "wd_mult": 1.0}
    with pytest.raises(freeze.PlanError, match=r"layer group 'bdy' .*\(did you mean 'body'\?\)"):
        freeze.layerwise_lr_rules(["embed", "bdy", "head"], 0.5, params=params)


def test_gradients_of_the_wrong_structure_name_the_first_differing_path():
    params = small_params()
    plan = freeze.plan(params, RULES["head_only"])
    opt = plan.optimizer(optax.adam(1e-3))
    state = opt.init(params)
    grads = grads_at(params, 0)
    missing = {k: v for k, v in grads.items() if k != "block"}
    with pytest.raises(freeze.PlanError) as info:
        opt.update(missing, state, params)
    assert "first difference: missing 'block/bias'" in one_line(info)
    extra = {**grads, "extra": {"w": jnp.ones(2)}}
    with pytest.raises(freeze.PlanError, match=r"first difference: unexpected 'extra/w'"):
        jax.jit(opt.update)(extra, state, params)
    with pytest.raises(freeze.PlanError) as info:
        opt.update(frozen_dict(grads), state, params)
    assert "same paths, but a FrozenDict where the plan has a dict" in one_line(info)
    transposed = {**grads, "head": {**grads["head"], "kernel": grads["head"]["kernel"].T}}
    with pytest.raises(freeze.PlanError) as info:
        opt.update(transposed, state, params)
    assert "the gradient at 'head/kernel' has shape (2, 4) but its param has (4, 2)" in one_line(
        info
    )
    with pytest.raises(freeze.PlanError, match=r"update at 'head/kernel' has shape \(2, 4\)"):
        plan.apply_updates(params, transposed)
    with pytest.raises(freeze.PlanError, match=r"missing 'block/bias'"):
        plan.apply_updates(params, missing)
    with pytest.raises(freeze.PlanError, match=r"missing 'block/bias'"):
        plan.split(missing)


def test_the_freezing_core_imports_no_flax():
    code = (
        "import sys, jax.numpy as jnp, optax; from jaxtl import freeze;"
        "p = freeze.plan({'a': jnp.ones(2), 'b': jnp.ones(1)}, [('a', {}), ('.*', None)]);"
        "p.optimizer(optax.adam(1.0)).init({'a': jnp.ones(2), 'b': jnp.ones(1)});"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'flax'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_frozen_batchnorm_in_a_trained_group_trains_on_its_running_averages():
    # A user's model that decides use_running_average at the call (as many Flax models do),
    # with only its BatchNorm frozen inside a group that trains: the step normalises with the
    # running averages (its loss equals the inference loss) and keeps them bit-identical.
    from jaxtl.train import create_train_state, make_train_step

    class Net(nn.Module):
        layer_groups = ("body", "head")

        @nn.compact
        def __call__(self, x, train=False, start=0, inference_groups=(), stop=None):
            h = nn.BatchNorm(name="bn")(nn.Dense(4, name="body")(x), use_running_average=not train)
            return nn.Dense(3, name="head")(h)

    net = Net()
    x = jnp.arange(8.0).reshape(4, 2)
    y = jnp.array([0, 1, 2, 0])
    variables = net.init(jax.random.key(0), x)
    plan = freeze.plan(variables["params"], [("bn/.*", None), (".*", {})])
    state = create_train_state(variables, plan, optax.sgd(0.1))
    new, metrics = make_train_step(net, plan, optax.sgd(0.1))(state, x, y, jax.random.key(0))
    want = float(optax.softmax_cross_entropy_with_integer_labels(net.apply(variables, x), y).mean())
    assert abs(float(metrics["loss"]) - want) <= 1e-6 * abs(want)
    for a, b in zip(jax.tree.leaves(new.batch_stats), jax.tree.leaves(variables["batch_stats"])):
        np.testing.assert_array_equal(a, b)
