"""jaxtl.fine_tune on models a user wrote (Linen and NNX, BatchNorm and dropout in every body
group): frozen parameters and BatchNorm statistics bit-identical, trained ones moved, every
catalogue strategy through the engine, measured FLOPs, and the adapters' inference mode."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax import nnx
from user_models import (
    GROUPS,
    accuracy,
    bits,
    linen_net,
    load_nnx,
    nnx_net,
    nnx_variables,
    toy_task,
)

import jaxtl
import jaxtl.models
from jaxtl import FineTuneConfig, adapters, freeze
from jaxtl.train import STRATEGIES, adabn

TRAIN = toy_task(96)
EVAL = toy_task(48, seed=1)
CONFIG = FineTuneConfig(steps=40, lr=1e-2, batch_size=32, log_every=20)


def linen_run(strategy: str, config: FineTuneConfig = CONFIG, **options):
    net, variables = linen_net()
    result = jaxtl.fine_tune(net, variables, TRAIN, strategy, eval=EVAL, config=config, **options)
    return variables, result


def nnx_run(strategy: str, **options):
    model = nnx_net()
    before = nnx_variables(model)
    result = jaxtl.fine_tune(model, None, TRAIN, strategy, groups=GROUPS, config=CONFIG, **options)
    assert result.model is model and result.variables is None  # trained in place
    return before, nnx_variables(model), result


STRATEGY_RUNS = {"linear_probe": {}, "freeze_first_k": {"k": 1}, "full_ft": {}}


@pytest.fixture(scope="module")
def runs() -> dict:
    """``(before, after, result)`` per (framework, strategy) the tests below share."""
    out = {}
    for strategy, options in STRATEGY_RUNS.items():
        before, result = linen_run(strategy, **options)
        out["linen", strategy] = (before, result.variables, result)
        out["nnx", strategy] = nnx_run(strategy, **options)
    return out


FRAMEWORKS = ["linen", "nnx"]


def group(variables: dict, name: str) -> dict:
    """One layer group's params and BatchNorm statistics."""
    return {c: variables[c][name] for c in ("params", "batch_stats") if name in variables[c]}


def moved_leaves(before, after) -> list[bool]:
    return [a != b for a, b in zip(bits(before), bits(after))]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_linear_probe_keeps_every_non_head_parameter_and_statistic_bit_identical(runs, framework):
    before, after, result = runs[framework, "linear_probe"]
    for name in ("body", "mid"):
        assert bits(group(after, name)) == bits(group(before, name)), name
        assert group(before, name)["batch_stats"]  # the statistics were there to keep
    assert all(moved_leaves(group(before, "head"), group(after, "head")))
    head_size = sum(np.size(leaf) for leaf in jax.tree.leaves(before["params"]["head"]))
    assert result.metrics["trainable_params"] == {"lp": head_size}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_freeze_first_k_keeps_group_0_and_moves_group_1(runs, framework):
    before, after, _ = runs[framework, "freeze_first_k"]
    assert bits(group(after, "body")) == bits(group(before, "body"))
    # Every parameter of group 1 and both of its BatchNorm statistics moved.
    assert all(moved_leaves(group(before, "mid"), group(after, "mid")))


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_full_ft_raises_train_accuracy(runs, framework):
    before, after, _ = runs[framework, "full_ft"]
    x, y = TRAIN
    if framework == "linen":
        net, _ = linen_net()
        predict = lambda variables: net.apply(variables, x)
    else:
        model = nnx_net()
        model.eval()
        predict = lambda variables: load_nnx(model, variables)(x)

    start, end = accuracy(predict(before), y), accuracy(predict(after), y)
    assert start < 0.6 and end > 0.9, (start, end)


def test_metrics_report_history_flops_parameters_and_eval(runs):
    before, after, result = runs["linen", "freeze_first_k"]
    metrics = result.metrics
    records = [(r["phase"], r["step"]) for r in metrics["history"]]
    assert records == [("freeze1", 20), ("freeze1", 40)]
    assert all(np.isfinite(r["loss"]) and 0 <= r["acc"] <= 1 for r in metrics["history"])
    size = lambda tree: sum(np.size(leaf) for leaf in jax.tree.leaves(tree))
    assert metrics["total_params"] == size(before["params"])
    body = size(before["params"]["body"])
    assert metrics["trainable_params"] == {"freeze1": size(before["params"]) - body}
    net, _ = linen_net()
    x, y = EVAL
    assert metrics["eval_acc"] == accuracy(net.apply(after, x), y)
    # XLA's count of the step as trained: fewer FLOPs the more is frozen.
    flops = {s: runs["linen", s][2].metrics["flops_per_step"] for s in STRATEGY_RUNS}
    assert 0 < flops["linear_probe"]["lp"] < flops["freeze_first_k"]["freeze1"]
    assert flops["freeze_first_k"]["freeze1"] < flops["full_ft"]["ft"]


def _adapted_nodes(tree):
    if isinstance(tree, dict):
        if "lora_a" in tree:
            yield tree
        for value in tree.values():
            yield from _adapted_nodes(value)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_catalogue_strategy_trains_a_user_linen_model(strategy):
    config = FineTuneConfig(steps=12, lr=1e-2, batch_size=16, log_every=6)
    before, result = linen_run(strategy, config)
    phases = list(result.run.plans.values())
    paths = freeze.leaf_paths(before["params"])
    frozen_throughout = [all(p.is_frozen(path) for p in phases) for path in paths]
    trained = result.variables
    if result.run.job.strategy.lora is not None:
        # result.variables has the adapters merged into the kernels; the run's own variables
        # hold them beside the frozen kernels.
        trained = jax.tree.map(lambda a: a, result.run.variables)
        for node in _adapted_nodes(trained["params"]):
            del node["lora_a"], node["lora_b"]
    moved = moved_leaves(before["params"], trained["params"])
    assert not any(m and f for m, f in zip(moved, frozen_throughout)), strategy
    assert all(moved_leaves(before["params"]["head"], result.variables["params"]["head"]))
    # BatchNorm statistics of a group frozen whole in every phase are kept too (a group where
    # BitFit, norm-only or LoRA trains a few leaves runs in train mode).
    for name in GROUPS[:-1]:
        mine = [path for path in phases[0].paths if path.startswith(name + "/")]
        if all(p.is_frozen(path) for p in phases for path in mine):
            assert bits(result.variables["batch_stats"][name]) == bits(before["batch_stats"][name])
    metrics = result.metrics
    phase_names = set(result.run.plans)
    assert set(metrics["flops_per_step"]) == set(metrics["trainable_params"]) == phase_names
    assert all(f > 0 for f in metrics["flops_per_step"].values())
    assert metrics["history"][-1]["step"] == 12


def test_the_seed_keys_data_order_and_dropout():
    same = [linen_run("full_ft")[1].variables for _ in range(2)]
    other = linen_run("full_ft", FineTuneConfig(steps=40, lr=1e-2, log_every=20, seed=1))[1]
    assert bits(same[0]) == bits(same[1])
    assert bits(same[0]) != bits(other.variables)


def test_an_nnx_model_keeps_its_mode_and_rng_streams():
    model = nnx_net()
    model.eval()
    rng_state = bits(nnx.state(model, nnx.RngState))
    jaxtl.fine_tune(model, None, TRAIN, "full_ft", groups=GROUPS, config=CONFIG)
    assert model.body.bn.use_running_average and model.body.dropout.deterministic
    assert bits(nnx.state(model, nnx.RngState)) == rng_state


def test_linen_adapter_runs_inference_groups_with_train_false():
    net, variables = linen_net()
    adapted, start = adapters.grouped_model(net, variables)
    x = TRAIN[0][:8]
    rngs = {"dropout": jax.random.key(0)}
    apply = lambda groups: adapted.apply(
        start, x, train=True, inference_groups=groups, rngs=rngs, mutable=["batch_stats"]
    )
    (_, with_body), (_, none) = apply((0,)), apply(())
    kept = bits(start["batch_stats"]["body"])
    assert bits(with_body["batch_stats"]["body"]) == kept
    assert bits(none["batch_stats"]["body"]) != kept  # the negative control: train mode moves them
    assert bits(with_body["batch_stats"]["mid"]) != bits(start["batch_stats"]["mid"])  # mid trains


def test_nnx_adapter_draws_new_dropout_masks_per_key_and_none_in_eval():
    model = nnx_net()
    adapted, start = adapters.grouped_model(model, None, GROUPS)
    x = TRAIN[0][:8]
    out = lambda key, train=True: np.asarray(
        adapted.apply(start, x, train=train, rngs={"dropout": jax.random.key(key)})
    )
    assert (out(0) == out(0)).all() and not (out(0) == out(1)).all()
    model.eval()
    assert np.allclose(out(0, train=False), model(x), rtol=1e-6, atol=1e-6)


def test_a_model_that_follows_the_protocol_goes_through_as_it_is():
    model = jaxtl.models.create("mlp", 3, widths=(8,), norm="batchnorm")
    variables = jaxtl.models.init_variables(model, 0, TRAIN[0][:1])
    grouped, _ = adapters.grouped_model(model, variables)
    assert grouped is model
    result = jaxtl.fine_tune(model, variables, TRAIN, "linear_probe", config=CONFIG)
    assert model.apply(result.variables, TRAIN[0]).shape == (96, 3)


class FlatNet(nn.Module):
    """A BatchNorm as a group of its own: its ``__call__`` takes no ``train``."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Dense(8, name="body")(x)
        x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
        return nn.Dense(3, name="head")(x)


def test_a_group_without_a_train_flag_still_keeps_its_frozen_statistics():
    net = FlatNet()
    variables = net.init(jax.random.key(0), TRAIN[0][:2])
    groups = ["body", "bn", "head"]
    result = jaxtl.fine_tune(net, variables, TRAIN, "linear_probe", groups, config=CONFIG)
    # The frozen BatchNorm normalised with batch statistics (it cannot be told otherwise) and
    # the engine's plan restored its running statistics after every step.
    assert bits(result.variables["batch_stats"]) == bits(variables["batch_stats"])
    assert bits(result.variables["params"]["bn"]) == bits(variables["params"]["bn"])
    assert all(moved_leaves(variables["params"]["head"], result.variables["params"]["head"]))


def test_bn_policies_train_and_adabn_move_frozen_statistics_never_frozen_parameters():
    net, variables = linen_net()
    x, _ = TRAIN
    config = lambda policy: FineTuneConfig(steps=40, lr=1e-2, log_every=20, bn_policy=policy)
    results = {
        policy: jaxtl.fine_tune(net, variables, TRAIN, "linear_probe", config=config(policy))
        for policy in ("train", "adabn")
    }
    results = {policy: result.variables for policy, result in results.items()}
    for after in results.values():
        assert bits(after["params"]["body"]) == bits(variables["params"]["body"])
        assert bits(after["batch_stats"]["body"]) != bits(variables["batch_stats"]["body"])
    # AdaBN: the statistics re-estimated on the training inputs once, then kept.
    grouped, _ = adapters.grouped_model(net, variables)
    expected = adabn(grouped, variables, x, 32)["batch_stats"]
    assert bits(results["adabn"]["batch_stats"]) == bits(expected)
