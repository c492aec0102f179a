"""Train/eval steps: frozen partition untouched, BN policies, the chunk loop, AdaBN, data parallelism."""

import json
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import run_on_cpu_devices, tiny_mlp_task

from jaxtl import freeze
from jaxtl.train import (
    FixedTx,
    PhaseStep,
    adabn,
    check_bn_policy,
    create_train_state,
    evaluate,
    hparams,
    make_train_step,
    stack_trees,
)

TX = optax.adam(1e-2)
FREEZE_LAYER0 = [("layer0/.*", None), (".*", {})]


@pytest.fixture(scope="module")
def setup():
    model, x, y, variables = tiny_mlp_task()
    plan = freeze.plan(variables["params"], FREEZE_LAYER0)
    return model, x, y, variables, plan


@pytest.fixture(scope="module")
def frozen_step(setup):
    model, _, _, _, plan = setup
    return make_train_step(model, plan, TX)


def _host(tree):
    return jax.tree.map(lambda a: np.array(a, copy=True), tree)


def _run(step, state, x, y, n=3):
    for i in range(n):
        lo = (i * 16) % len(y)
        state, metrics = step(state, x[lo : lo + 16], y[lo : lo + 16], jax.random.key(1))
    return state, metrics


def _same_bytes(a, b):
    return np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_frozen_policy_keeps_frozen_params_and_stats_bit_identical(setup, frozen_step):
    _, x, y, variables, plan = setup
    state = create_train_state(variables, plan, TX)
    before = _host(state)
    state, metrics = _run(frozen_step, state, x, y)
    after = _host(state)
    assert int(after.step) == 3 and np.isfinite(float(metrics["loss"]))
    for a, b in zip(
        jax.tree.leaves(before.params["layer0"]), jax.tree.leaves(after.params["layer0"])
    ):
        assert _same_bytes(a, b)
    for a, b in zip(
        jax.tree.leaves(before.batch_stats["layer0"]), jax.tree.leaves(after.batch_stats["layer0"])
    ):
        assert _same_bytes(a, b)
    # The trainable group and its statistics do move.
    assert not np.array_equal(
        before.params["layer1"]["Dense_0"]["kernel"], after.params["layer1"]["Dense_0"]["kernel"]
    )
    assert not np.array_equal(
        before.batch_stats["layer1"]["BatchNorm_0"]["mean"],
        after.batch_stats["layer1"]["BatchNorm_0"]["mean"],
    )


def test_train_policy_updates_stats_of_frozen_modules(setup):
    model, x, y, variables, plan = setup
    step = make_train_step(model, plan, TX, bn_policy="train")
    state = create_train_state(variables, plan, TX)
    before = _host(state)
    state, _ = _run(step, state, x, y)
    assert _same_bytes(
        before.params["layer0"]["Dense_0"]["kernel"], state.params["layer0"]["Dense_0"]["kernel"]
    )
    assert not np.array_equal(
        before.batch_stats["layer0"]["BatchNorm_0"]["mean"],
        state.batch_stats["layer0"]["BatchNorm_0"]["mean"],
    )


def test_chunk_loop_equals_single_steps(setup, frozen_step):
    """The engine's chunk loop (one slot) runs the same steps as the jitted single step."""
    model, x, y, variables, plan = setup
    phase_step = PhaseStep(model, plan, FixedTx(TX))
    state = stack_trees([phase_step.init_state(variables, hparams(), None, 0)])
    idx = np.arange(48, dtype=np.int32).reshape(1, 3, 16)
    args = (state, x[None], y[None], idx, np.int32(3), jax.random.key(1)[None])
    looped, sums = phase_step.loop(args)(*args)
    stepped, metrics = create_train_state(variables, plan, TX), []
    for i in range(3):
        stepped, m = frozen_step(
            stepped, x[16 * i : 16 * (i + 1)], y[16 * i : 16 * (i + 1)], jax.random.key(1)
        )
        metrics.append(float(m["loss"]))
    np.testing.assert_allclose(sums["loss"][0] / 3, np.mean(metrics), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(looped.params), jax.tree.leaves(stepped.params)):
        np.testing.assert_allclose(a[0], b, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(b).max()))


def test_frozen_backward_is_not_computed(setup):
    model, x, y, variables, _ = setup
    costs = {}
    for name, rules in {"lp": [("head/.*", {}), (".*", None)], "full": [(".*", {})]}.items():
        plan = freeze.plan(variables["params"], rules)
        state = create_train_state(variables, plan, TX)
        step = make_train_step(model, plan, TX)
        costs[name] = freeze.cost(step, state, x[:16], y[:16], jax.random.key(0))["flops"]
    assert costs["lp"] < 0.8 * costs["full"]


def test_bf16_compute_keeps_float32_params(setup):
    model, x, y, variables, plan = setup
    step = make_train_step(model, plan, TX, compute_dtype=jnp.bfloat16)
    state, metrics = _run(step, create_train_state(variables, plan, TX), x, y, n=2)
    assert np.isfinite(float(metrics["loss"]))
    assert {a.dtype for a in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
    assert {a.dtype for a in jax.tree.leaves(state.batch_stats)} == {jnp.dtype(jnp.float32)}


def test_l2sp_penalises_only_trainable_non_head_leaves(setup):
    model, x, y, variables, plan = setup
    alpha = 0.5
    reference = jax.tree.map(lambda a: a + 1.0, variables["params"])
    step = make_train_step(model, plan, TX, l2sp=alpha)
    state = create_train_state(variables, plan, TX, reference=reference)
    _, metrics = step(state, x[:16], y[:16], jax.random.key(0))
    # layer0 is frozen and the head is excluded, so only layer1's leaves count.
    n_layer1 = sum(a.size for a in jax.tree.leaves(variables["params"]["layer1"]))
    np.testing.assert_allclose(metrics["l2sp"], alpha / 2 * n_layer1, rtol=1e-6)
    with pytest.raises(ValueError, match="state.reference is None"):
        step(create_train_state(variables, plan, TX), x[:16], y[:16], jax.random.key(0))


def test_unknown_bn_policy_is_a_one_line_error():
    with pytest.raises(ValueError) as err:
        check_bn_policy("froze")
    message = str(err.value)
    assert "\n" not in message and "'frozen'" in message
    assert all(p in message for p in ("frozen", "train", "adabn"))


def test_adabn_averages_batch_moments_and_keeps_params(setup):
    model, x, _, variables, _ = setup
    adapted = adabn(model, variables, x, batch_size=24)
    kernel = np.asarray(variables["params"]["layer0"]["Dense_0"]["kernel"])
    h = x.reshape(len(x), -1) @ kernel  # layer0's pre-norm activations (no bias with BN)
    stats = adapted["batch_stats"]["layer0"]["BatchNorm_0"]
    np.testing.assert_allclose(stats["mean"], h.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        stats["var"], (h[:24].var(0) + h[24:].var(0)) / 2, rtol=1e-3, atol=1e-5
    )
    for a, b in zip(jax.tree.leaves(adapted["params"]), jax.tree.leaves(variables["params"])):
        assert _same_bytes(a, b)


def test_evaluate_pads_the_last_batch(setup):
    model, x, y, variables, _ = setup
    whole = evaluate(model, variables, x, y, batch_size=48)
    padded = evaluate(model, variables, x, y, batch_size=20)
    assert whole["acc"] == padded["acc"]
    np.testing.assert_allclose(whole["loss"], padded["loss"], rtol=1e-5)


_SHARDED_SCRIPT = textwrap.dedent(
    """
    import json
    import jax, numpy as np, optax
    from jaxtl import models
    from jaxtl.data import data_mesh
    from jaxtl.train import Job, TrainSpec, get_strategy, train

    assert jax.device_count() == 8, jax.devices()
    model = models.create("mlp", 3, widths=(8, 8), norm="batchnorm")
    rs = np.random.RandomState(0)
    x = rs.rand(64, 4, 4, 1).astype(np.float32)
    y = rs.randint(0, 3, 64).astype(np.int32)
    variables = models.init_variables(model, 0, x[:1])
    out = {}
    for name, mesh in (("one", data_mesh(jax.devices()[:1])), ("eight", data_mesh())):
        spec = TrainSpec(steps=4, batch_size=16, optimizer=optax.adam(1e-2), steps_per_call=2,
                         mesh=mesh)
        run = train(model, spec, Job(variables, get_strategy("full_ft"), x, y))
        kernel = run.variables["params"]["layer0"]["Dense_0"]["kernel"]
        out[name] = {"loss": [h["loss"] for h in run.history],
                     "kernel": np.asarray(kernel).ravel().tolist(),
                     "devices": len(kernel.sharding.device_set)}
    print(json.dumps(out))
    """
)


def test_data_parallel_over_8_devices_matches_one_device():
    # Full fine-tuning keeps every BatchNorm in train mode: statistics must be global-batch ones.
    stdout = run_on_cpu_devices(_SHARDED_SCRIPT, devices=8)
    out = json.loads(stdout.strip().splitlines()[-1])
    assert out["eight"]["devices"] == 8 and out["one"]["devices"] == 1
    np.testing.assert_allclose(out["eight"]["loss"], out["one"]["loss"], rtol=1e-5)
    np.testing.assert_allclose(out["eight"]["kernel"], out["one"]["kernel"], rtol=1e-4, atol=1e-6)
