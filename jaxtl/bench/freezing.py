"""What freezing buys: every strategy's step against its limits and the naive recipe.

For one model and batch, each freezing strategy's step (built by the engine's
:class:`jaxtl.train.PhaseStep`, so it is the step that trains) is timed next to:

* the **forward pass** alone (a head-only step can be no cheaper than inference);
* its **limit** for "freeze the first k groups": the inference forward of the frozen prefix plus
  the forward+backward of the trainable rest from cached features, each timed on its own;
* the **naive recipe** most code uses: ``optax.multi_transform`` over ``plan.labels`` with
  ``set_to_zero`` for frozen leaves, gradients of every parameter, every group in train mode.

It also times a linear-probe epoch with and without the feature cache, both through the
engine's compiled chunk loop (:meth:`jaxtl.train.PhaseStep.loop`).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtl import freeze, models
from jaxtl.bench.timing import (
    Stepper,
    interleaved_ms,
    moment_bytes,
    peak_device_bytes,
    step_time_ms,
    xla_cost,
)
from jaxtl.train import (
    FixedTx,
    PhaseStep,
    compute_features,
    cross_entropy,
    frozen_groups,
    get_strategy,
    hparams,
    stack_trees,
    variables_of,
)

PyTree = Any

# The optimizer of every strategy row: one fixed transformation, so rows differ only in the plan.
ADAM = optax.adam(1e-3)


@dataclasses.dataclass(frozen=True)
class Workload:
    """One model, its variables and one batch: what every strategy row is measured on."""

    net: nn.Module
    variables: dict[str, PyTree]
    x: jax.Array
    y: jax.Array
    key: jax.Array
    num_classes: int
    seed: int
    rounds: int
    warmup: int

    @functools.cached_property
    def forward(self) -> Callable[[], jax.Array]:
        """The inference forward (and loss) of the whole model, ready to call."""
        fn = jax.jit(lambda v, x, y: cross_entropy(self.net.apply(v, x, train=False), y).mean())
        return functools.partial(fn, self.variables, self.x, self.y)

    def forward_row(self) -> dict[str, Any]:
        ms = interleaved_ms({"forward": self.forward}, self.rounds, self.warmup)["forward"]
        fn = self.forward
        return {"ms": ms, **xla_cost(fn.func, *fn.args)}


def engine_step(net: nn.Module, plan: freeze.FreezePlan, start: int = 0) -> PhaseStep:
    """The engine's step for ``plan`` with :data:`ADAM` (BatchNorm policy "frozen")."""
    return PhaseStep(net, plan, FixedTx(ADAM), start=start)


def strategy_plans(
    groups: Sequence[str], params: PyTree
) -> list[tuple[str, int, freeze.FreezePlan, float]]:
    """(name, frozen groups k, plan, lr multiplier) for every strategy, most trainable last.

    Example:
      >>> [name for name, *_ in strategy_plans(net.layer_groups, params)]  # doctest: +SKIP
      ['all_but_head', 'freeze_first_1', 'full_ft', 'lp_ft/lp', 'lp_ft/ft']
    """
    out = []
    num = len(groups)
    for k in range(num - 1, -1, -1):
        if k == 0:
            name, strategy = "full_ft", get_strategy("full_ft")
        elif k == num - 1:
            name, strategy = "all_but_head", get_strategy("linear_probe")
        else:
            name, strategy = f"freeze_first_{k}", get_strategy("freeze_first_k", k=k)
        (phase,) = strategy.phases(groups)
        out.append((name, k, freeze.plan(params, phase.rules(groups)), phase.lr))
    for phase in get_strategy("lp_ft").phases(groups):
        plan = freeze.plan(params, phase.rules(groups))
        k = len(frozen_groups(plan, groups))
        out.append((f"lp_ft/{phase.name}", k, plan, phase.lr))
    return out


PEFT_STRATEGIES = ("bitfit", "norm_only", "lora")


def peft_plans(work: Workload) -> list[tuple[str, Workload, freeze.FreezePlan | str]]:
    """(name, workload, plan) for BitFit, norm-only and LoRA (rank 4 on every group below the
    head, on the model with adapters loaded with ``work``'s weights); instead of a plan, the
    one-line reason when the model lacks what a strategy trains (e.g. norm_only without norms).
    """
    groups = work.net.layer_groups
    out = []
    for name in PEFT_STRATEGIES:
        strategy = get_strategy(name)
        here = work
        if strategy.lora is not None:
            net = models.with_lora(work.net, **strategy.lora)
            init = models.init_variables(net, work.seed, work.x[:1])
            here = dataclasses.replace(
                work, net=net, variables=models.load_base(init, work.variables)
            )
        (phase,) = strategy.phases(groups)
        try:
            out.append((name, here, freeze.plan(here.variables["params"], phase.rules(groups))))
        except freeze.PlanError as err:
            out.append((name, here, str(err)))
    return out


def naive_step(
    model: nn.Module, plan: freeze.FreezePlan, tx: optax.GradientTransformation
) -> tuple[Callable[..., Any], Callable[[dict], PyTree]]:
    """The common recipe: grads of every param, frozen ones zeroed by ``multi_transform``.

    Returns:
      ``(step, init)``: the jitted ``step((params, stats, opt_state), x, y, rng)`` and
      ``init(variables)`` for its state.
    """
    transforms = {
        label: optax.set_to_zero()
        if setting is None
        else optax.chain(tx, optax.scale(setting["lr_mult"]))
        for label, setting in plan.label_settings.items()
    }
    naive_tx = optax.multi_transform(transforms, plan.labels)

    def step(state, x, y, rng):
        params, batch_stats, opt_state = state

        def loss_fn(params):
            logits, updates = model.apply(
                variables_of(params, batch_stats),
                x,
                train=True,
                rngs={"dropout": rng},
                mutable=["batch_stats"],
            )
            return cross_entropy(logits, y).mean(), updates.get("batch_stats", {})

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = naive_tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), new_stats, opt_state), loss

    def init(variables):
        params = jax.tree.map(jnp.copy, variables["params"])
        stats = jax.tree.map(jnp.copy, dict(variables.get("batch_stats", {})))
        return params, stats, naive_tx.init(params)

    return jax.jit(step, donate_argnums=0), init


def rest_grad(model: nn.Module, plan: freeze.FreezePlan, k: int) -> Callable[..., Any]:
    """Forward+backward of groups k.. from features, grads w.r.t. the trainable partition only."""
    inference = frozen_groups(plan, model.layer_groups)

    def fn(trainable, frozen, batch_stats, features, y, rng):
        def loss_fn(trainable):
            logits, updates = model.apply(
                variables_of(plan.merge(trainable, frozen), batch_stats),
                features,
                train=True,
                start=k,
                inference_groups=inference,
                rngs={"dropout": rng},
                mutable=["batch_stats"],
            )
            return cross_entropy(logits, y).mean(), updates.get("batch_stats", {})

        return jax.grad(loss_fn, has_aux=True)(trainable)

    return jax.jit(fn)


def _cost_fields(cost: dict[str, float]) -> dict[str, float | None]:
    return {
        "flops": cost["flops"],
        "bytes_accessed": cost["bytes_accessed"],
        "xla_argument_bytes": cost.get("argument_bytes"),
        "xla_output_bytes": cost.get("output_bytes"),
        "xla_temp_bytes": cost.get("temp_bytes"),
    }


def _measured_row(name, k, plan, params, step, stepper, ms, x_shape) -> dict[str, Any]:
    """A strategy row's measured fields: times, XLA cost of the engine's step, state bytes."""
    opt_state = stepper.state.opt_state
    return {
        **_base_row(name, k, plan, params),
        "step_ms": ms["step"],
        "forward_ms": ms["forward"],
        "x_forward": ms["step"] / ms["forward"],
        **_cost_fields(step.cost(stepper.state, x_shape)),
        "opt_state_bytes": freeze.tree_size(opt_state)["bytes"],
        "opt_state_moment_bytes": moment_bytes(opt_state),
        "device_peak_bytes": peak_device_bytes(),
    }


def _base_row(name: str, k: int, plan: freeze.FreezePlan, params: PyTree) -> dict[str, Any]:
    trainable = freeze.tree_size(plan.split(params)[0])
    return {
        "strategy": name,
        "k": k,
        "trainable_params": trainable["params"],
        "trainable_bytes": trainable["bytes"],
        "total_params": freeze.tree_size(params)["params"],
    }


def strategy_row(
    work: Workload,
    name: str,
    k: int,
    plan: freeze.FreezePlan,
    lr: float,
    include_naive: bool,
) -> dict[str, Any]:
    """One strategy's step timed with the forward, its limit (k > 0) and the naive recipe."""
    net, variables, x, y, key = work.net, work.variables, work.x, work.y, work.key
    params = variables["params"]
    phase = engine_step(net, plan)
    stepper = Stepper(
        jax.jit(phase.step_fn(), donate_argnums=0),
        phase.init_state(variables, hparams(phase_lr=lr), None, 0),
        x,
        y,
        key,
    )
    calls = {"step": stepper, "forward": work.forward}
    if k > 0:
        prefix = jax.jit(lambda v, x, k=k: net.apply(v, x, train=False, stop=k))
        features = prefix(variables, x)
        part, frozen = plan.split(params)
        stats = variables.get("batch_stats", {})
        calls["prefix"] = functools.partial(prefix, variables, x)
        calls["rest"] = functools.partial(
            rest_grad(net, plan, k), part, frozen, stats, features, y, key
        )
    naive = None
    if include_naive and not name.startswith("lp_ft/"):
        naive, init = naive_step(net, plan, optax.chain(ADAM, optax.scale(lr)))
        calls["naive"] = naive_stepper = Stepper(naive, init(variables), x, y, key)
    ms = interleaved_ms(calls, work.rounds, work.warmup)
    limit_ms = ms["prefix"] + ms["rest"] if k > 0 else None
    row = {
        **_measured_row(name, k, plan, params, phase, stepper, ms, x.shape),
        "prefix_forward_ms": ms.get("prefix"),
        "rest_fwd_bwd_ms": ms.get("rest"),
        "limit_ms": limit_ms,
        "x_limit": None if limit_ms is None else ms["step"] / limit_ms,
        "naive": None,
        "speedup_vs_naive": None,
    }
    if naive is not None:
        row["naive"] = {
            "step_ms": ms["naive"],
            **xla_cost(naive, naive_stepper.state, x, y, key),
            "opt_state_bytes": freeze.tree_size(naive_stepper.state[2])["bytes"],
        }
        row["speedup_vs_naive"] = ms["naive"] / ms["step"]
    return row


def linear_probe(
    work: Workload, lp_examples: int, lp_epochs: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The cached head step (a row) and one linear-probe epoch with and without the cache.

    Both epochs run the engine's compiled chunk loop over one slot, one call per epoch, on the
    same batches in the same order; the cached one starts at the head from the frozen prefix's
    features (computed once, timed on its own).
    """
    net, variables = work.net, work.variables
    groups = net.layer_groups
    batch_size = work.x.shape[0]
    k = len(groups) - 1
    params = variables["params"]
    (phase,) = get_strategy("linear_probe").phases(groups)
    plan = freeze.plan(params, phase.rules(groups))
    rng = np.random.default_rng(work.seed + 1)
    num_batches = lp_examples // batch_size
    n = num_batches * batch_size
    x_all = jnp.asarray(rng.random((n, *work.x.shape[1:]), np.float32))
    y_all = jnp.asarray(rng.integers(0, work.num_classes, n), jnp.int32)
    # A fixed batch order: both epochs see exactly the same batches.
    batch_idx = jnp.arange(n).reshape(1, num_batches, batch_size)
    keys = work.key[None]
    hp = hparams(phase_lr=phase.lr)
    steps = {"uncached": engine_step(net, plan), "cached": engine_step(net, plan, start=k)}
    states = {
        kind: stack_trees([s.init_state(variables, hp, None, 0)]) for kind, s in steps.items()
    }
    times: dict[str, list[float]] = {"uncached": [], "cached": []}

    def epoch(kind, inputs):
        args = (states[kind], inputs[None], y_all[None], batch_idx, np.int32(num_batches), keys)
        loop = steps[kind].loop(args)
        start = time.perf_counter()
        states[kind], _ = loop(*args)
        jax.block_until_ready(states[kind])
        times[kind].append(time.perf_counter() - start)

    epoch("uncached", x_all)
    start = time.perf_counter()
    features = jax.block_until_ready(
        compute_features(net, variables, x_all, stop=k, batch_size=batch_size)
    )
    feature_ms = 1e3 * (time.perf_counter() - start)
    epoch("cached", features)
    # Alternating epochs, for the same reason as interleaved_ms.
    for _ in range(lp_epochs):
        epoch("uncached", x_all)
        epoch("cached", features)
    uncached, cached = times["uncached"], times["cached"]
    uncached_ms, cached_ms = step_time_ms(uncached[1:]), step_time_ms(cached[1:])
    epoch_row = {
        "examples": n,
        "batches": num_batches,
        "uncached_first_epoch_ms": 1e3 * uncached[0],
        "uncached_epoch_ms": uncached_ms,
        "feature_cache_ms": feature_ms,
        "cached_first_epoch_ms": 1e3 * cached[0],
        "cached_epoch_ms": cached_ms,
        "speedup": uncached_ms / cached_ms,
    }

    head = steps["cached"]
    feats = features[:batch_size]
    stepper = Stepper(
        jax.jit(head.step_fn(), donate_argnums=0),
        head.init_state(variables, hp, None, 0),
        feats,
        y_all[:batch_size],
        work.key,
    )
    ms = interleaved_ms({"step": stepper, "forward": work.forward}, work.rounds, work.warmup)
    row = {
        **_measured_row("linear_probe_cached", k, plan, params, head, stepper, ms, feats.shape),
        "limit_ms": None,
        "prefix_forward_ms": None,
        "rest_fwd_bwd_ms": None,
        "x_limit": None,
        "naive": None,
        "speedup_vs_naive": None,
    }
    return row, epoch_row
