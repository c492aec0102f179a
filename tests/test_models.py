"""Tests for jaxtl.models: layer-group contract, slicing, BN/dropout policy, registry errors."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtl import models

# Each compiled function runs once, so skip XLA's CPU optimisation passes (3-10x faster
# compiles), with the option names the installed jaxlib knows.
FAST_COMPILE = models.registry.fast_compile_options()

ALL = ("cnn", "cnn1d", "mlp", "resnet18", "resnet18_imagenet", "resnet34", "resnet50", "vit")

# Tiny configurations so each model compiles in about a second on CPU.
TINY = {
    "mlp": {"widths": (8, 8), "norm": "batchnorm"},
    "cnn": {"widths": (4, 8)},
    "cnn1d": {"widths": (4, 8)},
    "resnet18": {"base_width": 4, "stage_sizes": (1, 1, 1, 1)},
    "resnet34": {"base_width": 4, "stage_sizes": (1, 2, 1, 1)},
    "resnet18_imagenet": {"base_width": 4, "stage_sizes": (1, 1, 1, 1)},
    "resnet50": {"base_width": 2, "stage_sizes": (1, 1, 1, 1)},
    "vit": {"dim": 8, "depth": 2, "num_heads": 2},
}

EXPECTED_GROUPS = {
    "mlp": ("layer0", "layer1", "head"),
    "cnn": ("stem", "block1", "block2", "head"),
    "cnn1d": ("stem", "block1", "block2", "head"),
    "resnet18": ("stem", "stage1", "stage2", "stage3", "stage4", "head"),
    "resnet34": ("stem", "stage1", "stage2", "stage3", "stage4", "head"),
    "resnet18_imagenet": ("stem", "stage1", "stage2", "stage3", "stage4", "head"),
    "resnet50": ("stem", "stage1", "stage2", "stage3", "stage4", "head"),
    "vit": ("stem", "block0", "block1", "block2", "block3", "head"),
}


def example_input(name: str, batch: int = 4, size: int = 8) -> jax.Array:
    shape = (batch, 2 * size, 1) if name == "cnn1d" else (batch, size, size, 3)
    return jax.random.uniform(jax.random.key(1), shape)


def shapes(tree) -> dict[str, tuple[int, ...]]:
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in leaves}


def fast_init(model, x: jax.Array) -> dict:
    """Like models.init_variables, compiled with FAST_COMPILE."""
    init = jax.jit(functools.partial(model.init, train=False), compiler_options=FAST_COMPILE)
    return dict(init(jax.random.key(0), x))


@functools.cache
def tiny(name: str):
    """(model, variables, x) for the tiny configuration of `name`, initialised once."""
    model = models.create(name, 3, dropout=0.1, **TINY[name])
    x = example_input(name)
    return model, fast_init(model, x[:1]), x


def test_names_lists_every_model():
    assert models.names() == tuple(sorted(ALL))


@pytest.mark.parametrize("name", ALL)
def test_default_config_groups_are_top_level_params(name):
    model = models.create(name, 10)
    x = example_input(name, batch=1, size=32)
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
    assert model.layer_groups == EXPECTED_GROUPS[name]
    assert set(variables["params"]) == set(model.layer_groups)
    assert ("batch_stats" in variables) == (name not in ("mlp", "vit"))
    head_kernel = variables["params"]["head"]["Dense_0"]["kernel"]
    assert head_kernel.shape[-1] == 10
    if name.startswith("resnet"):
        blocks = {"resnet18": 2, "resnet18_imagenet": 2, "resnet34": 6, "resnet50": 6}[name]
        assert len(variables["params"]["stage3"]) == blocks
        assert head_kernel.shape[0] == (2048 if name == "resnet50" else 512)
    if name == "vit":
        assert variables["params"]["stem"]["pos_embedding"].shape == (1, 65, 64)


@pytest.mark.parametrize("name", ALL)
def test_tiny_config_groups_are_top_level_params(name):
    model, variables, _ = tiny(name)
    assert set(variables["params"]) == set(model.layer_groups)
    assert model.layer_groups[-1] == "head"
    assert set(variables.get("batch_stats", {})) <= set(model.layer_groups)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_init_variables_orders_groups_like_layer_groups(name):
    model = models.create(name, 3, **TINY[name])
    variables = models.init_variables(model, 0, example_input(name, batch=1))
    assert list(variables) == ["params", "batch_stats"]
    assert tuple(variables["params"]) == model.layer_groups
    assert tuple(variables["batch_stats"]) == model.layer_groups[:-1]


@pytest.mark.parametrize("name", ALL)
def test_one_sgd_step_changes_every_group(name):
    model, variables, x = tiny(name)
    y = jnp.arange(x.shape[0]) % 3
    params = variables["params"]
    state = {k: v for k, v in variables.items() if k != "params"}
    tx = optax.sgd(0.1)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def step(params, state, opt_state, rng):
        def loss_fn(params):
            logits, new_state = model.apply(
                {"params": params, **state},
                x,
                train=True,
                rngs={"dropout": rng},
                mutable=list(state),
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, new_state

        (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_state, loss

    new_params, new_state, loss = step(params, state, tx.init(params), jax.random.key(2))
    assert np.isfinite(loss)
    for group in model.layer_groups:
        changed = jax.tree.leaves(
            jax.tree.map(lambda a, b: bool(jnp.any(a != b)), params[group], new_params[group])
        )
        assert any(changed), f"no parameter of group {group!r} changed"
    if state:
        assert any(
            jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state, new_state))
        )


@pytest.mark.parametrize("name", ALL)
def test_start_stop_composition_equals_full_forward(name):
    model, variables, x = tiny(name)
    n = len(model.layer_groups)
    # After the stem, in the middle, and right before the head.
    split_points = sorted({1, n // 2, n - 1})

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def splits(variables, x):
        full = model.apply(variables, x)
        composed = [
            model.apply(variables, model.apply(variables, x, stop=k), start=k) for k in split_points
        ]
        return full, composed

    full, composed = splits(variables, x)
    assert full.shape == (x.shape[0], 3) and full.dtype == jnp.float32
    for k, out in zip(split_points, composed, strict=True):
        np.testing.assert_allclose(out, full, rtol=1e-5, atol=1e-6, err_msg=f"split at {k}")


def test_slices_follow_python_semantics():
    model, variables, x = tiny("mlp")
    features = model.apply(variables, x, stop=-1)
    np.testing.assert_allclose(
        model.apply(variables, features, start=-1), model.apply(variables, x), rtol=1e-6
    )
    assert model.apply(variables, x, start=1, stop=1) is x


def test_inference_groups_keep_batch_stats_and_use_running_average():
    model, variables, x = tiny("cnn")
    _, updated = model.apply(
        variables,
        x,
        train=True,
        inference_groups={0},
        mutable=["batch_stats"],
        rngs={"dropout": jax.random.key(0)},
    )
    old, new = variables["batch_stats"], updated["batch_stats"]
    assert shapes(old) == shapes(new)
    jax.tree.map(np.testing.assert_array_equal, old["stem"], new["stem"])
    assert not np.array_equal(
        old["block1"]["BatchNorm_0"]["mean"], new["block1"]["BatchNorm_0"]["mean"]
    )
    stem_frozen, _ = model.apply(
        variables, x, train=True, stop=1, inference_groups=(0,), mutable=["batch_stats"]
    )
    np.testing.assert_allclose(stem_frozen, model.apply(variables, x, stop=1), rtol=1e-6)


def test_inference_groups_disable_dropout():
    model = models.create("mlp", 3, widths=(16, 16), dropout=0.5)
    x = example_input("mlp")
    variables = fast_init(model, x)
    rngs = {"dropout": jax.random.key(3)}
    every_group = range(len(model.layer_groups))
    frozen = model.apply(variables, x, train=True, inference_groups=every_group, rngs=rngs)
    np.testing.assert_allclose(frozen, model.apply(variables, x), rtol=1e-6)
    assert not np.allclose(model.apply(variables, x, train=True, rngs=rngs), frozen)


def test_inference_groups_out_of_range_is_rejected():
    model, variables, x = tiny("mlp")
    with pytest.raises(
        ValueError, match=r"inference_groups \[3\] out of range; valid indices 0\.\.2"
    ):
        model.apply(variables, x, inference_groups=(3,))


@pytest.mark.parametrize("name", ALL)
def test_num_classes_changes_only_the_head_dense(name):
    x = example_input(name, batch=1)

    def param_shapes(num_classes):
        model = models.create(name, num_classes, **TINY[name])
        return shapes(jax.eval_shape(model.init, jax.random.key(0), x)["params"])

    a, b = param_shapes(3), param_shapes(7)
    differing = {path for path in a if a[path] != b[path]}
    assert a.keys() == b.keys()
    assert differing == {"['head']['Dense_0']['kernel']", "['head']['Dense_0']['bias']"}


@pytest.mark.parametrize("norm", models.NORMS)
def test_cnn_norm_options_train_and_eval(norm):
    model = models.create("cnn", 3, widths=(4, 8), norm=norm)
    x = example_input("cnn")
    variables = fast_init(model, x)
    assert ("batch_stats" in variables) == (norm == "batchnorm")
    logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert logits.shape == (4, 3) and np.all(np.isfinite(logits))
    assert np.all(np.isfinite(model.apply(variables, x)))


@pytest.mark.parametrize("norm", models.NORMS)
@pytest.mark.parametrize("name", ["mlp", "cnn1d", "resnet18", "resnet50"])
def test_norm_options_trace_on_other_models(name, norm):
    model = models.create(name, 3, **{**TINY[name], "norm": norm})
    x = example_input(name)
    variables = jax.eval_shape(
        functools.partial(models.init_variables, model), jax.random.key(0), x
    )
    logits, _ = jax.eval_shape(
        functools.partial(model.apply, train=True, mutable=["batch_stats"]), variables, x
    )
    assert logits.shape == (4, 3)


@pytest.mark.parametrize("name", ["cnn", "resnet18_imagenet", "vit", "mlp"])
@pytest.mark.parametrize("size", [8, 16, 32])
def test_image_models_accept_any_reasonable_size(name, size):
    model = models.create(name, 5, **TINY[name])
    x = example_input(name, size=size)
    variables = jax.eval_shape(
        functools.partial(models.init_variables, model), jax.random.key(0), x
    )
    assert jax.eval_shape(model.apply, variables, x).shape == (4, 5)


def test_cnn1d_accepts_signals_without_channel_axis():
    model = models.create("cnn1d", 4, widths=(4,))
    x = jnp.zeros((2, 40))
    variables = jax.eval_shape(
        functools.partial(models.init_variables, model), jax.random.key(0), x
    )
    assert jax.eval_shape(model.apply, variables, x).shape == (2, 4)


def test_bfloat16_compute_keeps_float32_params_and_logits():
    model = models.create("cnn", 3, widths=(4, 8), dtype="bfloat16")
    x = example_input("cnn")
    variables = fast_init(model, x)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    assert model.apply(variables, x, stop=1).dtype == jnp.bfloat16
    assert model.apply(variables, x).dtype == jnp.float32


def test_default_options_per_name():
    assert models.default_options("resnet50")["block_type"] == "bottleneck"
    assert models.default_options("resnet18")["stem_type"] == "cifar"
    assert models.default_options("cnn")["norm"] == "batchnorm"
    assert "num_classes" not in models.default_options("vit")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: models.create("resnt18", 10),
            (
                r"^unknown model 'resnt18' \(did you mean 'resnet18'\?\); choices: cnn, cnn1d, mlp, "
                r"resnet18, resnet18_imagenet, resnet34, resnet50, vit$"
            ),
        ),
        (lambda: models.create("transformer", 10), r"^unknown model 'transformer'; choices: cnn, "),
        (
            lambda: models.create("cnn", 10, widht=(4,)),
            (
                r"^unknown option for model 'cnn': 'widht' \(did you mean 'widths'\?\); choices: "
                r"conv, dropout, dtype, kernel_size, norm, widths$"
            ),
        ),
        (
            lambda: models.create("cnn", 10, norm="bn"),
            r"^CNN does not support norm 'bn'; choices: batchnorm, groupnorm, layernorm, none$",
        ),
        (
            lambda: models.create("resnet18", 10, norm="batchnrom"),
            r"^ResNet does not support norm 'batchnrom' \(did you mean 'batchnorm'\?\)",
        ),
        (
            lambda: models.create("vit", 10, norm="batchnorm"),
            r"^ViT does not support norm 'batchnorm'; choices: layernorm$",
        ),
        (lambda: models.create("mlp", 0), r"^MLP: num_classes must be an integer >= 1, got 0$"),
        (lambda: models.create("cnn", 10, dropout=1.0), r"dropout must be in \[0, 1\), got 1\.0"),
        (lambda: models.create("cnn", 10, widths=(4, 0)), r"CNN widths must be positive integers"),
        (lambda: models.create("resnet18", 10, block_type="wide"), r"unknown ResNet block 'wide'"),
        (lambda: models.create("vit", 10, dim=10, num_heads=4), r"num_heads \(4\) must divide dim"),
        (lambda: models.create("cnn", 10, dtype="float99"), r"dtype 'float99' is not a dtype"),
    ],
)
def test_invalid_arguments_raise_one_line_value_errors(call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert "\n" not in str(info.value)


def test_fast_compile_options_drop_names_this_jaxlib_does_not_know(monkeypatch):
    candidates = {"xla_backend_optimization_level": 0, "xla_no_such_option_in_any_jaxlib": True}
    monkeypatch.setattr(models.registry, "_FAST_COMPILE_CANDIDATES", candidates)
    # The cached function's body, run afresh on the patched candidates.
    assert models.registry.fast_compile_options.__wrapped__() == {
        "xla_backend_optimization_level": 0
    }


def test_im2col_convolution_equals_xla_convolution_with_the_same_parameters():
    from jaxtl.models.convnet import im2col_conv

    x = jax.random.normal(jax.random.key(0), (2, 7, 6, 3))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
    want = jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    np.testing.assert_allclose(im2col_conv(x, kernel), want, atol=1e-5)
    signal = jax.random.normal(jax.random.key(2), (2, 9, 3))
    kernel1 = jax.random.normal(jax.random.key(3), (5, 3, 4))
    want1 = jax.lax.conv_general_dilated(
        signal, kernel1, (1,), "SAME", dimension_numbers=("NWC", "WIO", "NWC")
    )
    np.testing.assert_allclose(im2col_conv(signal, kernel1), want1, atol=1e-5)
    # Same parameters (names, shapes, values) whichever way the convolution is computed.
    xla, im2col = (models.create("cnn", 5, widths=(4, 8), conv=c) for c in ("xla", "im2col"))
    variables = models.init_variables(xla, 0, jnp.zeros((1, 8, 8, 1)))
    other = models.init_variables(im2col, 0, jnp.zeros((1, 8, 8, 1)))
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(other)):
        np.testing.assert_array_equal(a, b)
    images = jax.random.normal(jax.random.key(4), (3, 8, 8, 1))
    np.testing.assert_allclose(
        xla.apply(variables, images), im2col.apply(variables, images), atol=1e-5
    )
    with pytest.raises(
        ValueError, match="unknown conv 'im2cl'.*choices: auto, xla, xla_vjp, im2col"
    ):
        models.create("cnn", 5, conv="im2cl")


@pytest.mark.parametrize(
    "x_shape, kernel_shape",
    [((2, 7, 6, 3), (3, 3, 3, 4)), ((2, 9, 3), (5, 3, 4)), ((3, 6, 5, 4), (4, 2, 4, 2))],
)
def test_xla_vjp_convolution_has_xla_convolutions_value_and_gradients(x_shape, kernel_shape):
    # Odd, even and 1-D windows; also vmapped over per-slot weights, as the engine trains.
    from flax.linen.linear import _conv_dimension_numbers

    from jaxtl.models.convnet import xla_vjp_conv

    def xla(x, kernel):
        numbers = _conv_dimension_numbers(x.shape)
        return jax.lax.conv_general_dilated(
            x, kernel, (1,) * (x.ndim - 2), "SAME", dimension_numbers=numbers
        )

    x = jax.random.normal(jax.random.key(0), x_shape)
    kernel = jax.random.normal(jax.random.key(1), kernel_shape)
    loss = lambda conv: lambda x, k: jnp.sum(jnp.sin(conv(x, k)))
    scale = lambda a: 1e-5 * float(jnp.max(jnp.abs(a)))
    want = xla(x, kernel)
    np.testing.assert_allclose(xla_vjp_conv(x, kernel), want, rtol=1e-5, atol=scale(want))
    xs, ks = jnp.stack([x, x + 1]), jnp.stack([kernel, 2 * kernel])
    for grads in (jax.grad, lambda f, argnums: jax.vmap(jax.grad(f, argnums))):
        args = (x, kernel) if grads is jax.grad else (xs, ks)
        got = grads(loss(xla_vjp_conv), (0, 1))(*args)
        want_grads = grads(loss(xla), (0, 1))(*args)
        for g, w in zip(got, want_grads):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=scale(w))


@pytest.mark.parametrize("shape", [(3, 8, 8, 4), (2, 7, 5, 3), (2, 1, 1, 2), (4, 9, 3)])
def test_max_pool_2x_equals_flax_max_pool_bit_for_bit_ties_included(shape):
    # Rounded ReLU outputs: many windows hold equal maxima (zeros above all), where the
    # gradient must go to the first one as XLA's select_and_scatter sends it. Odd sides pad.
    from jaxtl.models.convnet import max_pool_2x

    rng = np.random.default_rng(0)
    x = jnp.asarray(np.maximum(rng.normal(size=shape), 0).round(1), jnp.float32)
    window = (2,) * (x.ndim - 2)
    flax_pool = lambda x: nn.max_pool(x, window, strides=window, padding="SAME")
    want, flax_vjp = jax.vjp(flax_pool, x)
    got, vjp = jax.vjp(max_pool_2x, x)
    np.testing.assert_array_equal(got, want)
    dy = jnp.asarray(rng.normal(size=want.shape), jnp.float32)
    np.testing.assert_array_equal(vjp(dy)[0], flax_vjp(dy)[0])
    # Vmapped over slots, as the engine trains.
    per_slot = jax.vmap(lambda x, dy: jax.vjp(max_pool_2x, x)[1](dy)[0])
    np.testing.assert_array_equal(per_slot(x[:, None], dy[:, None])[:, 0], flax_vjp(dy)[0])
