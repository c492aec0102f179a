"""Transfer from A: what is loaded, re-created, missing or unexpected, and the errors."""

import jax
import numpy as np
import pytest

from jaxtl import models
from jaxtl.train import TransferError, transfer_variables

X = np.zeros((1, 4, 4, 1), np.float32)


def _init(num_classes, widths=(8, 8), name="mlp", seed=0, **options):
    model = models.create(name, num_classes, widths=widths, norm="batchnorm", **options)
    return models.init_variables(model, seed, X)


@pytest.fixture(scope="module")
def source():
    return _init(3, seed=1)


@pytest.fixture(scope="module")
def target():
    return _init(5, seed=2)


def test_new_class_count_reinitialises_head_and_loads_the_rest(source, target):
    variables, report = transfer_variables(source, target)
    assert set(report.reinitialised) == {"head/Dense_0/bias", "head/Dense_0/kernel"}
    assert "layer0/Dense_0/kernel" in report.loaded
    assert "batch_stats/layer1/BatchNorm_0/mean" in report.loaded
    assert report.missing == () and report.unexpected == ()
    np.testing.assert_array_equal(
        variables["params"]["layer1"]["Dense_0"]["kernel"],
        source["params"]["layer1"]["Dense_0"]["kernel"],
    )
    np.testing.assert_array_equal(
        variables["params"]["head"]["Dense_0"]["kernel"],
        target["params"]["head"]["Dense_0"]["kernel"],
    )
    assert jax.tree.structure(variables) == jax.tree.structure(target)


def test_zero_init_head(source, target):
    variables, _ = transfer_variables(source, target, zero_init_head=True)
    assert not np.any(variables["params"]["head"]["Dense_0"]["kernel"])


def test_same_class_count_loads_head_unless_asked(source):
    same = _init(3, seed=5)
    _, report = transfer_variables(source, same)
    assert report.reinitialised == () and "head/Dense_0/kernel" in report.loaded
    _, report = transfer_variables(source, same, reinit_head=True)
    assert "head/Dense_0/kernel" in report.reinitialised


def test_missing_and_unexpected_are_listed(source, target):
    params = jax.tree.map(lambda a: a, source["params"])
    del params["layer1"]["BatchNorm_0"]["scale"]
    params["layer1"]["extra"] = {"kernel": np.ones(2, np.float32)}
    variables, report = transfer_variables({**source, "params": params}, target)
    assert report.missing == ("layer1/BatchNorm_0/scale",)
    assert report.unexpected == ("layer1/extra/kernel",)
    np.testing.assert_array_equal(
        variables["params"]["layer1"]["BatchNorm_0"]["scale"],
        target["params"]["layer1"]["BatchNorm_0"]["scale"],
    )
    text = str(report)
    assert text.splitlines()[0].split() == [
        "group",
        "loaded",
        "reinitialised",
        "missing",
        "unexpected",
    ]
    assert "missing: layer1/BatchNorm_0/scale" in text
    assert report.as_dict()["unexpected"] == ["layer1/extra/kernel"]


def test_body_shape_mismatch_is_a_one_line_error(target):
    wider = _init(5, widths=(16, 8))
    with pytest.raises(TransferError) as err:
        transfer_variables(wider, target)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(
        "shape mismatch at layer0/BatchNorm_0/bias: checkpoint (16,) vs model (8,)"
    )
    assert "more" in message and "widths" in message


def test_head_mismatch_without_reinit_is_an_error(source, target):
    with pytest.raises(TransferError, match="shape mismatch at head/Dense_0/bias.*reinit_head"):
        transfer_variables(source, target, reinit_head=False)


def test_other_architecture_is_a_clear_error(target):
    # A CNN checkpoint's layout: its groups and module names share nothing with the MLP's.
    conv = {"Conv_0": {"kernel": np.zeros((3, 3, 1, 4), np.float32)}}
    cnn_variables = {"params": {"stem": conv, "block1": conv, "head": {"Dense_0": {}}}}
    with pytest.raises(TransferError, match="another architecture"):
        transfer_variables(cnn_variables, target)
    with pytest.raises(TransferError, match="no 'params'"):
        transfer_variables(cnn_variables["params"], target)


def test_a_studys_initial_variables_are_made_once_per_seed_and_handed_out_as_fresh_trees():
    from jaxtl.runner.tasks import init_variables

    model = models.create("mlp", num_classes=3, widths=(4,))
    x = np.random.default_rng(0).normal(size=(6, 2, 2, 1)).astype(np.float32)
    first, again = init_variables(model, 5, x), init_variables(model, 5, x[:2])
    direct = models.init_variables(model, 5, jax.numpy.asarray(x[:1]))
    for a, b, c in zip(jax.tree.leaves(first), jax.tree.leaves(again), jax.tree.leaves(direct)):
        assert a is b  # computed once ...
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))  # ... as the model makes it
    first["params"].pop(next(iter(first["params"])))  # a caller's edit stays its own
    assert jax.tree.structure(init_variables(model, 5, x)) == jax.tree.structure(direct)
    kernels = lambda v: [np.asarray(k) for k in jax.tree.leaves(v["params"]) if k.ndim == 2]
    assert all(
        not np.array_equal(a, b)
        for a, b in zip(kernels(init_variables(model, 6, x)), kernels(direct))
    )


def test_initial_variables_held_within_a_byte_budget():
    from jaxtl.runner.tasks import _InitialVariables

    leaf = lambda n: {"params": {"w": np.zeros(n, np.float32)}}  # 4n bytes
    cache = _InitialVariables(budget=800)
    cache.put("big", leaf(26))  # 104 bytes > budget / 8: never held
    assert cache.get("big") is None
    for key in "abcdefgh":
        cache.put(key, leaf(25))  # 100 bytes each: eight fit
    assert cache.get("a") is not None  # now the most recently used
    cache.put("i", leaf(25))  # the least recently used ("b") goes
    assert cache.get("b") is None
    assert all(cache.get(k) is not None for k in "acdefghi")
