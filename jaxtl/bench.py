"""What freezing buys in wall-clock time, FLOPs and memory: ``jaxtl bench``.

For one model and batch, every freezing strategy's compiled train step is timed next to two
references measured in the same process:

* the **limit** it should approach: the forward pass alone (a head-only step can be no cheaper),
  and, for "freeze the first k groups", the inference forward of the frozen prefix plus the
  forward+backward of the trainable rest from cached features, each timed on its own;
* the **naive recipe** most code uses: ``optax.multi_transform`` with ``set_to_zero`` over a label
  tree, gradients taken w.r.t. every parameter, every group in train mode.

It also times a linear-probe epoch with and without the feature cache, and 8 seeds of each
embedded-study MLP step (MNIST and MNIST-1D inputs) under ``jax.vmap`` against one seed, next to
the floor no implementation gets under: all seeds' XLA FLOPs at the device's matmul peak,
measured in the same process. Each comparison is a named check with a threshold, printed as
PASS/FAIL and stored in the JSON with the numbers behind it; the JSON file is rewritten after
every measurement, so a run cut short keeps what it measured.

Example:
  $ jaxtl bench --size cpu --json bench.json
  $ python scripts/bench_freeze.py --size gpu --json bench_gpu.json
"""

from __future__ import annotations

import argparse
import ast
import datetime
import functools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtl import freeze, models
from jaxtl.suggest import did_you_mean
from jaxtl.train import (
    build_step,
    compute_features,
    create_train_state,
    frozen_groups,
    get_strategy,
    make_train_loop,
    make_train_step,
    variables_of,
)

PyTree = Any

DTYPES = ("float32", "bfloat16")

# Presets. "gpu" is the reference setting (ResNet-18, CIFAR stem, batch 256 of 32x32x3, fp32),
# the one scripts/gpu_check.sh and scripts/torch_peer.py compare. "cpu" finishes in about a
# minute and a half on 2 cores: XLA's CPU convolutions are slow, so the CNN is small and the
# batch short, and it takes more steps because a shared 2-core host makes single steps noisy.
SIZES: dict[str, dict[str, Any]] = {
    "cpu": {
        "model": "cnn",
        "model_options": {"widths": (16, 32)},
        "batch_size": 32,
        "image_size": 16,
        "dtype": "float32",
        "steps": 50,
        "lp_examples": 2048,
    },
    "gpu": {
        "model": "resnet18",
        "model_options": {},
        "batch_size": 256,
        "image_size": 32,
        "dtype": "float32",
        "steps": 20,
        "lp_examples": 10240,
    },
}

# Thresholds of the checks (see the module docstring); a ratio beyond one is a FAIL, reported.
HEAD_ONLY_VS_FORWARD = 1.15
FREEZE_FIRST_K_VS_LIMIT = 1.15
CACHED_EPOCH_SPEEDUP = 20.0
SEEDS_VMAPPED_RATIO = 2.0
ADAM_STATE_PER_PARAM = 2

# The embedded study's models (models.create("mlp", 5) defaults) and batch, one per input the
# study trains on: mnist5k digits (28x28x1) and MNIST-1D (40 samples).
STUDY_MODEL = ("mlp", 5)
STUDY_INPUTS: dict[str, tuple[int, ...]] = {"mnist5k": (28, 28, 1), "mnist1d": (40,)}
STUDY_BATCH = 64


def _choice_error(what: str, value: Any, choices: Sequence[str]) -> ValueError:
    return ValueError(
        f"{what} {value!r}{did_you_mean(value, choices)}; choices: {', '.join(choices)}"
    )


def machine_info() -> dict[str, Any]:
    """Where the numbers come from: backend, device, CPUs, library versions and the date.

    Example:
      >>> machine_info()["platform"] in ("cpu", "gpu", "tpu")
      True
    """
    device = jax.devices()[0]
    return {
        "platform": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": _jaxlib_version(),
        "flax": flax.__version__,
        "optax": optax.__version__,
        # None is XLA's default: on GPUs fp32 convolutions and dots may use TF32.
        "default_matmul_precision": jax.config.jax_default_matmul_precision,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _jaxlib_version() -> str | None:
    try:
        import jaxlib

        return jaxlib.__version__
    except ImportError:
        return None


def _peak_device_bytes() -> int | None:
    # CPU backends return None; GPUs report the allocator's process-wide peak.
    stats = jax.devices()[0].memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return int(stats["peak_bytes_in_use"])


def _interleaved_ms(
    calls: Mapping[str, Callable[[], Any]], steps: int, warmup: int
) -> dict[str, float]:
    """Median wall time in ms of each call, every call waited for (the first ones compile).

    The calls take turns, one of each per round, so a ratio between two of them is measured
    under the same machine load: on a shared machine, timing one after the other lets a
    neighbour's job land on just one side of the ratio.
    """
    for call in calls.values():
        for _ in range(warmup):
            jax.block_until_ready(call())
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(steps):
        for name, call in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(call())
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


class _Stepper:
    """Calls ``step(state, *args) -> (state, aux)`` repeatedly, feeding back the donated state."""

    def __init__(self, step: Callable[..., Any], state: PyTree, *args: Any):
        self.step, self.state, self.args = step, state, args

    def __call__(self) -> PyTree:
        self.state, aux = self.step(self.state, *self.args)
        return self.state, aux


def _cost(fn: Callable[..., Any], *args: Any) -> dict[str, float]:
    out = freeze.cost(fn, *args)
    return {
        "flops": out["flops"],
        "bytes_accessed": out["bytes_accessed"],
        "xla_argument_bytes": out.get("argument_bytes"),
        "xla_output_bytes": out.get("output_bytes"),
        "xla_temp_bytes": out.get("temp_bytes"),
    }


def _moment_bytes(opt_state: PyTree) -> int:
    """Bytes of the optimizer state's per-parameter arrays (scalar step counts left out)."""
    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(opt_state) if np.ndim(x) > 0)


def _loss(logits: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y).mean()


def _naive_step(model: Any, plan: freeze.FreezePlan, tx: optax.GradientTransformation):
    """The common recipe: grads of every param, frozen ones zeroed by multi_transform."""
    labels = jax.tree.map(lambda frozen: "frozen" if frozen else "trainable", plan.frozen_mask)
    naive_tx = optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()}, labels)

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
            return _loss(logits, y), updates.get("batch_stats", {})

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = naive_tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), new_stats, opt_state), loss

    def init(variables):
        params = jax.tree.map(jnp.copy, variables["params"])
        stats = jax.tree.map(jnp.copy, dict(variables.get("batch_stats", {})))
        return params, stats, naive_tx.init(params)

    return jax.jit(step, donate_argnums=0), init


def _rest_grad(model: Any, plan: freeze.FreezePlan, k: int):
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
            return _loss(logits, y), updates.get("batch_stats", {})

        return jax.grad(loss_fn, has_aux=True)(trainable)

    return jax.jit(fn)


def _strategy_plans(
    groups: Sequence[str], params: PyTree
) -> list[tuple[str, int, freeze.FreezePlan, float]]:
    """(name, frozen groups k, plan, lr multiplier) for every strategy, most trainable last."""
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


def _check(name: str, value: float | None, op: str, threshold: float, note: str) -> dict:
    passed = (
        value is not None
        and {
            "<=": value <= threshold,
            ">=": value >= threshold,
            "==": value == threshold,
        }[op]
    )
    return {
        "name": name,
        "value": value,
        "op": op,
        "threshold": threshold,
        "passed": bool(passed),
        "note": note,
    }


def run_benchmark(
    model: str = "cnn",
    *,
    batch_size: int = 32,
    image_size: int = 16,
    channels: int = 3,
    num_classes: int = 10,
    dtype: str = "float32",
    steps: int = 20,
    warmup: int = 3,
    model_options: Mapping[str, Any] | None = None,
    lp_examples: int = 2048,
    lp_epochs: int = 3,
    num_seeds: int = 8,
    include_naive: bool = True,
    include_seeds: bool = True,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    on_partial: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Times every freezing strategy's train step against its limits and the naive recipe.

    Args:
      model: a name from ``jaxtl.models.names()``.
      batch_size: examples per step.
      image_size: height and width of the (random) input images.
      channels: input channels.
      num_classes: outputs of the head.
      dtype: compute dtype, "float32" or "bfloat16" (parameters and optimizer state stay fp32).
      steps: timed steps per measurement (the median is reported).
      warmup: untimed steps first (the first one compiles).
      model_options: extra ``models.create`` options, e.g. ``{"widths": (16, 32)}``.
      lp_examples: examples in one linear-probe epoch (rounded down to whole batches).
      lp_epochs: timed linear-probe epochs after the first (which compiles / fills the cache).
      num_seeds: seeds stacked under ``jax.vmap`` for the study-model check.
      include_naive: also time the naive ``multi_transform`` recipe for each strategy.
      include_seeds: run the vmapped-seeds measurement.
      seed: seeds the data and the parameter init.
      log: called with one line per finished measurement (progress); None is silent.
      on_partial: called with the result so far after each measurement ("complete" False until
        the last), so a run that is cut short (a device lease, a timeout) keeps what it measured.

    Returns:
      A JSON-ready dict: "machine", "config", "forward", "rows" (one per strategy step),
      "linear_probe_epoch", "seeds_vmapped" (one entry per study input, None when skipped),
      "matmul_peak_flops_per_s", "checks" and "complete".

    Example:
      >>> result = run_benchmark("mlp", batch_size=8, image_size=8, steps=2, warmup=1,
      ...                        model_options={"widths": (16,)}, lp_examples=16, lp_epochs=1,
      ...                        num_seeds=2)
      >>> all(c["name"] for c in result["checks"])
      True
    """
    if dtype not in DTYPES:
        raise _choice_error("unknown dtype", dtype, DTYPES)
    for what, value in (
        ("batch_size", batch_size),
        ("image_size", image_size),
        ("channels", channels),
        ("num_classes", num_classes),
        ("steps", steps),
        ("lp_epochs", lp_epochs),
        ("num_seeds", num_seeds),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{what} must be an int >= 1, got {value!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
        raise ValueError(f"warmup must be an int >= 1 (the first call compiles), got {warmup!r}")
    if lp_examples < batch_size:
        raise ValueError(
            f"lp_examples={lp_examples} must be >= batch_size={batch_size} (one whole batch)"
        )
    say = log or (lambda line: None)
    options = dict(model_options or {})
    result: dict[str, Any] = {
        "machine": machine_info(),
        "config": {
            "model": model,
            "model_options": {
                k: list(v) if isinstance(v, tuple) else v for k, v in options.items()
            },
            "batch_size": batch_size,
            "input_shape": [image_size, image_size, channels],
            "num_classes": num_classes,
            "dtype": dtype,
            "optimizer": "adam(1e-3)",
            "steps": steps,
            "warmup": warmup,
            "seed": seed,
        },
        "complete": False,
    }
    report_partial = on_partial or (lambda partial: None)
    # First: it is small and independent of the model, so a run cut short still has it.
    if include_seeds:
        peak = _matmul_peak_flops_per_s()
        result["matmul_peak_flops_per_s"] = peak
        result["seeds_vmapped"] = [
            _seeds_vmapped(name, shape, num_seeds, steps, warmup, seed, peak, say)
            for name, shape in STUDY_INPUTS.items()
        ]
    else:
        result["seeds_vmapped"] = None
    report_partial(result)
    net = models.create(model, num_classes, dtype=jnp.dtype(dtype), **options)
    groups = net.layer_groups
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.random((batch_size, image_size, image_size, channels), np.float32))
    y = jnp.asarray(rng.integers(0, num_classes, batch_size), jnp.int32)
    key = jax.random.key(seed)
    variables = models.init_variables(net, seed, x[:1])
    params = variables["params"]
    tx = optax.adam(1e-3)
    total_params = freeze.tree_size(params)

    forward = jax.jit(lambda v, x, y: _loss(net.apply(v, x, train=False), y))
    run_forward = lambda: forward(variables, x, y)
    forward_ms = _interleaved_ms({"forward": run_forward}, steps, warmup)["forward"]
    forward_row = {"ms": forward_ms, **_cost(forward, variables, x, y)}
    say(f"forward: {forward_ms:.2f} ms")
    result["config"]["layer_groups"] = list(groups)
    result["forward"] = forward_row
    result["rows"] = rows = []
    report_partial(result)

    # Most frozen first: the device's peak is process-wide, so with the footprint growing row
    # by row the peak read after a row bounds that row's step (and its naive twin) from above.
    for name, k, plan, lr in _strategy_plans(groups, params):
        phase_tx = optax.chain(tx, optax.scale(lr))
        step = make_train_step(net, plan, phase_tx)
        stepper = _Stepper(step, create_train_state(variables, plan, phase_tx), x, y, key)
        calls = {"step": stepper, "forward": run_forward}
        if k > 0:
            prefix = jax.jit(lambda v, x, k=k: net.apply(v, x, train=False, stop=k))
            features = prefix(variables, x)
            rest = _rest_grad(net, plan, k)
            part, frozen = plan.split(params)
            stats = variables.get("batch_stats", {})
            calls["prefix"] = functools.partial(prefix, variables, x)
            calls["rest"] = functools.partial(rest, part, frozen, stats, features, y, key)
        naive = None
        if include_naive and not name.startswith("lp_ft/"):
            naive, init = _naive_step(net, plan, phase_tx)
            calls["naive"] = naive_stepper = _Stepper(naive, init(variables), x, y, key)
        ms = _interleaved_ms(calls, steps, warmup)
        opt_state = stepper.state.opt_state
        trainable = freeze.tree_size(plan.split(params)[0])
        limit_ms = ms["prefix"] + ms["rest"] if k > 0 else None
        row = {
            "strategy": name,
            "k": k,
            "trainable_params": trainable["params"],
            "trainable_bytes": trainable["bytes"],
            "total_params": total_params["params"],
            "step_ms": ms["step"],
            "forward_ms": ms["forward"],
            "x_forward": ms["step"] / ms["forward"],
            **_cost(step, stepper.state, x, y, key),
            "opt_state_bytes": freeze.tree_size(opt_state)["bytes"],
            "opt_state_moment_bytes": _moment_bytes(opt_state),
            "device_peak_bytes": _peak_device_bytes(),
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
                **_cost(naive, naive_stepper.state, x, y, key),
                "opt_state_bytes": freeze.tree_size(naive_stepper.state[2])["bytes"],
            }
            row["speedup_vs_naive"] = ms["naive"] / ms["step"]
        rows.append(row)
        naive_note = "" if naive is None else f", naive {ms['naive']:.2f} ms"
        say(f"{name}: {ms['step']:.2f} ms/step, forward {ms['forward']:.2f} ms{naive_note}")
        report_partial(result)

    cached_row, lp_epoch = _linear_probe(
        net,
        variables,
        groups,
        tx,
        batch_size,
        image_size,
        channels,
        num_classes,
        lp_examples,
        lp_epochs,
        steps,
        warmup,
        seed,
        run_forward,
        say,
    )
    rows.append(cached_row)
    # Measured most frozen first (see the device-peak note); reported from full_ft down.
    rows.sort(key=lambda r: ("/" in r["strategy"], r["strategy"] == "linear_probe_cached", r["k"]))
    result["linear_probe_epoch"] = lp_epoch
    result["checks"] = _checks(rows, lp_epoch, result["seeds_vmapped"])
    result["complete"] = True
    report_partial(result)
    return result


def _linear_probe(
    net,
    variables,
    groups,
    tx,
    batch_size,
    image_size,
    channels,
    num_classes,
    lp_examples,
    lp_epochs,
    steps,
    warmup,
    seed,
    run_forward,
    say,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The cached head step (a row) and one linear-probe epoch with and without the cache."""
    k = len(groups) - 1
    params = variables["params"]
    (phase,) = get_strategy("linear_probe").phases(groups)
    plan = freeze.plan(params, phase.rules(groups))
    rng = np.random.default_rng(seed + 1)
    num_batches = lp_examples // batch_size
    n = num_batches * batch_size
    x_all = jnp.asarray(rng.random((n, image_size, image_size, channels), np.float32))
    y_all = jnp.asarray(rng.integers(0, num_classes, n), jnp.int32)
    # A fixed batch order: both epochs see exactly the same batches.
    batch_idx = jnp.arange(n).reshape(num_batches, batch_size)
    key = jax.random.key(seed)

    uncached_loop = make_train_loop(net, plan, tx)
    cached_loop = make_train_loop(net, plan, tx, start=k)
    states = {"uncached": create_train_state(variables, plan, tx)}
    times: dict[str, list[float]] = {"uncached": [], "cached": []}

    def epoch(kind, inputs):
        loop = uncached_loop if kind == "uncached" else cached_loop
        start = time.perf_counter()
        states[kind], _ = loop(states[kind], inputs, y_all, batch_idx, key)
        jax.block_until_ready(states[kind])
        times[kind].append(1e3 * (time.perf_counter() - start))

    epoch("uncached", x_all)
    start = time.perf_counter()
    features = jax.block_until_ready(
        compute_features(net, variables, x_all, stop=k, batch_size=batch_size)
    )
    feature_ms = 1e3 * (time.perf_counter() - start)
    states["cached"] = create_train_state(variables, plan, tx)
    epoch("cached", features)
    # Alternating epochs, for the same reason as _interleaved_ms.
    for _ in range(lp_epochs):
        epoch("uncached", x_all)
        epoch("cached", features)
    uncached, cached = times["uncached"], times["cached"]
    uncached_ms, cached_ms = statistics.median(uncached[1:]), statistics.median(cached[1:])
    epoch_row = {
        "examples": n,
        "batches": num_batches,
        "uncached_first_epoch_ms": uncached[0],
        "uncached_epoch_ms": uncached_ms,
        "feature_cache_ms": feature_ms,
        "cached_first_epoch_ms": cached[0],
        "cached_epoch_ms": cached_ms,
        "speedup": uncached_ms / cached_ms,
    }
    say(f"linear probe epoch: {uncached_ms:.1f} ms uncached, {cached_ms:.2f} ms cached")

    step = make_train_step(net, plan, tx, start=k)
    feats = features[:batch_size]
    stepper = _Stepper(
        step, create_train_state(variables, plan, tx), feats, y_all[:batch_size], key
    )
    ms = _interleaved_ms({"step": stepper, "forward": run_forward}, steps, warmup)
    opt_state = stepper.state.opt_state
    trainable = freeze.tree_size(plan.split(params)[0])
    row = {
        "strategy": "linear_probe_cached",
        "k": k,
        "trainable_params": trainable["params"],
        "trainable_bytes": trainable["bytes"],
        "total_params": freeze.tree_size(params)["params"],
        "step_ms": ms["step"],
        "forward_ms": ms["forward"],
        "x_forward": ms["step"] / ms["forward"],
        **_cost(step, stepper.state, feats, y_all[:batch_size], key),
        "opt_state_bytes": freeze.tree_size(opt_state)["bytes"],
        "opt_state_moment_bytes": _moment_bytes(opt_state),
        "device_peak_bytes": _peak_device_bytes(),
        "limit_ms": None,
        "prefix_forward_ms": None,
        "rest_fwd_bwd_ms": None,
        "x_limit": None,
        "naive": None,
        "speedup_vs_naive": None,
    }
    return row, epoch_row


def _matmul_peak_flops_per_s(size: int | None = None, repeats: int = 10) -> float:
    """FLOP/s of one large fp32 matrix product at default precision: this device's usable peak.

    The vmapped-seeds check compares against it: ``num_seeds`` seeds are ``num_seeds`` times the
    arithmetic of one, so on a device that one seed already keeps busy no batching can bring the
    ratio under ``num_seeds * flops / peak / one_seed_time``.
    """
    size = size or (4096 if jax.default_backend() in ("gpu", "tpu") else 1024)
    a = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(matmul(a, a))
    # The fastest repeat, not the median: a peak, so the bound derived from it stays a bound.
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(matmul(a, a))
        seconds.append(time.perf_counter() - start)
    return 2 * size**3 / min(seconds)


def _seeds_vmapped(
    data: str,
    input_shape: tuple[int, ...],
    num_seeds: int,
    steps: int,
    warmup: int,
    seed: int,
    peak_flops_per_s: float,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """A study MLP's full fine-tune step: ``num_seeds`` stacked under vmap vs one seed."""
    net = models.create(*STUDY_MODEL)
    rng = np.random.default_rng(seed + 2)
    xs = jnp.asarray(rng.random((num_seeds, STUDY_BATCH, *input_shape), np.float32))
    ys = jnp.asarray(rng.integers(0, STUDY_MODEL[1], (num_seeds, STUDY_BATCH)), jnp.int32)
    keys = jax.random.split(jax.random.key(seed), num_seeds)
    tx = optax.adam(1e-3)
    (phase,) = get_strategy("full_ft").phases(net.layer_groups)
    states = []
    for s in range(num_seeds):
        variables = models.init_variables(net, seed + s, xs[0, :1])
        plan = freeze.plan(variables["params"], phase.rules(net.layer_groups))
        states.append(create_train_state(variables, plan, tx))
    step = build_step(net, plan, tx)
    # Stacking copies, so donating the one-seed state below leaves the stack intact.
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
    one = _Stepper(jax.jit(step, donate_argnums=0), states[0], xs[0], ys[0], keys[0])
    many = _Stepper(jax.jit(jax.vmap(step), donate_argnums=0), stacked, xs, ys, keys)
    ms = _interleaved_ms({"one": one, "many": many}, steps, warmup)
    # After the timed calls, so the cost analysis reuses their compiled program.
    flops = _cost(one.step, one.state, xs[0], ys[0], keys[0])["flops"]
    one_ms, many_ms = ms["one"], ms["many"]
    # The best any implementation could do here: all seeds' arithmetic at the matmul peak.
    bound_ms = num_seeds * flops / peak_flops_per_s * 1e3
    say(
        f"{num_seeds} seeds vmapped ({data}): {many_ms:.2f} ms vs one seed {one_ms:.2f} ms"
        f" (compute bound {bound_ms:.2f} ms)"
    )
    return {
        "data": data,
        "model": STUDY_MODEL[0],
        "num_classes": STUDY_MODEL[1],
        "input_shape": list(input_shape),
        "batch_size": STUDY_BATCH,
        "num_seeds": num_seeds,
        "one_seed_ms": one_ms,
        "vmapped_ms": many_ms,
        "ratio": many_ms / one_ms,
        "one_seed_flops": flops,
        "one_seed_flops_per_s": flops / (one_ms * 1e-3),
        "vmapped_flops_per_s": num_seeds * flops / (many_ms * 1e-3),
        "compute_bound_ms": bound_ms,
        "ratio_lower_bound": max(1.0, bound_ms / one_ms),
    }


def _checks(rows, lp_epoch, seeds_results) -> list[dict[str, Any]]:
    by_name = {r["strategy"]: r for r in rows}
    head = by_name["all_but_head"]
    out = [
        _check(
            "head_only_step_vs_forward",
            head["x_forward"],
            "<=",
            HEAD_ONLY_VS_FORWARD,
            "all-but-head step / inference forward of the whole model, timed alternately",
        )
    ]
    for row in rows:
        if row["x_limit"] is not None and not row["strategy"].startswith("lp_ft/"):
            out.append(
                _check(
                    f"{row['strategy']}_step_vs_limit",
                    row["x_limit"],
                    "<=",
                    FREEZE_FIRST_K_VS_LIMIT,
                    f"step / (prefix forward {row['prefix_forward_ms']:.3g} ms"
                    f" + rest fwd+bwd {row['rest_fwd_bwd_ms']:.3g} ms)",
                )
            )
    out.append(
        _check(
            "cached_linear_probe_epoch_speedup",
            lp_epoch["speedup"],
            ">=",
            CACHED_EPOCH_SPEEDUP,
            f"uncached / cached epoch over {lp_epoch['examples']} examples",
        )
    )
    for row in rows:
        out.append(
            _check(
                f"{row['strategy']}_adam_state_per_trainable_byte",
                row["opt_state_moment_bytes"] / row["trainable_bytes"],
                "==",
                ADAM_STATE_PER_PARAM,
                "Adam mu+nu bytes / trainable param bytes (scalar step counts excluded)",
            )
        )
    for seeds in seeds_results or ():
        out.append(
            _check(
                f"{seeds['num_seeds']}_seeds_vmapped_vs_one_{seeds['data']}",
                seeds["ratio"],
                "<=",
                SEEDS_VMAPPED_RATIO,
                f"{seeds['model']} on {seeds['data']}, batch {seeds['batch_size']} per seed;"
                f" floor {seeds['ratio_lower_bound']:.2f}: all seeds' FLOPs at this device's"
                " measured matmul peak",
            )
        )
    return out


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def format_report(result: Mapping[str, Any]) -> str:
    """The printed form of :func:`run_benchmark`'s result: tables and one line per check.

    Example:
      >>> print(format_report(run_benchmark("mlp", steps=2, warmup=1)))  # doctest: +SKIP
    """
    m, c = result["machine"], result["config"]
    lines = [
        (
            f"jaxtl bench: {c['model']} {c['model_options']} batch {c['batch_size']}"
            f" input {'x'.join(map(str, c['input_shape']))} {c['dtype']}, median of"
            f" {c['steps']} steps after {c['warmup']} warm-up"
        ),
        (
            f"machine: {m['platform']} / {m['device_kind']} / {m['cpu_count']} CPUs /"
            f" jax {m['jax']} / {m['date']}"
        ),
        (
            f"forward only (inference): {result['forward']['ms']:.2f} ms,"
            f" {result['forward']['flops']:.3g} flops"
        ),
        "",
    ]
    table = [
        {
            "strategy": r["strategy"],
            "k": r["k"],
            "trainable": r["trainable_params"],
            "ms/step": _fmt(r["step_ms"]),
            "x fwd": _fmt(r["x_forward"]),
            "x limit": _fmt(r["x_limit"]),
            "flops": _fmt(r["flops"], ".3g"),
            "bytes": _fmt(r["bytes_accessed"], ".3g"),
            "opt-state bytes": r["opt_state_bytes"],
            "naive ms": _fmt(r["naive"] and r["naive"]["step_ms"]),
            "x vs naive": _fmt(r["speedup_vs_naive"]),
        }
        for r in result["rows"]
    ]
    lines.append(freeze.format_table(table, list(table[0])))
    lp = result["linear_probe_epoch"]
    lines += [
        "",
        (
            f"linear probe, one epoch of {lp['examples']} examples: uncached"
            f" {lp['uncached_epoch_ms']:.1f} ms, cached {lp['cached_epoch_ms']:.2f} ms"
            f" (+ {lp['feature_cache_ms']:.1f} ms once to fill the cache): {lp['speedup']:.1f}x"
        ),
    ]
    if result["seeds_vmapped"]:
        lines.append(
            f"matmul peak of this device (fp32, default precision):"
            f" {result['matmul_peak_flops_per_s'] / 1e9:.0f} GFLOP/s"
        )
    for seeds in result["seeds_vmapped"] or ():
        lines.append(
            f"{seeds['num_seeds']} seeds vmapped ({seeds['model']} on {seeds['data']}, batch"
            f" {seeds['batch_size']}): {seeds['vmapped_ms']:.2f} ms vs {seeds['one_seed_ms']:.2f}"
            f" ms for one seed: {seeds['ratio']:.2f}x (floor at the matmul peak"
            f" {seeds['ratio_lower_bound']:.2f}x; one seed runs at"
            f" {seeds['one_seed_flops_per_s'] / 1e9:.0f} GFLOP/s, {seeds['num_seeds']} at"
            f" {seeds['vmapped_flops_per_s'] / 1e9:.0f})"
        )
    lines.append("")
    for check in result["checks"]:
        value = _fmt(check["value"], ".3g")
        lines.append(
            f"{'PASS' if check['passed'] else 'FAIL'}  {check['name']}: {value}"
            f" {check['op']} {check['threshold']:g}  ({check['note']})"
        )
    if "peer" in result:
        lines += ["", format_comparison(result, result["peer"])]
    return "\n".join(lines)


def format_comparison(result: Mapping[str, Any], peer: Mapping[str, Any]) -> str:
    """Side-by-side ms/step of jaxtl's steps and a peer's (``scripts/torch_peer.py``), matched by k.

    Example:
      >>> print(format_comparison(result, json.load(open("torch.json"))))  # doctest: +SKIP
    """
    ours = {
        r["k"]: r
        for r in result["rows"]
        if not r["strategy"].startswith(("lp_ft/", "linear_probe"))
    }
    table = []
    for p in peer["rows"]:
        if p["strategy"] == "forward":
            mine = result["forward"]["ms"]
        else:
            mine = ours[p["k"]]["step_ms"] if p["k"] in ours else None
        table.append(
            {
                "strategy": p["strategy"],
                "k": "-" if p.get("k") is None else p["k"],
                "jaxtl ms": _fmt(mine),
                f"{peer.get('name', 'peer')} ms": _fmt(p["step_ms"]),
                "peer / jaxtl": _fmt(None if mine is None else p["step_ms"] / mine),
            }
        )
    return freeze.format_table(table, list(table[0]))


def _model_option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE such as widths=16,32, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.strip(), tuple(value) if isinstance(value, list) else value


def build_parser() -> argparse.ArgumentParser:
    """The ``jaxtl bench`` / ``scripts/bench_freeze.py`` command line."""
    parser = argparse.ArgumentParser(
        prog="jaxtl bench",
        description="Time every freezing strategy's train step against its limits and the"
        " naive multi_transform recipe.",
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu", help="preset (default cpu)")
    parser.add_argument("--model", choices=models.names(), help="overrides the preset's model")
    parser.add_argument(
        "--model-option",
        action="append",
        type=_model_option,
        default=[],
        metavar="KEY=VALUE",
        help="model option, e.g. widths=16,32 (repeatable)",
    )
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--dtype", choices=DTYPES)
    parser.add_argument("--steps", type=int, help="timed steps, median reported (preset: 50/20)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--lp-examples", type=int, help="examples in one linear-probe epoch")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive recipe")
    parser.add_argument("--no-seeds", action="store_true", help="skip the vmapped-seeds check")
    parser.add_argument("--peer", metavar="FILE", help="JSON from scripts/torch_peer.py to compare")
    parser.add_argument("--json", metavar="FILE", help="write the full result here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark from command-line arguments, prints the report, writes --json.

    Returns:
      0 (failed checks are reported, not raised: a slow machine is a finding, not an error).

    Example:
      >>> main(["--size", "cpu", "--json", "/tmp/bench.json"])  # doctest: +SKIP
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    peer = None
    if args.peer:
        # Read before the run: a bad path should cost a second, not a benchmark.
        try:
            with open(args.peer) as f:
                peer = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            parser.error(f"--peer {args.peer}: {e}")
    if args.json:
        # Checked first too: the file is written after the first measurement.
        try:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        except OSError as e:
            parser.error(f"--json {args.json}: {e}")
        if os.path.isdir(args.json):
            parser.error(f"--json {args.json} is a directory; give a file path such as bench.json")
    preset = SIZES[args.size]
    options = dict(preset["model_options"]) if args.model in (None, preset["model"]) else {}
    options.update(dict(args.model_option))
    start = time.perf_counter()
    result = run_benchmark(
        args.model or preset["model"],
        batch_size=args.batch_size or preset["batch_size"],
        image_size=args.image_size or preset["image_size"],
        dtype=args.dtype or preset["dtype"],
        steps=args.steps or preset["steps"],
        warmup=args.warmup,
        model_options=options,
        lp_examples=args.lp_examples or preset["lp_examples"],
        include_naive=not args.no_naive,
        include_seeds=not args.no_seeds,
        log=lambda line: print(line, file=sys.stderr, flush=True),
        on_partial=functools.partial(_write_json, args.json) if args.json else None,
    )
    result["config"]["size"] = args.size
    result["wall_time_s"] = time.perf_counter() - start
    if peer is not None:
        result["peer"] = peer
    print(format_report(result))
    print(f"\nwall time: {result['wall_time_s']:.1f} s")
    if args.json:
        _write_json(args.json, result)
    return 0


def _write_json(path: str, result: Mapping[str, Any]) -> None:
    # Write-then-rename: a run killed mid-write leaves the previous complete file, never half.
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
