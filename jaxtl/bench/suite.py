"""The whole benchmark in one call: every measurement in order, a snapshot after each.

Order: the seeds checks first (small, independent of the chosen model, and what decides how
the engine batches seeds), then the NNX step, then the chosen model's forward, strategy rows and linear-probe
epoch. After every measurement ``on_partial`` gets the result so far, so a run cut short (a
device lease, a timeout) keeps what it measured.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtl import models
from jaxtl.bench import checks, freezing, nnx_step, seeds
from jaxtl.bench.timing import machine_info, matmul_peak_flops_per_s
from jaxtl.suggest import did_you_mean

DTYPES = ("float32", "bfloat16")

# Presets. "gpu" is the reference setting (ResNet-18, CIFAR stem, batch 256 of 32x32x3, fp32),
# the one scripts/gpu_check.sh and scripts/torch_peer.py compare. "cpu" finishes in about a
# minute on 2 idle cores (2-3 on a busy host): XLA's CPU convolutions are slow, so the CNN is
# small and the batch short, and it takes more steps because a shared host makes steps noisy.
# loop_steps is K of the engine's loop in the seeds check (the study's steps_per_call is 50;
# fewer on CPU keeps the check inside the time budget at the same per-step cost).
SIZES: dict[str, dict[str, Any]] = {
    "cpu": {
        "model": "cnn",
        "model_options": {"widths": (16, 32)},
        "batch_size": 32,
        "image_size": 16,
        "dtype": "float32",
        "steps": 50,
        "lp_examples": 2048,
        "loop_steps": 10,
        "seed_rounds": 5,
    },
    "gpu": {
        "model": "resnet18",
        "model_options": {},
        "batch_size": 256,
        "image_size": 32,
        "dtype": "float32",
        "steps": 20,
        "lp_examples": 10240,
        "loop_steps": 50,
        "seed_rounds": 10,
    },
}


def _choice_error(what: str, value: Any, choices: Sequence[str]) -> ValueError:
    return ValueError(
        f"{what} {value!r}{did_you_mean(value, choices)}; choices: {', '.join(choices)}"
    )


def _validate(
    dtype: str, study_models: Sequence[str], warmup: int, lp_examples: int, **counts: int
) -> None:
    """One-line ValueErrors for arguments no measurement could use, before any is made."""
    if dtype not in DTYPES:
        raise _choice_error("unknown dtype", dtype, DTYPES)
    for name in study_models:
        if name not in seeds.STUDY_MODELS:
            raise _choice_error("unknown study model", name, tuple(seeds.STUDY_MODELS))
    for what, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{what} must be an int >= 1, got {value!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
        raise ValueError(f"warmup must be an int >= 1 (the first call compiles), got {warmup!r}")
    if lp_examples < counts["batch_size"]:
        raise ValueError(
            f"lp_examples={lp_examples} must be >= batch_size={counts['batch_size']} (one whole"
            " batch)"
        )


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
    engine_seeds: int = 5,
    loop_steps: int = 10,
    seed_rounds: int = 5,
    seed_models: Sequence[str] = tuple(seeds.STUDY_MODELS),
    study_options: Mapping[str, Mapping[str, Any]] | None = None,
    include_naive: bool = True,
    include_seeds: bool = True,
    include_nnx: bool = True,
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
      steps: timed rounds per strategy measurement (the median is reported).
      warmup: untimed calls first (the first one compiles).
      model_options: extra ``models.create`` options, e.g. ``{"widths": (16, 32)}``.
      lp_examples: examples in one linear-probe epoch (rounded down to whole batches).
      lp_epochs: timed linear-probe epochs after the first (which compiles / fills the cache).
      num_seeds: seeds of the study MLP under ``jax.vmap`` for the floor check.
      engine_seeds: N of the engine seeds check (the study's 5 seeds).
      loop_steps: K, steps per call of the engine's loop in the seeds check.
      seed_rounds: timed rounds of the seeds checks.
      seed_models: the study models of the engine seeds check (keys of
        ``jaxtl.bench.seeds.STUDY_MODELS``).
      study_options: per study model, options over the study's, e.g. ``{"cnn": {"widths":
        (8, 16)}}``: the seeds check of a model change, before it changes the study.
      include_naive: also time the naive ``multi_transform`` recipe for each strategy.
      include_seeds: run the seeds checks.
      include_nnx: time the NNX head-only and all-trainable steps.
      seed: seeds the data and the parameter init.
      log: called with one line per finished measurement (progress); None is silent.
      on_partial: called with the result so far after each measurement ("complete" False until
        the last).

    Returns:
      A JSON-ready dict: "machine", "config", "seeds_engine" and "seeds_vmapped" (None when
      skipped), "matmul_peak_flops_per_s", "nnx" (None when skipped), "forward", "rows" (one per
      strategy step), "linear_probe_epoch", "checks" and "complete".

    Example:
      >>> result = run_benchmark("mlp", batch_size=8, image_size=8, steps=2, warmup=1,
      ...                        model_options={"widths": (16,)}, lp_examples=16, lp_epochs=1,
      ...                        num_seeds=2, seed_models=("mlp",))  # doctest: +SKIP
      >>> all(c["name"] for c in result["checks"])  # doctest: +SKIP
      True
    """
    study_options = {name: dict(o) for name, o in (study_options or {}).items()}
    _validate(
        dtype=dtype,
        study_models=[*seed_models, *study_options],
        warmup=warmup,
        lp_examples=lp_examples,
        batch_size=batch_size,
        image_size=image_size,
        channels=channels,
        num_classes=num_classes,
        steps=steps,
        lp_epochs=lp_epochs,
        num_seeds=num_seeds,
        engine_seeds=engine_seeds,
        loop_steps=loop_steps,
        seed_rounds=seed_rounds,
    )
    say = log or (lambda line: None)
    report_partial = on_partial or (lambda partial: None)
    options = dict(model_options or {})
    result: dict[str, Any] = {
        "machine": machine_info(),
        "config": {
            "model": model,
            "model_options": seeds.json_options(options),
            "batch_size": batch_size,
            "input_shape": [image_size, image_size, channels],
            "num_classes": num_classes,
            "dtype": dtype,
            "optimizer": "adam(1e-3)",
            "steps": steps,
            "warmup": warmup,
            "seed": seed,
            "engine_seeds": engine_seeds,
            "loop_steps": loop_steps,
            "seed_rounds": seed_rounds,
        },
        "seeds_engine": None,
        "seeds_vmapped": None,
        "nnx": None,
        "complete": False,
    }
    # Built first, so a bad model name or option fails before a minute of measurements.
    net = models.create(model, num_classes, dtype=jnp.dtype(dtype), **options)
    if include_seeds:
        _run_seeds(
            result,
            {name: study_options.get(name) for name in seed_models},
            engine_seeds,
            num_seeds,
            loop_steps,
            seed_rounds,
            warmup,
            seed,
            say,
            report_partial,
        )
    if include_nnx:
        result["nnx"] = nnx = _run_nnx(seed_rounds * 2, warmup, seed)
        say(
            f"nnx head only: {nnx['head_only']['step_ms']:.2f} ms, all trainable:"
            f" {nnx['all_trainable']['step_ms']:.2f} ms"
        )
        report_partial(result)

    work = _workload(net, batch_size, image_size, channels, num_classes, steps, warmup, seed)
    _run_strategies(result, work, lp_examples, lp_epochs, include_naive, say, report_partial)
    result["checks"] = checks.all_checks(result)
    result["complete"] = True
    report_partial(result)
    return result


def _workload(net, batch_size, image_size, channels, num_classes, rounds, warmup, seed):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.random((batch_size, image_size, image_size, channels), np.float32))
    return freezing.Workload(
        net=net,
        variables=models.init_variables(net, seed, x[:1]),
        x=x,
        y=jnp.asarray(rng.integers(0, num_classes, batch_size), jnp.int32),
        key=jax.random.key(seed),
        num_classes=num_classes,
        seed=seed,
        rounds=rounds,
        warmup=warmup,
    )


def _run_strategies(result, work, lp_examples, lp_epochs, include_naive, say, report) -> None:
    """The forward, one row per strategy, then the linear-probe epoch and its cached row."""
    net = work.net
    result["forward"] = work.forward_row()
    say(f"forward: {result['forward']['ms']:.2f} ms")
    result["config"]["layer_groups"] = list(net.layer_groups)
    result["rows"] = rows = []
    report(result)
    # Most frozen first: the device's peak is process-wide, so with the footprint growing row
    # by row the peak read after a row bounds that row's step (and its naive twin) from above.
    for name, k, plan, lr in freezing.strategy_plans(net.layer_groups, work.variables["params"]):
        row = freezing.strategy_row(work, name, k, plan, lr, include_naive)
        rows.append(row)
        naive_note = "" if row["naive"] is None else f", naive {row['naive']['step_ms']:.2f} ms"
        say(f"{name}: {row['step_ms']:.2f} ms/step, forward {row['forward_ms']:.2f} ms{naive_note}")
        report(result)
    cached_row, lp_epoch = freezing.linear_probe(work, lp_examples, lp_epochs)
    say(
        f"linear probe epoch: {lp_epoch['uncached_epoch_ms']:.1f} ms uncached,"
        f" {lp_epoch['cached_epoch_ms']:.2f} ms cached"
    )
    rows.append(cached_row)
    # Measured most frozen first (see the device-peak note); reported from full_ft down.
    rows.sort(key=lambda r: ("/" in r["strategy"], r["strategy"] == "linear_probe_cached", r["k"]))
    result["linear_probe_epoch"] = lp_epoch


def _run_seeds(
    result, seed_models, engine_seeds, num_seeds, loop_steps, rounds, warmup, seed, say, report
) -> None:
    """The engine seeds check per study model, then the vmapped-seeds floor check per input."""
    result["seeds_engine"] = engine = []
    for name, options in seed_models.items():
        entry = seeds.seeds_engine(
            name, engine_seeds, loop_steps, rounds, warmup, seed, options=options
        )
        engine.append(entry)
        say(
            f"{engine_seeds} seeds ({name}): engine {entry['engine_mode']}"
            f" {entry['engine_ms']:.2f} ms/step vs {engine_seeds} x one seed"
            f" {entry['one_seed_ms']:.2f} ms: {entry['engine_ratio']:.2f}x; in loop"
            f" {entry['loop_step_ms']:.2f} ms vs alone {entry['alone_ms']:.2f} ms"
        )
        report(result)
    result["matmul_peak_flops_per_s"] = peak = matmul_peak_flops_per_s()
    result["seeds_vmapped"] = vmapped = []
    for data in seeds.STUDY_INPUTS:
        entry = seeds.seeds_vmapped(data, num_seeds, rounds * 2, warmup, seed, peak)
        vmapped.append(entry)
        say(
            f"{num_seeds} seeds vmapped ({data}): {entry['vmapped_ms']:.2f} ms vs one seed"
            f" {entry['one_seed_ms']:.2f} ms (compute bound {entry['compute_bound_ms']:.2f} ms)"
        )
        report(result)


def _run_nnx(rounds: int, warmup: int, seed: int) -> dict[str, Any]:
    """The NNX steps on the study MLP's shapes (mnist5k digits, batch and classes of B)."""
    options = seeds.STUDY_MODELS["mlp"][1]
    return nnx_step.nnx_steps(
        tuple(options["widths"]),
        seeds.STUDY_INPUTS["mnist5k"],
        seeds.STUDY_CLASSES,
        seeds.STUDY_BATCH,
        rounds,
        warmup,
        seed,
    )
