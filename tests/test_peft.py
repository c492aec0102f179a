"""Freezing's parameter-efficient neighbours: BitFit, norm-only and LoRA as freeze plans.

LoRA starts exactly at A's function and merges into the kernels; every strategy keeps its
frozen leaves bit-identical and holds optimizer state for what trains only; a model without
the leaves a strategy trains fails in one line; NNX LoRA layers train only their adapters.
"""

from __future__ import annotations

import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxtl
from jaxtl import cli, freeze, models, runner
from jaxtl.runner.experiment import load_experiment
from jaxtl.train import get_strategy

FAMILIES = {
    "mlp": ({"widths": (8, 6), "norm": "batchnorm"}, (4, 4, 1)),
    "cnn": ({"widths": (4, 8)}, (8, 8, 3)),
    "resnet18": ({"base_width": 4}, (8, 8, 3)),
    "vit": ({"depth": 1, "dim": 16, "num_heads": 2, "patch_size": 4}, (8, 8, 3)),
}
PEFT = ("bitfit", "norm_only", "lora")


def bits(tree):
    return [np.asarray(x).tobytes() for x in jax.tree.leaves(tree)]


@functools.cache
def family(name: str):
    """A jaxtl model, its LoRA twin loaded with the model's weights, and a batch."""
    options, shape = FAMILIES[name]
    model = models.create(name, 3, **options)
    x = jax.random.normal(jax.random.key(1), (4, *shape))
    base = models.init_variables(model, 0, x[:1])
    adapted = models.with_lora(model, rank=2, alpha=4.0)
    start = models.load_base(models.init_variables(adapted, 1, x[:1]), base)
    return model, adapted, base, start, x


@pytest.mark.parametrize("name", list(FAMILIES))
def test_lora_starts_bit_for_bit_at_the_source_function(name):
    model, adapted, base, start, x = family(name)
    assert any("lora_a" in p for p in freeze.leaf_paths(start["params"]))
    np.testing.assert_array_equal(adapted.apply(start, x), model.apply(base, x))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_merged_and_unmerged_lora_logits_agree(name):
    model, adapted, _, start, x = family(name)
    # Nonzero adapters, as after training.
    keys = iter(jax.random.split(jax.random.key(2), 100))
    moved = jax.tree_util.tree_map_with_path(
        lambda p, v: (
            v + 0.3 * jax.random.normal(next(keys), v.shape)
            if "lora_b" in jax.tree_util.keystr(p)
            else v
        ),
        start,
    )
    unmerged = np.asarray(adapted.apply(moved, x))
    merged = np.asarray(model.apply(models.merge_lora(moved, 4.0), x))
    scale = np.abs(unmerged).max()
    assert np.abs(unmerged - np.asarray(adapted.apply(start, x))).max() > 1e-3 * scale
    assert np.abs(unmerged - merged).max() <= 1e-6 * scale
    # A wrong alpha is caught: the check can fail.
    wrong = np.asarray(model.apply(models.merge_lora(moved, 8.0), x))
    assert np.abs(unmerged - wrong).max() > 1e-6 * scale


def _train(strategy: str, steps: int = 6):
    """A jaxtl MLP (BatchNorm, so offsets and scales exist) trained with ``strategy``."""
    model, adapted, base, start, x = family("mlp")
    chosen = get_strategy(strategy)
    net, variables = (adapted, start) if chosen.lora else (model, base)
    y = jnp.arange(len(x)) % 3
    spec = jaxtl.train.TrainSpec(steps=steps, batch_size=4, steps_per_call=steps)
    run = jaxtl.train.train(net, spec, jaxtl.train.Job(variables, chosen, x, y, seed=0, lr=1e-2))
    return variables, run


@pytest.mark.parametrize("strategy", PEFT)
def test_frozen_leaves_stay_bit_identical_and_trained_ones_move(strategy):
    before, run = _train(strategy)
    plan = next(iter(run.plans.values()))
    paths = freeze.leaf_paths(before["params"])
    old, new = bits(before["params"]), bits(run.variables["params"])
    frozen = [o == n for p, o, n in zip(paths, old, new) if plan.is_frozen(p)]
    trained = [o != n for p, o, n in zip(paths, old, new) if not plan.is_frozen(p)]
    assert frozen and all(frozen), strategy
    assert trained and all(trained), strategy
    kinds = {p.rsplit("/", 1)[-1] for p in paths if not plan.is_frozen(p) and "head" not in p}
    assert (
        kinds
        == {"bitfit": {"bias"}, "norm_only": {"scale", "bias"}, "lora": {"lora_a", "lora_b"}}[
            strategy
        ]
    )


def test_lora_trains_on_the_running_averages_it_is_evaluated_with():
    # LoRA freezes the BatchNorms inside groups that train. They normalise with their running
    # averages in training, as at evaluation, and keep them: the train-mode batch loss at the
    # start equals the inference-mode loss. With batch statistics instead, a LoRA CNN reached
    # 84% train but 35% test accuracy.
    _, adapted, _, start, x = family("cnn")
    y = jnp.arange(len(x)) % 3
    plan = freeze.plan(
        start["params"],
        get_strategy("lora").phases(adapted.layer_groups)[0].rules(adapted.layer_groups),
    )
    assert not jaxtl.train.frozen_groups(plan, adapted.layer_groups)  # every group trains
    step = jaxtl.train.make_train_step(adapted, plan, optax.sgd(0.1))
    state = jaxtl.train.create_train_state(start, plan, optax.sgd(0.1))
    new_state, metrics = step(state, x, y, jax.random.key(0))
    logits = adapted.apply(start, x)  # inference mode
    want = float(optax.softmax_cross_entropy_with_integer_labels(logits, y).mean())
    assert abs(float(metrics["loss"]) - want) <= 1e-5 * abs(want)
    assert bits(new_state.batch_stats) == bits(start["batch_stats"])
    # The check can fail: under bn_policy="train" the same step uses batch statistics.
    train_step = jaxtl.train.make_train_step(adapted, plan, optax.sgd(0.1), bn_policy="train")
    _, batch = train_step(
        jaxtl.train.create_train_state(start, plan, optax.sgd(0.1)), x, y, jax.random.key(0)
    )
    assert abs(float(batch["loss"]) - want) > 1e-3 * abs(want)


@pytest.mark.parametrize("strategy", PEFT)
def test_adam_state_is_twice_the_trainable_bytes(strategy):
    _, adapted, base, start, _ = family("mlp")
    params = (start if strategy == "lora" else base)["params"]
    layer_groups = adapted.layer_groups
    plan = freeze.plan(params, get_strategy(strategy).phases(layer_groups)[0].rules(layer_groups))
    state = plan.optimizer(optax.adam(1e-3)).init(params)
    floats = sum(x.nbytes for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating))
    trainable = sum(x.nbytes for x in jax.tree.leaves(plan.split(params)[0]))
    assert trainable < sum(x.nbytes for x in jax.tree.leaves(params)) / 2
    assert floats == 2 * trainable


class NoBiases(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(8, use_bias=False, name="body")(x.reshape(len(x), -1))
        return nn.Dense(3, name="head")(nn.relu(x))


@pytest.mark.parametrize(
    ("strategy", "words"), [("bitfit", "biases outside the head"), ("norm_only", "norm")]
)
def test_a_model_without_the_leaves_fails_in_one_line(strategy, words):
    net = NoBiases()
    x = np.zeros((6, 4), np.float32)
    variables = net.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=f"{strategy}: .*{words}") as err:
        jaxtl.fine_tune(net, variables, (x, np.arange(6) % 3), strategy, groups=["body", "head"])
    assert "\n" not in str(err.value) and "matches no parameter" in str(err.value)


def test_lora_through_fine_tune_returns_variables_of_the_model_passed_in():
    model, _, base, _, x = family("mlp")
    y = np.arange(len(x)) % 3
    config = jaxtl.FineTuneConfig(steps=4, lr=1e-2, batch_size=4, log_every=4)
    result = jaxtl.fine_tune(model, base, (np.asarray(x), y), "lora", config=config, rank=2)
    assert jax.tree.structure(result.variables) == jax.tree.structure(base)
    trained = result.run.variables
    assert any("lora_a" in p for p in freeze.leaf_paths(trained["params"]))
    assert result.metrics["trainable_params"]["lora"] < result.metrics["total_params"] / 2


class LoRANet(nnx.Module):
    def __init__(self, rngs):
        self.body = nnx.LoRALinear(8, 16, lora_rank=2, rngs=rngs)
        self.head = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        return self.head(nnx.relu(self.body(x)))


def test_nnx_lora_linear_trains_only_its_adapters():
    model = LoRANet(nnx.Rngs(0))
    groups = ("body", "head")
    plan = freeze.plan(model, get_strategy("lora").phases(groups)[0].rules(groups))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=plan.nnx_filter)
    before = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    x, y = jax.random.normal(jax.random.key(0), (16, 8)), jnp.arange(16) % 3
    loss = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
    for _ in range(3):
        grads = nnx.grad(loss, argnums=nnx.DiffState(0, plan.nnx_filter))(model)
        optimizer.update(model, grads)
    after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    body_old, body_new = before["body"], after["body"]
    assert bits([body_old["kernel"], body_old["bias"]]) == bits(
        [body_new["kernel"], body_new["bias"]]
    )
    assert bits(body_old["lora"]) != bits(body_new["lora"])
    assert np.abs(np.asarray(body_new["lora"]["lora_b"])).max() > 0
    assert sorted(p for p in plan.paths if not plan.is_frozen(p)) == [
        "body/lora/lora_a",
        "body/lora/lora_b",
        "head/bias",
        "head/kernel",
    ]


def test_jaxtl_list_strategies_shows_them(capsys):
    assert cli.main(["list", "strategies"]) == 0
    listed = capsys.readouterr().out.split(":", 1)[1].replace(",", " ").split()
    assert set(PEFT) <= set(listed)


def test_a_tiny_peft_run_reports_them_beside_full_ft_and_the_frozen_ones(tmp_path):
    config = load_experiment(
        "peft",
        [
            "n_per_class=[5]",
            "seeds=[0]",
            "protocol.name=fixed",
            "train_a.steps=20",
            "train_b.steps=20",
            "steps_per_call=10",
            "checkpoint_every=10",
            "model.options.widths=(16,16)",
            "strategy_options.lora.rank=2",
        ],
    )
    report = runner.run_experiment(config, tmp_path, show_progress=False)
    results = [json.loads(p.read_text()) for p in tmp_path.glob("runs/*/seed_*/results.json")]
    expected = {"bitfit", "norm_only", "lora", "full_ft", "freeze_first_k", "linear_probe"}
    for family_name in ("mlp", "cnn"):
        mine = {r["strategy"]: r for r in results if r["params"]["model"] == family_name}
        assert set(mine) == expected
        lora = mine["lora"]
        assert lora["options"] == {"rank": 2}  # a non-default option is labelled
        m = lora["metrics"]
        assert m["trainable_params"] < mine["full_ft"]["metrics"]["trainable_params"]
        # Adam's two moments per trainable float32 parameter, plus its step counters.
        assert (
            8 * m["trainable_params"] <= m["optimizer_state_bytes"] < 8 * m["trainable_params"] + 64
        )
    text = report.read_text()
    assert "best parameter-efficient" in text and "best frozen prefix" in text
    assert "lora (rank=2)" in text


def test_fine_tune_lora_on_an_nnx_model_trains_its_own_adapters_and_head_only():
    from jaxtl.fine_tuning import FineTuneConfig

    model = LoRANet(nnx.Rngs(0))
    before = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    x = np.asarray(jax.random.normal(jax.random.key(0), (16, 8)))
    y = np.arange(16) % 3
    result = jaxtl.fine_tune(
        model, None, (x, y), "lora", groups=["body", "head"], config=FineTuneConfig(steps=5)
    )
    assert result.model is model and result.variables is None  # trained in place
    after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    base = lambda tree: [tree["body"]["kernel"], tree["body"]["bias"]]
    assert bits(base(before)) == bits(base(after))
    assert bits(before["body"]["lora"]) != bits(after["body"]["lora"])
    assert bits(before["head"]) != bits(after["head"])
