"""The freezing core on a small Linen CNN with BatchNorm, on random pytrees and on nnx.State."""

from __future__ import annotations

import itertools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxtl import freeze

GROUPS = ("stem", "block1", "block2", "head")


class ConvGroup(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x, train):
        x = nn.Conv(self.features, (3, 3), use_bias=False)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        return nn.relu(x)


class Head(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, train):
        return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


class SmallCNN(nn.Module):
    """Each layer group is one top-level module, as in jaxtl.models."""

    def setup(self):
        self.stem = ConvGroup(8)
        self.block1 = ConvGroup(16)
        self.block2 = ConvGroup(16)
        self.head = Head(10)

    def __call__(self, x, train=False):
        for group in (self.stem, self.block1, self.block2, self.head):
            x = group(x, train)
        return x


@pytest.fixture(scope="module")
def cnn():
    model = SmallCNN()
    x = jax.random.normal(jax.random.key(0), (16, 12, 12, 1))
    y = jnp.arange(16) % 10
    variables = model.init(jax.random.key(1), x)
    return model, variables, x, y


def head_only_rules():
    return [("head/.*", {}), (".*", None)]


def make_step(model, plan, tx):
    """The jaxtl pattern: differentiate only the trainable partition; frozen is closed over."""
    opt = plan.optimizer(tx)

    def loss_fn(trainable, frozen, batch_stats, x, y):
        params = plan.merge(trainable, frozen)
        logits, updated = model.apply(
            {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, updated["batch_stats"]

    @jax.jit
    def step(params, batch_stats, opt_state, x, y):
        trainable, frozen = plan.split(params)
        grads, new_stats = jax.grad(loss_fn, has_aux=True)(trainable, frozen, batch_stats, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_stats, opt_state

    return opt, step


def bits(tree):
    return [np.asarray(x).tobytes() for x in jax.tree_util.tree_leaves(tree)]


# ---- optax integration ---------------------------------------------------------------------------


def test_frozen_leaves_bit_identical_after_20_adamw_steps_with_decay_and_clipping(cnn):
    model, variables, x, y = cnn
    params = jax.tree_util.tree_map(jnp.asarray, variables["params"])
    # -0.0 is where "add a zero update" goes wrong: -0.0 + 0.0 == +0.0 changes the bits.
    params["stem"]["Conv_0"]["kernel"] = params["stem"]["Conv_0"]["kernel"].at[0, 0, 0, 0].set(-0.0)
    plan = freeze.plan(params, [("head/.*", {}), ("block2/.*", {}), (".*", None)])
    tx = optax.chain(optax.clip_by_global_norm(0.1), optax.adamw(1e-2, weight_decay=0.5))
    opt, step = make_step(model, plan, tx)
    state = opt.init(params)
    before_frozen = bits(plan.split(params)[1])
    before_trainable = bits(plan.split(params)[0])
    new, stats = params, variables["batch_stats"]
    for _ in range(20):
        new, stats, state = step(new, stats, state, x, y)
    assert bits(plan.split(new)[1]) == before_frozen
    assert all(a != b for a, b in zip(bits(plan.split(new)[0]), before_trainable))


def test_clipping_norm_excludes_frozen_gradients():
    params = {"frozen": jnp.zeros(4), "head": jnp.zeros(1)}
    grads = {"frozen": jnp.full(4, 100.0), "head": jnp.full(1, 3.0)}
    plan = freeze.plan(params, [("head", {}), ("frozen", None)])
    opt = plan.optimizer(optax.chain(optax.clip_by_global_norm(5.0), optax.sgd(1.0)))
    updates, _ = opt.update(grads, opt.init(params), params)
    # Norm of the trainable gradient is 3 < 5: no clipping. With the frozen 200 included it
    # would have been scaled to 3 * 5 / 200.
    assert float(updates["head"][0]) == -3.0
    assert (
        np.signbit(np.asarray(updates["frozen"])).all() and not np.asarray(updates["frozen"]).any()
    )


def test_optimizer_state_holds_no_array_for_frozen_leaves(cnn):
    _, variables, _, _ = cnn
    params = variables["params"]
    plan = freeze.plan(params, head_only_rules())
    state = plan.optimizer(optax.adam(1e-3)).init(params)
    arrays = [x for x in jax.tree_util.tree_leaves(state) if np.ndim(x) > 0]
    head = jax.tree_util.tree_leaves(params["head"])
    assert len(arrays) == 2 * len(head)  # mu and nu for head kernel and bias, nothing else
    assert sum(x.nbytes for x in arrays) == 2 * sum(x.nbytes for x in head)
    full = optax.adam(1e-3).init(params)
    assert freeze.tree_size(state)["bytes"] < freeze.tree_size(full)["bytes"] / 10


def test_lr_multipliers_scale_updates_exactly(cnn):
    _, variables, _, _ = cnn
    params = variables["params"]
    grads = jax.tree_util.tree_map(lambda p: jnp.full(p.shape, 0.5, p.dtype), params)
    rules = [("head/.*", {}), ("block2/.*", {"lr_mult": 0.25}), (".*", None)]
    plan = freeze.plan(params, rules)
    for tx in (optax.sgd(0.1), optax.adam(0.1)):
        opt = plan.optimizer(tx)
        updates, _ = opt.update(grads, opt.init(params), params)
        reference, _ = tx.update(grads, tx.init(params), params)
        np.testing.assert_array_equal(
            updates["head"]["Dense_0"]["kernel"], reference["head"]["Dense_0"]["kernel"]
        )
        np.testing.assert_allclose(
            updates["block2"]["Conv_0"]["kernel"],
            0.25 * reference["block2"]["Conv_0"]["kernel"],
            rtol=1e-6,
        )
        assert not np.asarray(updates["stem"]["Conv_0"]["kernel"]).any()


def test_wd_mult_applies_decoupled_decay_per_rule():
    params = {"a": jnp.ones(2), "b": jnp.ones(2)}
    plan = freeze.plan(params, [("a", {"wd_mult": 0.0}), ("b", {"wd_mult": 2.0})])
    opt = plan.optimizer(optax.sgd(1.0), weight_decay=0.1)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = opt.update(zeros, opt.init(params), params)
    np.testing.assert_allclose(updates["a"], 0.0)
    np.testing.assert_allclose(updates["b"], -0.2)
    with pytest.raises(
        freeze.PlanError, match="sets wd_mult but plan.optimizer got weight_decay=0"
    ):
        plan.optimizer(optax.sgd(1.0))


def test_layerwise_lr_rules_give_decay_by_distance_from_head(cnn):
    _, variables, _, _ = cnn
    rules = freeze.layerwise_lr_rules(GROUPS, 0.5)
    plan = freeze.plan(variables["params"], rules)
    rows = {r["pattern"]: r["setting"] for r in plan.summary()["rules"]}
    assert rows == {
        "'stem/.*'": "train lr_mult=0.125",
        "'block1/.*'": "train lr_mult=0.25",
        "'block2/.*'": "train lr_mult=0.5",
        "'head/.*'": "train",
    }
    with pytest.raises(freeze.PlanError, match=r"decay=1.5 must be in \(0, 1\]"):
        freeze.layerwise_lr_rules(GROUPS, 1.5)


# ---- split / merge / masks -----------------------------------------------------------------------


def test_split_merge_round_trip_is_exact(cnn):
    _, variables, _, _ = cnn
    params = variables["params"]
    plan = freeze.plan(params, [("block1/.*", None), (".*", {})])
    trainable, frozen = plan.split(params)
    assert bits(plan.merge(trainable, frozen)) == bits(params)
    assert jax.tree_util.tree_structure(
        plan.merge(trainable, frozen)
    ) == jax.tree_util.tree_structure(params)
    assert (
        trainable["block1"]["Conv_0"]["kernel"] is None
        and frozen["head"]["Dense_0"]["bias"] is None
    )


def test_batch_stats_mask_follows_module_of_frozen_params(cnn):
    _, variables, _, _ = cnn
    plan = freeze.plan(variables["params"], [("block2/.*", {}), ("head/.*", {}), (".*", None)])
    mask = plan.collection_mask(variables["batch_stats"])
    assert mask["stem"]["BatchNorm_0"] == {"mean": True, "var": True}
    assert mask["block2"]["BatchNorm_0"] == {"mean": False, "var": False}


def test_summary_counts_per_rule_and_module(cnn):
    _, variables, _, _ = cnn
    params = variables["params"]
    plan = freeze.plan(params, head_only_rules())
    summary = plan.summary()
    head_params = sum(x.size for x in jax.tree_util.tree_leaves(params["head"]))
    total = sum(x.size for x in jax.tree_util.tree_leaves(params))
    assert summary["rules"][0]["params"] == head_params == plan.num_trainable
    assert summary["total"] == {
        "leaves": 11,
        "params": total,
        "bytes": 4 * total,
        "frozen_params": total - head_params,
        "trainable_params": head_params,
    }
    assert [m["status"] for m in summary["modules"]] == ["frozen", "frozen", "trainable", "frozen"]
    text = str(plan)
    assert "head" in text and f"trainable {head_params:,} of {total:,}" in text


# ---- validation ----------------------------------------------------------------------------------

BAD_RULES = [
    (
        [("stage5/.*", {}), (".*", None)],
        r"rule 0 \('stage5/\.\*'\) matches no parameter; closest paths: ",
    ),
    ([("head/.*", {})], r"parameter leaves are covered by no rule .*add a final catch-all rule"),
    ([(".*", None)], r"every parameter is frozen; give at least one rule a setting dict"),
    ([("stem/.*", {"lr_mult": 0.0}), (".*", {})], r"sets lr_mult=0.0; use None to freeze"),
    ([("head/(", {}), (".*", None)], r"rule 0: invalid regex 'head/\(': .*e.g. 'stage1/\.\*'"),
    (
        [("head/.*", {"lr": 0.1}), (".*", None)],
        r"unknown setting key 'lr'; valid keys: lr_mult, wd_mult",
    ),
    ([("head/.*", 0.1), (".*", None)], r"use None to freeze or a dict"),
    ([("head/.*", {"wd_mult": -1}), (".*", None)], r"wd_mult must be a finite number >= 0"),
    ([], r"rules must be a non-empty list"),
    (["head/.*"], r"rule 0 is 'head/\.\*'; each rule is a \(pattern, setting\) pair"),
]


@pytest.mark.parametrize("rules,message", BAD_RULES)
def test_bad_rules_raise_one_line_errors(cnn, rules, message):
    _, variables, _, _ = cnn
    with pytest.raises(freeze.PlanError, match=message) as info:
        freeze.plan(variables["params"], rules)
    assert "\n" not in str(info.value)


def test_typo_suggests_closest_paths(cnn):
    _, variables, _, _ = cnn
    with pytest.raises(freeze.PlanError, match=r"closest paths: head/Dense_0/"):
        freeze.plan(variables["params"], [("head/Dense_1/kernel", {}), (".*", None)])


def test_split_rejects_a_tree_of_another_structure(cnn):
    _, variables, _, _ = cnn
    plan = freeze.plan(variables["params"], head_only_rules())
    with pytest.raises(freeze.PlanError, match=r"does not have the structure .*missing"):
        plan.split({"head": variables["params"]["head"]})


# ---- selection -----------------------------------------------------------------------------------


def test_selectors_and_combinators():
    paths = ["stem/Conv_0/kernel", "stage1/BatchNorm_0/scale", "stage10/Conv_0/kernel", "head/bias"]
    sel = (freeze.prefix("stage1") | freeze.glob("*/bias")) & ~freeze.regex(".*BatchNorm.*")
    assert [p for p in paths if sel(p)] == ["head/bias"]
    assert [p for p in paths if freeze.prefix("stage1")(p)] == ["stage1/BatchNorm_0/scale"]
    big = freeze.predicate(lambda path, leaf: np.size(leaf) > 2, "big")
    tree = {"a": np.zeros(3), "b": np.zeros(1)}
    assert freeze.select(tree, big) == {"a": True, "b": False}
    assert str(sel).startswith("((prefix('stage1') | glob('*/bias')) & ~")


def test_first_k_groups_is_monotone_and_validated():
    for k in range(len(GROUPS) + 1):
        sel = freeze.first_k_groups(GROUPS, k)
        assert [g for g in GROUPS if sel(f"{g}/kernel")] == list(GROUPS[:k])
    with pytest.raises(freeze.SelectorError, match=r"k=5 is out of range; choose an int in 0..4"):
        freeze.first_k_groups(GROUPS, 5)


KEYS = st.text(alphabet="abcxyz_0", min_size=1, max_size=4)
LEAVES = st.integers(0, 3).map(lambda n: np.arange(n, dtype=np.float32))
TREES = st.recursive(
    LEAVES, lambda children: st.dictionaries(KEYS, children, min_size=1, max_size=4), max_leaves=12
).filter(lambda t: isinstance(t, dict))


@settings(max_examples=60, deadline=None)
@given(tree=TREES, data=st.data())
def test_property_selection_matches_paths(tree, data):
    paths = freeze.leaf_paths(tree)
    target = data.draw(st.sampled_from(paths))
    top = target.split("/")[0]
    mask = jax.tree_util.tree_leaves(freeze.select(tree, freeze.prefix(top)))
    assert mask == [p == top or p.startswith(top + "/") for p in paths]
    exact = jax.tree_util.tree_leaves(freeze.select(tree, freeze.regex(re.escape(target))))
    assert exact == [p == target for p in paths]


@settings(max_examples=60, deadline=None)
@given(tree=TREES, data=st.data())
def test_property_split_merge_round_trip(tree, data):
    paths = freeze.leaf_paths(tree)
    chosen = data.draw(st.lists(st.sampled_from(paths), min_size=1, unique=True))
    rules = [(re.escape(p), {}) for p in chosen] + [(".*", None)]
    if len(chosen) == len(paths):
        rules = rules[:-1]
    plan = freeze.plan(tree, rules)
    trainable, frozen = plan.split(tree)
    assert bits(plan.merge(trainable, frozen)) == bits(tree)
    flags = jax.tree_util.tree_leaves(plan.frozen_mask)
    assert [not f for f in flags] == jax.tree_util.tree_leaves(plan.trainable_mask)
    assert sorted(p for p, f in zip(paths, flags) if not f) == sorted(chosen)


# ---- nnx -----------------------------------------------------------------------------------------


class NnxNet(nnx.Module):
    def __init__(self, rngs):
        self.body = nnx.Linear(4, 8, rngs=rngs)
        self.norm = nnx.BatchNorm(8, use_running_average=True, rngs=rngs)
        self.head = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.head(nnx.relu(self.norm(self.body(x))))


def test_same_plan_works_on_nnx_state():
    model = NnxNet(nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    assert sorted(freeze.leaf_paths(params)) == [
        "body/bias",
        "body/kernel",
        "head/bias",
        "head/kernel",
        "norm/bias",
        "norm/scale",
    ]
    plan = freeze.plan(params, head_only_rules())
    opt = plan.optimizer(optax.adamw(1e-2, weight_decay=0.1))
    opt_state = opt.init(params)
    x, y = jnp.ones((5, 4)), jnp.arange(5) % 3

    @jax.jit
    def step(params, rest, opt_state):
        def loss_fn(params):
            logits = nnx.merge(graphdef, params, rest)(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    new = params
    for _ in range(3):
        new, opt_state = step(new, rest, opt_state)
    assert bits(plan.split(new)[1]) == bits(plan.split(params)[1])
    assert bits(new["head"]) != bits(params["head"])
    assert freeze.tree_size(opt_state)["params"] == 2 * (8 * 3 + 3) + 2  # mu, nu + two counts


# ---- compute accounting --------------------------------------------------------------------------


def test_frozen_prefix_costs_fewer_flops(cnn):
    model, variables, x, y = cnn
    params = variables["params"]

    def step_flops(rules):
        plan = freeze.plan(params, rules)
        opt, step = make_step(model, plan, optax.adam(1e-3))
        return freeze.cost(step, params, variables["batch_stats"], opt.init(params), x, y)["flops"]

    full = step_flops([(".*", {})])
    by_k = [full] + [
        step_flops([(freeze.first_k_groups(GROUPS, k), None), (".*", {})]) for k in range(1, 4)
    ]
    head_only = by_k[-1]
    assert head_only <= 0.5 * full
    assert all(b <= a for a, b in itertools.pairwise(by_k)), by_k
    forward = freeze.cost(lambda v, x: model.apply(v, x), variables, x)["flops"]
    assert forward < head_only < 1.5 * forward


def test_cost_reports_flops_bytes_and_memory():
    result = freeze.cost(lambda a, b: a @ b, jnp.ones((32, 16)), jnp.ones((16, 8)))
    assert result["flops"] == 2 * 32 * 16 * 8
    assert result["bytes_accessed"] >= 4 * (32 * 16 + 16 * 8 + 32 * 8)
    assert result["argument_bytes"] == 4 * (32 * 16 + 16 * 8)
