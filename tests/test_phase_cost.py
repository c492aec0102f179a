"""The step that trains is the step that is measured.

The runner once rebuilt each phase's step for its cost report without L2-SP or the compute
dtype, so an L2-SP or bfloat16 run printed another step's FLOPs. Here an L2-SP + bfloat16 run
goes through the runner, and the FLOPs (and memory) in its results.json must equal
:func:`jaxtl.freeze.cost` of that step built independently, and differ from the cost of every
step that drops one of its two settings.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import pytest

from jaxtl import freeze, runner
from jaxtl.runner.jobs import step_costs
from jaxtl.runner.tasks import init_variables
from jaxtl.train import PROGRAMS, AdamW, PhaseStep, get_strategy, hparams

L2SP_BF16 = ("strategies=['l2_sp']", "compute_dtype=bfloat16", "protocol.name=fixed")


@pytest.fixture(scope="module")
def trained(tiny_config, tmp_path_factory):
    config = tiny_config(*L2SP_BF16)
    out = tmp_path_factory.mktemp("l2sp_bf16")
    runner.run_experiment(config, out, show_progress=False)
    (path,) = out.glob("runs/*/seed_0/results.json")
    return config, json.loads(path.read_text())


def step_cost(config, *, l2sp: bool, compute_dtype) -> dict[str, float]:
    """XLA's cost of one full fine-tuning step on the config's task B, built here, not by the
    runner: the l2_sp phase's plan, the runner's base optimizer, the given L2-SP / dtype."""
    tasks = runner.build_tasks(config)
    model = runner.model_for(config, tasks.b.num_classes)
    variables = init_variables(model, 0, tasks.b.x_train)
    (phase,) = get_strategy("l2_sp").phases(model.layer_groups)
    plan = freeze.plan(variables["params"], phase.rules(model.layer_groups))
    train = config.train_b
    step = PhaseStep(
        model,
        plan,
        AdamW(clip_norm=float(train.clip_norm), weight_decay=float(train.weight_decay)),
        bn_policy=config.bn_policy,
        l2sp=l2sp,
        compute_dtype=compute_dtype,
        clock=(0, train.steps),
    )
    reference = variables["params"] if l2sp else None
    state = step.init_state(variables, hparams(lr=float(train.lr)), reference, 0)
    # The cell's batch: every example of the 5-per-class subset when that is below batch_size.
    batch = min(train.batch_size, config.n_per_class[0] * tasks.b.num_classes)
    x = jax.ShapeDtypeStruct((batch, *tasks.b.x_train.shape[1:]), jnp.float32)
    y = jax.ShapeDtypeStruct((batch,), jnp.int32)
    return freeze.cost(step.step_fn(), state, x, y, jax.random.key(0))


def test_reported_flops_are_the_cost_of_the_l2sp_bf16_step_that_trained(trained):
    config, results = trained
    (phase,) = results["phases"]
    assert phase["name"] == "ft" and phase["cached_groups"] == 0
    want = step_cost(config, l2sp=True, compute_dtype="bfloat16")
    assert phase["flops_per_step"] == want["flops"]
    metrics = results["metrics"]
    assert metrics["flops_per_step"] == want["flops"]
    assert metrics["train_flops"] == want["flops"] * phase["steps"]
    memory = sum(want[k] for k in ("argument_bytes", "output_bytes", "temp_bytes"))
    assert metrics["peak_memory_bytes"] == int(memory)
    # Each setting changes the step's cost, so a report that drops either one fails above.
    for l2sp, dtype in ((False, None), (True, None), (False, "bfloat16")):
        other = step_cost(config, l2sp=l2sp, compute_dtype=dtype)["flops"]
        assert other != want["flops"], (l2sp, dtype)


def test_step_costs_are_analysed_once_per_step_and_shapes(tiny_config, monkeypatch):
    """A cell's seeds and grid points share one analysis (tracing it anew per run cost a study
    ~40 s); another batch size or another step is analysed on its own."""
    config = tiny_config(*L2SP_BF16)
    tasks = runner.build_tasks(config)
    model = runner.model_for(config, tasks.b.num_classes)
    variables = init_variables(model, 0, tasks.b.x_train)
    (phase,) = get_strategy("l2_sp").phases(model.layer_groups)
    plan = freeze.plan(variables["params"], phase.rules(model.layer_groups))
    optimizer = AdamW(clip_norm=1.0, weight_decay=1e-4)
    run_of = lambda step: SimpleNamespace(
        job=SimpleNamespace(x=tasks.b.x_train, variables=variables, reference=None),
        steps={"ft": step},
    )
    plain = run_of(PhaseStep(model, plan, optimizer))
    l2sp = run_of(PhaseStep(model, plan, optimizer, l2sp=True))

    traced = []
    init_state = PhaseStep.init_state
    monkeypatch.setattr(
        PhaseStep, "init_state", lambda self, *a: traced.append(self) or init_state(self, *a)
    )
    first = step_costs(plain, model, 8)
    assert len(traced) == 1
    misses = PROGRAMS.misses
    again = step_costs(run_of(PhaseStep(model, plan, optimizer)), model, 8)
    assert again == first and PROGRAMS.misses == misses and len(traced) == 1
    # A copy must not alias the cached value.
    again[0]["flops"] = -1.0
    assert step_costs(plain, model, 8) == first

    larger = step_costs(plain, model, 16)
    assert larger[0]["flops"] > first[0]["flops"]
    assert step_costs(l2sp, model, 8)[0]["flops"] != first[0]["flops"]
    x = jax.ShapeDtypeStruct((8, *tasks.b.x_train.shape[1:]), jnp.float32)
    y = jax.ShapeDtypeStruct((8,), jnp.int32)
    state = plain.steps["ft"].init_state(variables, hparams(), None, 0)
    want = freeze.cost(plain.steps["ft"].step_fn(), state, x, y, jax.random.key(0))
    assert first[0]["flops"] == want["flops"]
