"""Limit-case identities of the strategy catalogue, bit for bit on CPU.

Each strategy at its limit setting must train exactly the model its simpler neighbour trains:
same starting variables, seed, data and base optimizer give the same bits in every leaf of the
final variables and the same per-chunk metrics. Next to each identity, a setting just off the
limit must differ, so a check that compares nothing cannot pass. Last, grid points of a sweep
train side by side as slots of one compiled program, and a slot's bits depend only on its own
inputs and the slot count: never on its neighbours or its position in the group.
"""

import dataclasses

import jax
import numpy as np
import optax
import pytest
from conftest import tiny_mlp_task

from jaxtl.train import PROGRAMS, AdamW, Job, TrainSpec, get_strategy, train, train_jobs
from jaxtl.train import optimizers as optimizers_lib
from jaxtl.train import phase as phase_lib

# The runner's base optimizer (learning rate a run-time value), and a plain optax one.
ADAMW = AdamW(clip_norm=1.0, weight_decay=1e-4)
ADAM = optax.adam(1e-3)
# 6 steps in chunks of 4: a full and a partial chunk, so the trip count is a run-time value too.
TRAIN_SPEC = TrainSpec(steps=6, batch_size=16, steps_per_call=4, cache_features=True)


@pytest.fixture(scope="module")
def task():
    return tiny_mlp_task()


def _train(task, strategy, tx):
    model, x, y, variables = task
    lr = 1e-3 if tx is ADAMW else None
    spec = dataclasses.replace(TRAIN_SPEC, optimizer=tx)
    return train(model, spec, Job(variables, strategy, x, y, seed=3, lr=lr))


def _chunks(run):
    """Per-chunk metrics, without wall time and phase names (those differ by design)."""
    return [{k: v for k, v in h.items() if k not in ("seconds", "phase")} for h in run.history]


def _differences(got, want) -> list[str]:
    """Leaves whose bits differ, with the largest absolute difference of each."""
    got_leaves, got_def = jax.tree_util.tree_flatten_with_path(got)
    want_leaves, want_def = jax.tree_util.tree_flatten_with_path(want)
    assert got_def == want_def, f"structures differ: {got_def} vs {want_def}"
    out = []
    for (path, a), (_, b) in zip(got_leaves, want_leaves):
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
            diff = np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))
            out.append(f"{jax.tree_util.keystr(path)}: max |diff| = {diff:.3g}")
    return out


def _assert_same_run(got, want):
    assert _differences(got.variables, want.variables) == []
    assert _chunks(got) == _chunks(want)


# (limit case, the strategy it must equal, a setting just off the limit that must not)
IDENTITIES = {
    "l2_sp(alpha=0)": (("l2_sp", {"alpha": 0.0}), "full_ft", ("l2_sp", {"alpha": 0.5})),
    "lp_ft(lp_fraction=0, ft_lr=1)": (
        ("lp_ft", {"lp_fraction": 0.0, "ft_lr": 1.0}),
        "full_ft",
        ("lp_ft", {"lp_fraction": 0.0, "ft_lr": 0.5}),
    ),
    "freeze_first_k(k=0)": (("freeze_first_k", {"k": 0}), "full_ft", ("freeze_first_k", {"k": 1})),
    "discriminative_lr(decay=1)": (
        ("discriminative_lr", {"decay": 1.0}),
        "full_ft",
        ("discriminative_lr", {"decay": 0.5}),
    ),
    "gradual_unfreeze(num_groups=1)": (
        ("gradual_unfreeze", {"num_groups": 1}),
        "linear_probe",
        ("gradual_unfreeze", {"num_groups": 2}),
    ),
    "surgical(group=-1)": (
        ("surgical", {"group": -1, "train_head": True}),
        "linear_probe",
        ("surgical", {"group": 0, "train_head": True}),
    ),
    "surgical(group='head')": (
        ("surgical", {"group": "head", "train_head": True}),
        "linear_probe",
        ("surgical", {"group": "layer1", "train_head": True}),
    ),
}


@pytest.fixture(scope="module")
def references(task):
    """full_ft and linear_probe under each base optimizer, trained once for every identity."""
    return {
        (name, id(tx)): _train(task, get_strategy(name), tx)
        for name in ("full_ft", "linear_probe")
        for tx in (ADAMW, ADAM)
    }


@pytest.mark.parametrize("tx", [ADAMW, ADAM], ids=["adamw_runtime_lr", "optax_adam"])
@pytest.mark.parametrize("case", list(IDENTITIES))
def test_limit_case_equals_its_simpler_strategy_bit_for_bit(task, references, case, tx):
    (name, options), equal_to, _ = IDENTITIES[case]
    got = _train(task, get_strategy(name, **options), tx)
    _assert_same_run(got, references[(equal_to, id(tx))])


@pytest.mark.parametrize("case", list(IDENTITIES))
def test_a_setting_off_the_limit_differs(task, references, case):
    """The identities compare real training: one step away from the limit, the bits move."""
    _, equal_to, (name, options) = IDENTITIES[case]
    got = _train(task, get_strategy(name, **options), ADAMW)
    assert _differences(got.variables, references[(equal_to, id(ADAMW))].variables)


# ---- grid points as slots of one program ------------------------------------------------------

# Its own weight decay, so this test's programs are compiled here (not by the tests above).
SLOT_ADAMW = AdamW(clip_norm=1.0, weight_decay=3e-4)


def _loops() -> set:
    """The chunk-loop programs in the engine's compile cache."""
    return {key for key in PROGRAMS.cached_keys() if key[0][0] == "loop"}


def test_grid_points_share_one_program_and_never_change_each_others_bits(task):
    model, x, y, variables = task
    a, b = get_strategy("lp_ft", ft_lr=0.1), get_strategy("lp_ft", ft_lr=1.0)
    spec = dataclasses.replace(TRAIN_SPEC, optimizer=SLOT_ADAMW, slots=2)

    def pair(first, second):
        jobs = [Job(variables, s, x, y, seed=0, lr=1e-3) for s in (first, second)]
        return train_jobs(model, spec, jobs)

    loops = _loops()
    ab = pair(a, b)
    # lp_ft's two phases, each one program for both grid points.
    assert len(_loops() - loops) == 2
    programs = _loops()
    ba, aa, bb = pair(b, a), pair(a, a), pair(b, b)
    assert _loops() == programs

    def slot(runs, i):
        return runs[i].variables, _chunks(runs[i])

    def same(got, want):
        assert _differences(got[0], want[0]) == []
        assert got[1] == want[1]

    # Alone = a 2-slot group padded with a copy; neighbours never change a slot's bits...
    same(slot(ab, 0), slot(aa, 0))
    same(slot(ab, 1), slot(bb, 0))
    # ...and neither does its position in the group.
    same(slot(ba, 1), slot(ab, 0))
    same(slot(ba, 0), slot(ab, 1))
    same(slot(aa, 1), slot(aa, 0))
    # The knob reaches the slot: the two grid points train different models.
    assert _differences(slot(ab, 0)[0], slot(ab, 1)[0])


@pytest.mark.parametrize("strategy", ["full_ft", "discriminative_lr"])
def test_run_time_learning_rates_train_as_compile_time_ones(task, strategy):
    """The engine before run-time hyperparameters compiled ``chain(clip, adamw(lr))`` with lr a
    constant, and layer-wise decay as the plan's static ``lr_mult``; today's step reads lr and
    decay from its state. Both must give the same bits (what keeps the pre-refactor study
    reproducible, scripts/compare_engines.py). A run-time ``optax.scale`` after the base
    optimizer broke this: XLA:CPU fused the update otherwise and ~5% of the weights came out an
    ulp apart after one step."""
    from jaxtl import freeze
    from jaxtl.train.state import create_train_state
    from jaxtl.train.steps import build_step

    model, x, y, variables = task
    groups = model.layer_groups
    full = freeze.plan(variables["params"], get_strategy("full_ft").phases(groups)[0].rules(groups))
    decayed = strategy == "discriminative_lr"
    step = phase_lib.PhaseStep(model, full, ADAMW, group_decay=decayed)
    state = step.init_state(variables, optimizers_lib.hparams(lr=1e-3, decay=0.5), None, 0)
    # The old way: the learning rate a constant, layer-wise decay as static lr_mult rules.
    static = (
        freeze.plan(variables["params"], freeze.layerwise_lr_rules(groups, 0.5))
        if decayed
        else full
    )
    constant_tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3, weight_decay=1e-4))
    constant = create_train_state(variables, static, constant_tx)
    run_time_step = jax.jit(step.step_fn())
    constant_step = jax.jit(build_step(model, static, constant_tx))
    rng = jax.random.key(0)
    for i in range(3):
        batch = (x[16 * i : 16 * (i + 1)], y[16 * i : 16 * (i + 1)])
        state, _ = run_time_step(state, *batch, rng)
        constant, _ = constant_step(constant, *batch, rng)
    assert not _differences(state.variables, constant.variables)
    # At another multiplier the steps differ (so the comparison above compares something).
    other = step.init_state(
        variables, optimizers_lib.hparams(lr=1e-3, phase_lr=0.5, decay=0.5), None, 0
    )
    assert _differences(run_time_step(other, *batch, rng)[0].params, constant.params)
