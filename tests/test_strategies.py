"""Strategies end to end, optimizer-state carry-over at phase switches, feature caching."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tiny_mlp_task

from jaxtl import freeze, models
from jaxtl.train import (
    STRATEGIES,
    Callbacks,
    GroupCosineDecay,
    Job,
    Phase,
    Strategy,
    StrategyError,
    TrainSpec,
    adabn,
    cacheable_groups,
    checkpoint,
    get_strategy,
    phase_steps,
    scale_by_group_schedule,
    train,
    train_jobs,
)

TX = optax.adam(1e-2)  # one object, so runs share compiled phase loops
TRAIN_SPEC = TrainSpec(steps=4, batch_size=16, steps_per_call=1, optimizer=TX)


def _train(model, variables, strategy, x, y, *, seed=0, checkpointer=None, callbacks=None, **spec):
    """One model through ``strategy``'s phases with :data:`TRAIN_SPEC` (fields overridden by ``spec``)."""
    return train(
        model,
        dataclasses.replace(TRAIN_SPEC, **spec),
        Job(variables, strategy, x, y, seed=seed),
        checkpointer=checkpointer,
        callbacks=callbacks,
    )


@pytest.fixture(scope="module")
def setup():
    return tiny_mlp_task()


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
    if get_strategy(name).lora is not None:  # LoRA trains the model with adapters added
        model = models.with_lora(model, **get_strategy(name).lora)
        init = models.init_variables(model, 0, x[:1])
        variables = models.load_base(init, variables)
    run = _train(model, variables, get_strategy(name), x, y)
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
    run = _train(
        model,
        variables,
        get_strategy("lp_ft"),
        x,
        y,
        callbacks=Callbacks(
            on_phase_start=lambda n, s: starts.setdefault(n, _host(s.opt_state)),
            on_phase_end=lambda n, s: ends.setdefault(n, _host(s.opt_state)),
        ),
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
    run = _train(
        model,
        variables,
        get_strategy("gradual_unfreeze"),
        x,
        y,
        callbacks=Callbacks(
            on_phase_start=lambda n, s: starts.setdefault(n, _host(s.opt_state)),
            on_phase_end=lambda n, s: ends.setdefault(n, _host(s.opt_state)),
        ),
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
    plain = _train(model, variables, get_strategy("linear_probe"), x, y)
    cached = _train(model, variables, get_strategy("linear_probe"), x, y, cache_features=True)
    assert cached.cached_groups == {"lp": 2} and plain.cached_groups == {"lp": 0}
    np.testing.assert_allclose(
        [h["loss"] for h in cached.history], [h["loss"] for h in plain.history], rtol=1e-5
    )
    np.testing.assert_allclose(
        [h["acc"] for h in cached.history], [h["acc"] for h in plain.history]
    )
    for a, b in zip(jax.tree.leaves(cached.variables), jax.tree.leaves(plain.variables)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_cacheable_groups_need_a_deterministic_frozen_prefix(setup):
    model, _, _, variables = setup
    lp = freeze.plan(variables["params"], [("head/.*", {}), (".*", None)])
    assert cacheable_groups(lp, model.layer_groups, "frozen") == 2
    assert cacheable_groups(lp, model.layer_groups, "adabn") == 2
    assert cacheable_groups(lp, model.layer_groups, "train") == 0
    assert cacheable_groups(lp, model.layer_groups, "frozen", augment=True) == 0
    surgical0 = freeze.plan(variables["params"], [("layer0/.*", {}), ("head/.*", {}), (".*", None)])
    assert cacheable_groups(surgical0, model.layer_groups, "frozen") == 0


def test_adabn_phase_reestimates_frozen_statistics(setup):
    model, x, y, variables = setup
    run = _train(model, variables, get_strategy("linear_probe"), x, y, bn_policy="adabn")
    expected = adabn(model, variables, x, TRAIN_SPEC.batch_size)
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
    (discriminative,) = get_strategy("discriminative_lr", decay=0.5).phases(groups)
    assert discriminative.rules(groups) == [(".*", {})]
    assert discriminative.hparams()["decay"] == 0.5 and discriminative.uses_group_decay
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
        (lambda: get_strategy("lp_ft", lp_fraction=1.5), r"must be in \[0, 1\)"),
        (lambda: get_strategy("gradual_unfreeze", num_groups=5).phases(("a", "head")), r"exceeds"),
    ],
)
def test_bad_strategy_or_option_is_a_one_line_error(call, match):
    with pytest.raises(StrategyError, match=match) as err:
        call()
    assert "\n" not in str(err.value)


def test_vmapped_seeds_equal_separate_runs(setup):
    """S models in one vmapped loop (slots), each on its own data, equal S separate runs."""
    model, x, y, _ = setup
    seeds = [0, 1, 2]
    inits = [models.init_variables(model, s, x[:1]) for s in seeds]
    xs = [np.roll(x, s, axis=0) for s in seeds]  # a different training set per seed
    ys = [np.roll(y, s) for s in seeds]
    strategy = get_strategy("lp_ft")
    jobs = [Job(inits[i], strategy, xs[i], ys[i], seed=s) for i, s in enumerate(seeds)]
    spec = dataclasses.replace(TRAIN_SPEC, cache_features=True)
    together = train_jobs(model, dataclasses.replace(spec, slots=3), jobs)
    assert [run.slot for run in together] == [0, 1, 2]
    for i, job in enumerate(jobs):
        alone = train(model, spec, job)
        for got, want in zip(
            jax.tree.leaves(together[i].variables), jax.tree.leaves(alone.variables)
        ):
            # XLA batches a 3-slot program otherwise than a 1-slot one: equal up to rounding.
            np.testing.assert_allclose(
                got, want, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(want).max())
            )
        assert [r["loss"] for r in together[i].history] == pytest.approx(
            [r["loss"] for r in alone.history], rel=1e-5
        )
    with pytest.raises(ValueError, match=r"slots=3 and mesh= \(data parallel\) are exclusive"):
        dataclasses.replace(
            spec, slots=3, mesh=jax.sharding.Mesh(np.array(jax.devices()), ("data",))
        )


# ---- per-group learning-rate schedules (FreezeOut's annealing) ----------------------------------


@dataclasses.dataclass(frozen=True)
class _OnUntil:
    """Multiplier 1 for ``groups`` while t < ``until``, else 0 (hashable, as phases need)."""

    groups: tuple[str, ...]
    until: float = 2.0

    def __call__(self, group, t):
        return jnp.where((t < self.until) & (group in self.groups), 1.0, 0.0)


def _all_trainable(layer_groups):
    return [(".*", {})]


def test_group_cosine_decay_reaches_zero_at_each_groups_end():
    decay = GroupCosineDecay((("layer0", 0.5), ("head", 1.0)))
    values = [float(decay("layer0", t)) for t in (0.0, 0.25, 0.5, 0.9)]
    assert values == pytest.approx([1.0, 0.5, 0.0, 0.0], abs=1e-7)
    assert float(decay("head", 0.5)) == pytest.approx(0.5)
    scaled = GroupCosineDecay((("layer0", 0.5), ("head", 1.0)), scaled=True)
    assert float(scaled("layer0", 0.0)) == pytest.approx(2.0)


def test_scale_by_group_schedule_counts_from_the_phases_first_step():
    params = {"a": {"w": jnp.ones(2)}, "b": {"w": jnp.ones(2)}}
    schedule = GroupCosineDecay((("a", 0.5), ("b", 1.0)))
    tx = optax.chain(optax.sgd(1.0), scale_by_group_schedule(schedule, 2, 8))
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    seen = []
    for _ in range(3):  # global steps 2, 3, 4 of 8: t = 0.25, 0.375, 0.5
        updates, state = tx.update(grads, state)
        seen.append((float(updates["a"]["w"][0]), float(updates["b"]["w"][0])))
    for (a, b), t in zip(seen, (0.25, 0.375, 0.5)):
        assert a == pytest.approx(-float(schedule("a", t)), abs=1e-7)
        assert b == pytest.approx(-float(schedule("b", t)), abs=1e-7)
    assert seen[-1][0] == pytest.approx(0.0, abs=1e-7)  # group a's rate hit 0 at its end


def test_freezeout_anneals_each_group_to_zero_where_it_freezes():
    groups = ("layer0", "layer1", "head")
    phases = get_strategy("freezeout", t0=0.5).phases(groups)
    (decay,) = {p.group_lr for p in phases}
    assert isinstance(decay, GroupCosineDecay)
    begins = np.cumsum([0.0] + [p.fraction for p in phases])
    for k, group in enumerate(groups):
        # Group k is frozen from phase k + 1 on, which begins where its rate reaches 0.
        assert float(decay(group, float(begins[k + 1]))) == pytest.approx(0.0, abs=1e-7)
        assert float(decay(group, 0.0)) == 1.0
    assert {p.group_lr for p in get_strategy("freezeout", anneal=False).phases(groups)} == {None}
    scaled = get_strategy("freezeout", scaled=True).phases(groups)[0].group_lr
    assert float(scaled("layer0", 0.0)) == pytest.approx(2.0)
    with pytest.raises(StrategyError, match="scaled=True needs anneal=True"):
        get_strategy("freezeout", anneal=False, scaled=True)


def test_a_zero_group_rate_leaves_that_group_bit_identical(setup):
    model, x, y, variables = setup
    phase = Phase("ft", _all_trainable, group_lr=_OnUntil(("layer1", "head")))
    strategy = Strategy("custom", lambda groups: (phase,))
    run = _train(model, variables, strategy, x, y)
    before, after = variables["params"], run.variables["params"]
    for a, b in zip(jax.tree.leaves(before["layer0"]), jax.tree.leaves(after["layer0"])):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    for group in ("layer1", "head"):
        assert not np.array_equal(
            before[group]["Dense_0"]["kernel"], after[group]["Dense_0"]["kernel"]
        )


def test_a_schedule_spans_phases_on_the_global_step(setup):
    # Rate 1 before half-way and 0 after: the second phase must not move anything. A schedule
    # that restarted its clock with each phase would train there.
    model, x, y, variables = setup
    off_half_way = _OnUntil(("layer0", "layer1", "head"), until=0.5)
    phases = tuple(
        Phase(name, _all_trainable, fraction=0.5, group_lr=off_half_way) for name in ("p1", "p2")
    )
    ends = {}
    _train(
        model,
        variables,
        Strategy("custom", lambda groups: phases),
        x,
        y,
        callbacks=Callbacks(
            on_phase_end=lambda name, state: ends.setdefault(name, _host(state.params))
        ),
    )
    assert not np.array_equal(
        ends["p1"]["layer0"]["Dense_0"]["kernel"],
        variables["params"]["layer0"]["Dense_0"]["kernel"],
    )
    for a, b in zip(jax.tree.leaves(ends["p1"]), jax.tree.leaves(ends["p2"])):
        assert a.tobytes() == b.tobytes()


def test_freezeout_resumed_after_a_crash_equals_the_uninterrupted_run(setup, tmp_path):
    model, x, y, variables = setup
    # 8 steps: phases of 4, 2 and 2 steps; the crash after step 4 resumes from step 3's
    # checkpoint, inside the first phase with layer0's rate part-way down its cosine.
    settings = {"steps": 8}
    run = functools.partial(_train, model, variables, get_strategy("freezeout"), x, y)
    whole = run(**settings)

    def crash_at_step_4(record):
        if record["step"] == 4:
            raise KeyboardInterrupt("simulated crash")

    with (
        checkpoint.Checkpointer(tmp_path / "ck", keep=4, every=1) as ckpt,
        pytest.raises(KeyboardInterrupt),
    ):
        run(**settings, checkpointer=ckpt, callbacks=Callbacks(on_chunk=crash_at_step_4))
    resumed_from = []
    with checkpoint.Checkpointer(tmp_path / "ck", keep=4, every=1) as ckpt:
        resumed = run(
            **settings, checkpointer=ckpt, callbacks=Callbacks(on_resume=resumed_from.append)
        )
    assert resumed_from == [3]
    for a, b in zip(jax.tree.leaves(whole.state), jax.tree.leaves(resumed.state)):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
