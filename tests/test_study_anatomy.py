"""scripts/study_anatomy.py books time without double counting; its hooks exist in the engine;
scripts/torch_study_peer.py trains on jaxtl's own arrays, batches and phase budgets."""

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def anatomy_lib():
    return _script("study_anatomy")


@pytest.fixture(scope="module")
def peer():
    return _script("torch_study_peer")


class _Clock:
    """A clock that advances only when told to."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_nested_spans_and_charges_add_up_to_the_wall(anatomy_lib):
    clock = _Clock()
    anatomy = anatomy_lib.Anatomy(clock)
    with anatomy.span("evaluation"):
        clock.now += 1.0
        with anatomy.span("cost"):
            clock.now += 2.0
            anatomy.charge("compile", 1.5)  # happened inside "cost"
        clock.now += 0.5
    anatomy.charge("compile", 0.25)  # outside any span
    clock.now += 0.25
    rows = {r["component"]: r for r in anatomy.table(wall=clock.now)}
    assert rows["evaluation"]["seconds"] == 1.5
    assert rows["evaluation"]["inclusive"] == 3.5
    assert rows["cost"]["seconds"] == 0.5
    assert rows["compile"]["seconds"] == 1.75 and rows["compile"]["count"] == 2
    assert rows[anatomy_lib.OTHER]["seconds"] == 0.0
    assert sum(r["seconds"] for r in rows.values()) == clock.now


def test_chunk_seconds_are_booked_as_training_not_loop(anatomy_lib):
    clock = _Clock()
    anatomy = anatomy_lib.Anatomy(clock)

    def loop(pack, index):
        clock.now += 3.0
        pack.record.history += [{"seconds": 1.0}, {"seconds": 1.5}]

    pack = types.SimpleNamespace(record=types.SimpleNamespace(history=[{"seconds": 9.0}]))
    anatomy_lib.chunk_loop_wrapper(anatomy, loop, "loop")(pack, 0)
    assert anatomy.rows[anatomy_lib.TRAIN_CALLS]["seconds"] == 2.5
    assert anatomy.rows[anatomy_lib.TRAIN_CALLS]["count"] == 2
    assert anatomy.rows["loop"]["seconds"] == 0.5


def test_every_hook_names_an_engine_function(anatomy_lib):
    from jaxtl.train.checkpoint import Checkpointer

    hooks = (*anatomy_lib.HOOKS, anatomy_lib.CHUNK_LOOP, *anatomy_lib.PHASES)
    for module_name, attr, *_ in (*hooks, anatomy_lib.RUN_CELL):
        assert callable(getattr(importlib.import_module(module_name), attr)), (module_name, attr)
    for method in anatomy_lib.CHECKPOINT_METHODS:
        assert callable(getattr(Checkpointer, method))


def test_one_more_confirmation_seed_costs_its_final_runs_and_its_source_model(anatomy_lib):
    clock = _Clock()
    ledger = anatomy_lib.SeedLedger(clock)

    def spend(seconds):
        clock.now += seconds

    part = types.SimpleNamespace(
        experiment="strategies",
        model=types.SimpleNamespace(name="cnn"),
        seeds=[0, 1, 2, 3],
        protocol=types.SimpleNamespace(name="tuned", selection_seeds=[1000, 1001, 1002, 1003]),
    )
    source = ledger.wrap("source models", lambda: spend(16.0))

    def cell(config):
        source()
        ledger.wrap("selection", lambda: spend(30.0))()
        ledger.wrap("confirmation", lambda: (spend(8.0), source()))()  # nested: counted once

    ledger.wrap_run_cell(cell)(part)
    assert dict(ledger.seconds["strategies (cnn)"]) == {
        "source models": 16.0,
        "selection": 30.0,
        "confirmation": 24.0,
    }
    # 24 s over 4 confirmation seeds, plus 16 s of source models over the 8 seeds that got one.
    assert ledger.marginal() == {"strategies (cnn)": 6.0 + 2.0}
    assert "| strategies (cnn) | 30.0 | 16.0 | 24.0 | 4 | 8.0 |" in ledger.table()


def test_compile_event_names_exist_in_jax(anatomy_lib):
    from jax._src import dispatch

    names = {
        dispatch.JAXPR_TRACE_EVENT,
        dispatch.JAXPR_TO_MLIR_MODULE_EVENT,
        dispatch.BACKEND_COMPILE_EVENT,
    }
    assert names == set(anatomy_lib.COMPILE_EVENTS)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_peer_data_are_jaxtls_arrays(peer, model):
    from jaxtl.runner.tasks import build_tasks

    config = peer.study_config(model, ["protocol.name=fixed"])
    tasks = build_tasks(config)
    data = peer.study_data(config.data)
    np.testing.assert_array_equal(data.a_train[0], tasks.a.x_train)
    np.testing.assert_array_equal(data.a_test[1], tasks.a.y_test)
    np.testing.assert_array_equal(data.b.x_train, tasks.b.x_train)
    np.testing.assert_array_equal(data.b.x_test, tasks.b.x_test)
    np.testing.assert_array_equal(data.ood[0], tasks.ood_b[0])


def test_peer_batches_are_jaxtls_batches(peer):
    from jaxtl.train import batch_schedule

    for n, batch, seed in ((25, 25, 0), (100, 25, 3), (2535, 64, 1)):
        np.testing.assert_array_equal(
            peer.batch_schedule(n, batch, seed, 300), batch_schedule(n, batch, seed, 0, 300)
        )


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_peer_phases_are_jaxtls_phases(peer, model):
    """Per strategy of the config: steps, trainable groups, lr multiplier, L2-SP, decay."""
    import jax

    from jaxtl import freeze, models
    from jaxtl.train import get_strategy, phase_steps
    from jaxtl.train.steps import frozen_groups

    config = peer.study_config(model)
    net = models.create(model, 5, **config.model.options)
    groups = net.layer_groups
    x = np.zeros((1, 16, 16, 1) if model == "cnn" else (1, 28, 28, 1), np.float32)
    params = jax.eval_shape(lambda: net.init(jax.random.key(0), x))["params"]
    trainable = lambda rules: tuple(
        g
        for i, g in enumerate(groups)
        if i not in frozen_groups(freeze.plan(params, rules), groups)
    )
    for name in config.strategies:
        options = dict(config.strategy_options.get(name, {}))
        phases = get_strategy(name, **options).phases(groups)
        mine = peer.strategy_phases(name, options, groups, config.train_b.steps)
        assert [p.steps for p in mine] == phase_steps(phases, config.train_b.steps), name
        for ours, theirs in zip(mine, phases, strict=True):
            assert ours.lr_mult == theirs.lr, name
            assert ours.l2sp == (theirs.l2sp or 0.0), name
            assert ours.decay == (theirs.group_decay or 1.0), name
            assert ours.trainable == trainable(theirs.rules(groups)), name
