"""Strategies end to end, optimizer-state carry-over at phase switches, feature caching."""

import jax
import numpy as np
import optax
import pytest

from jaxtl import freeze, models
from jaxtl.train import (
    STRATEGIES,
    StrategyError,
    adabn,
    can_cache,
    get_strategy,
    phase_steps,
    run_phases,
)

TX = optax.adam(1e-2)  # one object, so runs share compiled phase loops
RUN = {"total_steps": 4, "batch_size": 16, "steps_per_call": 1}


@pytest.fixture(scope="module")
def setup():
    model = models.create("mlp", 3, widths=(8, 8), norm="batchnorm", dropout=0.1)
    rs = np.random.RandomState(0)
    x = rs.rand(48, 4, 4, 1).astype(np.float32)
    y = rs.randint(0, 3, 48).astype(np.int32)
    variables = models.init_variables(model, 0, x[:1])
    return model, x, y, variables


def _host(tree):
    return jax.tree.map(lambda a: np.array(a, copy=True), tree)


def _adam(opt_state):
    is_adam = lambda s: isinstance(s, optax.ScaleByAdamState)
    return next(s for s in jax.tree.leaves(opt_state, is_leaf=is_adam) if is_adam(s))


def _flat(tree):
    paths, leaves, _ = freeze.flatten_with_paths(tree)
    return dict(zip(paths, leaves))


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_runs_and_never_moves_always_frozen_leaves(setup, name):
    model, x, y, variables = setup
    run = run_phases(model, variables, get_strategy(name), TX, x, y, **RUN)
    assert [h["step"] for h in run.history] == [1, 2, 3, 4]
    assert all(np.isfinite(h["loss"]) for h in run.history)
    flags = [dict(zip(p.paths, p.frozen_flags)) for p in run.plans.values()]
    before, after = _flat(variables["params"]), _flat(run.variables["params"])
    always_frozen = [path for path in before if all(f[path] for f in flags)]
    trained = [path for path in before if path not in always_frozen]
    for path in always_frozen:
        assert np.asarray(before[path]).tobytes() == np.asarray(after[path]).tobytes(), path
    assert trained and any(not np.array_equal(before[p], after[p]) for p in trained)
    assert get_strategy(name).from_source == (name != "scratch")


def test_lp_ft_keeps_head_adam_moments_across_the_switch(setup):
    model, x, y, variables = setup
    starts, ends = {}, {}
    run = run_phases(
        model,
        variables,
        get_strategy("lp_ft"),
        TX,
        x,
        y,
        **RUN,
        on_phase_start=lambda n, s: starts.setdefault(n, _host(s.opt_state)),
        on_phase_end=lambda n, s: ends.setdefault(n, _host(s.opt_state)),
    )
    assert run.carried["lp->ft"] == ("head/Dense_0/bias", "head/Dense_0/kernel")
    lp, ft = _adam(ends["lp"]), _adam(starts["ft"])
    for moments_lp, moments_ft in ((lp.mu, ft.mu), (lp.nu, ft.nu)):
        head_lp, head_ft = _flat(moments_lp["head"]), _flat(moments_ft["head"])
        for path in head_lp:
            assert np.any(head_lp[path]) and np.array_equal(head_lp[path], head_ft[path])
        body = _flat({k: v for k, v in moments_ft.items() if k != "head"})
        assert body and not any(np.any(v) for v in body.values())  # newly thawed: fresh zeros
    assert int(ft.count) == 0  # bias correction restarts with the phase


def test_gradual_unfreezing_carries_every_still_trainable_leaf(setup):
    model, x, y, variables = setup
    starts, ends = {}, {}
    run = run_phases(
        model,
        variables,
        get_strategy("gradual_unfreeze"),
        TX,
        x,
        y,
        **RUN,
        on_phase_start=lambda n, s: starts.setdefault(n, _host(s.opt_state)),
        on_phase_end=lambda n, s: ends.setdefault(n, _host(s.opt_state)),
    )
    assert list(run.plans) == ["unfreeze0", "unfreeze1", "unfreeze2"]
    assert len(run.carried["unfreeze0->unfreeze1"]) == 2
    assert len(run.carried["unfreeze1->unfreeze2"]) == 2 + 3  # head + layer1 (Dense, BN scale/bias)
    for old, new in (("unfreeze0", "unfreeze1"), ("unfreeze1", "unfreeze2")):
        before, after = _flat(_adam(ends[old]).mu), _flat(_adam(starts[new]).mu)
        for path in run.carried[f"{old}->{new}"]:
            assert np.array_equal(before[path], after[path])
        thawed = set(after) - set(run.carried[f"{old}->{new}"])
        assert thawed and not any(np.any(after[p]) for p in thawed)


def test_feature_cache_gives_the_uncached_linear_probe(setup):
    model, x, y, variables = setup
    plain = run_phases(model, variables, get_strategy("linear_probe"), TX, x, y, **RUN)
    cached = run_phases(
        model, variables, get_strategy("linear_probe"), TX, x, y, **RUN, cache_features=True
    )
    assert cached.cached_groups == {"lp": 2} and plain.cached_groups == {"lp": 0}
    np.testing.assert_allclose(
        [h["loss"] for h in cached.history], [h["loss"] for h in plain.history], rtol=1e-5
    )
    np.testing.assert_allclose(
        [h["acc"] for h in cached.history], [h["acc"] for h in plain.history]
    )
    for a, b in zip(jax.tree.leaves(cached.variables), jax.tree.leaves(plain.variables)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_can_cache_needs_a_deterministic_frozen_prefix(setup):
    model, _, _, variables = setup
    lp = freeze.plan(variables["params"], [("head/.*", {}), (".*", None)])
    assert can_cache(lp, model.layer_groups, "frozen") == 2
    assert can_cache(lp, model.layer_groups, "adabn") == 2
    assert can_cache(lp, model.layer_groups, "train") == 0
    assert can_cache(lp, model.layer_groups, "frozen", augment=True) == 0
    surgical0 = freeze.plan(variables["params"], [("layer0/.*", {}), ("head/.*", {}), (".*", None)])
    assert can_cache(surgical0, model.layer_groups, "frozen") == 0


def test_adabn_phase_reestimates_frozen_statistics(setup):
    model, x, y, variables = setup
    run = run_phases(
        model, variables, get_strategy("linear_probe"), TX, x, y, **RUN, bn_policy="adabn"
    )
    expected = adabn(model, variables, x, RUN["batch_size"])
    for a, b in zip(
        jax.tree.leaves(run.variables["batch_stats"]), jax.tree.leaves(expected["batch_stats"])
    ):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(
        expected["batch_stats"]["layer0"]["BatchNorm_0"]["mean"],
        variables["batch_stats"]["layer0"]["BatchNorm_0"]["mean"],
    )


def test_phase_shapes_for_a_model():
    groups = ("layer0", "layer1", "head")
    freezeout = get_strategy("freezeout", t0=0.5).phases(groups)
    assert phase_steps(freezeout, 8) == [4, 2, 2]
    for k, phase in enumerate(freezeout):  # frozen front-to-back
        rules = phase.rules(groups)
        assert ((".*", None) in rules) == (k > 0)
        assert [r for r in rules if r[1] == {}] == [(f"{g}/.*", {}) for g in groups[k:]]
    assert phase_steps(get_strategy("lp_ft", lp_fraction=0.25).phases(groups), 10) == [2, 8]
    assert [p.lr for p in get_strategy("lp_ft", ft_lr=0.1).phases(groups)] == [1.0, 0.1]
    surgical = get_strategy("surgical", group="layer1").phases(groups)[0].rules(groups)
    assert surgical == [("layer1/.*", {}), ("head/.*", {}), (".*", None)]
    lr_rules = get_strategy("discriminative_lr", decay=0.5).phases(groups)[0].rules(groups)
    assert [s["lr_mult"] for _, s in lr_rules] == [0.25, 0.5, 1.0]
    assert get_strategy("l2_sp", alpha=0.1).phases(groups)[0].l2sp == 0.1


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: get_strategy("lpft"),
            r"unknown strategy 'lpft' \(did you mean 'lp_ft'\?\); choices: scratch",
        ),
        (
            lambda: get_strategy("freeze_first_k", kk=1),
            r"unknown option 'kk'.*did you mean 'k'.*valid options: k",
        ),
        (lambda: get_strategy("linear_probe", k=1), r"valid options: none"),
        (
            lambda: get_strategy("freeze_first_k", k=3).phases(("a", "b", "head")),
            r"k=3 must be in 0..2",
        ),
        (
            lambda: get_strategy("surgical", group="layr1").phases(("layer1", "head")),
            r"did you mean 'layer1'",
        ),
        (lambda: get_strategy("lp_ft", lp_fraction=1.5), r"strictly between 0 and 1"),
        (lambda: get_strategy("gradual_unfreeze", num_groups=5).phases(("a", "head")), r"exceeds"),
    ],
)
def test_bad_strategy_or_option_is_a_one_line_error(call, match):
    with pytest.raises(StrategyError, match=match) as err:
        call()
    assert "\n" not in str(err.value)


def test_vmapped_seeds_equal_separate_runs(setup):
    """seeds=: S models in one vmapped loop, each on its own data, equal S separate runs."""
    model, x, y, _ = setup
    seeds = [0, 1, 2]
    inits = [models.init_variables(model, s, x[:1]) for s in seeds]
    xs = np.stack([np.roll(x, s, axis=0) for s in seeds])  # a different training set per seed
    ys = np.stack([np.roll(y, s) for s in seeds])
    strategy = get_strategy("lp_ft")
    stacked = jax.tree.map(lambda *a: np.stack(a), *inits)
    together = run_phases(
        model, stacked, strategy, TX, xs, ys, seeds=seeds, cache_features=True, **RUN
    )
    for i, seed in enumerate(seeds):
        alone = run_phases(
            model, inits[i], strategy, TX, xs[i], ys[i], seed=seed, cache_features=True, **RUN
        )
        mine = jax.tree.map(lambda a, i=i: a[i], together.variables)
        for got, want in zip(jax.tree.leaves(mine), jax.tree.leaves(alone.variables)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert [r["loss"][i] for r in together.history] == pytest.approx(
            [r["loss"] for r in alone.history], rel=1e-5
        )
    with pytest.raises(ValueError, match="seeds= .* and mesh= .* are exclusive"):
        run_phases(
            model,
            stacked,
            strategy,
            TX,
            xs,
            ys,
            seeds=seeds,
            mesh=jax.sharding.Mesh(np.array(jax.devices()), ("data",)),
            **RUN,
        )
