"""The whole benchmark in one call: every measurement in order, a snapshot after each.

Order: the seeds checks first (small, independent of the chosen model, and what decides how
the engine batches seeds), then the NNX step, then the chosen model's forward, strategy rows and linear-probe
epoch. After every measurement ``on_partial`` gets the result so far, so a run cut short (a
device lease, a timeout) keeps what it measured.
"""

from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """What one benchmark run measures, and how long.

    Attributes:
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
      include_peft: time BitFit, norm-only and LoRA steps.
      seed: seeds the data and the parameter init.

    Example:
      >>> BenchConfig(batch_size=8).steps
      20
    """

    batch_size: int = 32
    image_size: int = 16
    channels: int = 3
    num_classes: int = 10
    dtype: str = "float32"
    steps: int = 20
    warmup: int = 3
    model_options: Mapping[str, Any] | None = None
    lp_examples: int = 2048
    lp_epochs: int = 3
    num_seeds: int = 8
    engine_seeds: int = 5
    loop_steps: int = 10
    seed_rounds: int = 5
    seed_models: Sequence[str] = tuple(seeds.STUDY_MODELS)
    study_options: Mapping[str, Mapping[str, Any]] | None = None
    include_naive: bool = True
    include_seeds: bool = True
    include_nnx: bool = True
    include_peft: bool = True
    seed: int = 0

    def validate(self) -> None:
        """One-line ValueErrors for settings no measurement could use, before any is made."""
        if self.dtype not in DTYPES:
            raise _choice_error("unknown dtype", self.dtype, DTYPES)
        for name in [*self.seed_models, *(self.study_options or {})]:
            if name not in seeds.STUDY_MODELS:
                raise _choice_error("unknown study model", name, tuple(seeds.STUDY_MODELS))
        counts = ("batch_size", "image_size", "channels", "num_classes", "steps", "lp_epochs")
        counts += ("num_seeds", "engine_seeds", "loop_steps", "seed_rounds")
        for what in counts:
            value = getattr(self, what)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{what} must be an int >= 1, got {value!r}")
        warmup = self.warmup
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
            raise ValueError(
                f"warmup must be an int >= 1 (the first call compiles), got {warmup!r}"
            )
        if self.lp_examples < self.batch_size:
            raise ValueError(
                f"lp_examples={self.lp_examples} must be >= batch_size={self.batch_size} (one"
                " whole batch)"
            )

    def record(self, model: str) -> dict[str, Any]:
        """The result's "config" block."""
        return {
            "model": model,
            "model_options": seeds.json_options(dict(self.model_options or {})),
            "batch_size": self.batch_size,
            "input_shape": [self.image_size, self.image_size, self.channels],
            "num_classes": self.num_classes,
            "dtype": self.dtype,
            "optimizer": "adam(1e-3)",
            "steps": self.steps,
            "warmup": self.warmup,
            "seed": self.seed,
            "engine_seeds": self.engine_seeds,
            "loop_steps": self.loop_steps,
            "seed_rounds": self.seed_rounds,
        }


def run_benchmark(
    model: str = "cnn",
    config: BenchConfig | None = None,
    *,
    log: Callable[[str], None] | None = None,
    on_partial: Callable[[dict[str, Any]], None] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Times every freezing strategy's train step against its limits and the naive recipe.

    Args:
      model: a name from ``jaxtl.models.names()``.
      config: what to measure (:class:`BenchConfig`); None = ``BenchConfig(**settings)``.
      log: called with one line per finished measurement (progress); None is silent.
      on_partial: called with the result so far after each measurement ("complete" False until
        the last).
      **settings: :class:`BenchConfig` fields, instead of ``config``.

    Returns:
      A JSON-ready dict: "machine", "config", "seeds_engine" and "seeds_vmapped" (None when
      skipped), "matmul_peak_flops_per_s", "nnx" (None when skipped), "forward", "rows" (one per
      strategy step; BitFit, norm-only and LoRA among them), "linear_probe_epoch", "checks" and
      "complete".

    Example:
      >>> result = run_benchmark("mlp", batch_size=8, image_size=8, steps=2, warmup=1,
      ...                        model_options={"widths": (16,)}, lp_examples=16, lp_epochs=1,
      ...                        num_seeds=2, seed_models=("mlp",))  # doctest: +SKIP
      >>> all(c["name"] for c in result["checks"])  # doctest: +SKIP
      True
    """
    if config is not None and settings:
        raise ValueError(f"pass either config or settings ({', '.join(settings)}), not both")
    unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(BenchConfig)})
    if unknown:
        fields = [f.name for f in dataclasses.fields(BenchConfig)]
        raise _choice_error("unknown benchmark setting", unknown[0], fields)
    config = BenchConfig(**settings) if config is None else config
    config.validate()
    say = log or (lambda line: None)
    report_partial = on_partial or (lambda partial: None)
    result: dict[str, Any] = {
        "machine": machine_info(),
        "config": config.record(model),
        "seeds_engine": None,
        "seeds_vmapped": None,
        "nnx": None,
        "complete": False,
    }
    # Built first, so a bad model name or option fails before a minute of measurements.
    options = dict(config.model_options or {})
    net = models.create(model, config.num_classes, dtype=jnp.dtype(config.dtype), **options)
    if config.include_seeds:
        _run_seeds(result, config, say, report_partial)
    if config.include_nnx:
        result["nnx"] = nnx = _run_nnx(config.seed_rounds * 2, config.warmup, config.seed)
        say(
            f"nnx head only: {nnx['head_only']['step_ms']:.2f} ms, all trainable:"
            f" {nnx['all_trainable']['step_ms']:.2f} ms"
        )
        report_partial(result)
    work = _workload(net, config)
    _run_strategies(result, work, config, say, report_partial)
    result["checks"] = checks.all_checks(result)
    result["complete"] = True
    report_partial(result)
    return result


def _workload(net, config: BenchConfig) -> freezing.Workload:
    rng = np.random.default_rng(config.seed)
    shape = (config.batch_size, config.image_size, config.image_size, config.channels)
    x = jnp.asarray(rng.random(shape, np.float32))
    return freezing.Workload(
        net=net,
        variables=models.init_variables(net, config.seed, x[:1]),
        x=x,
        y=jnp.asarray(rng.integers(0, config.num_classes, config.batch_size), jnp.int32),
        key=jax.random.key(config.seed),
        num_classes=config.num_classes,
        seed=config.seed,
        rounds=config.steps,
        warmup=config.warmup,
    )


def _run_strategies(result, work, config: BenchConfig, say, report) -> None:
    """The forward, one row per strategy, then the linear-probe epoch and its cached row, then
    the parameter-efficient rows."""
    net = work.net
    result["forward"] = work.forward_row()
    say(f"forward: {result['forward']['ms']:.2f} ms")
    result["config"]["layer_groups"] = list(net.layer_groups)
    result["rows"] = rows = []
    report(result)
    # Most frozen first: the device's peak is process-wide, so with the footprint growing row
    # by row the peak read after a row bounds that row's step (and its naive twin) from above.
    for name, k, plan, lr in freezing.strategy_plans(net.layer_groups, work.variables["params"]):
        row = freezing.strategy_row(work, name, k, plan, lr, config.include_naive)
        rows.append(row)
        naive_note = "" if row["naive"] is None else f", naive {row['naive']['step_ms']:.2f} ms"
        say(f"{name}: {row['step_ms']:.2f} ms/step, forward {row['forward_ms']:.2f} ms{naive_note}")
        report(result)
    cached_row, lp_epoch = freezing.linear_probe(work, config.lp_examples, config.lp_epochs)
    say(
        f"linear probe epoch: {lp_epoch['uncached_epoch_ms']:.1f} ms uncached,"
        f" {lp_epoch['cached_epoch_ms']:.2f} ms cached"
    )
    rows.append(cached_row)
    # Measured most frozen first (see the device-peak note); reported from full_ft down.
    rows.sort(key=lambda r: ("/" in r["strategy"], r["strategy"] == "linear_probe_cached", r["k"]))
    result["linear_probe_epoch"] = lp_epoch
    if config.include_peft:
        _run_peft(result, work, say, report)


def _run_peft(result, work, say, report) -> None:
    """BitFit, norm-only and LoRA rows (no naive twin, no limit: nothing is a frozen prefix),
    each with its step time and XLA FLOPs relative to full_ft and to head-only training."""
    rows = result["rows"]
    by_name = {r["strategy"]: r for r in rows}
    result["peft_skipped"] = skipped = {}
    for name, here, plan in freezing.peft_plans(work):
        if isinstance(plan, str):
            skipped[name] = plan
            say(f"{name}: skipped ({plan})")
            continue
        row = freezing.strategy_row(here, name, 0, plan, 1.0, False)
        for ref in ("full_ft", "all_but_head"):
            row[f"step_vs_{ref}"] = row["step_ms"] / by_name[ref]["step_ms"]
            row[f"flops_vs_{ref}"] = row["flops"] / by_name[ref]["flops"]
        rows.append(row)
        say(
            f"{name}: {row['step_ms']:.2f} ms/step ({row['step_vs_full_ft']:.2f}x full_ft,"
            f" {row['step_vs_all_but_head']:.2f}x head-only), FLOPs"
            f" {row['flops_vs_full_ft']:.2f}x full_ft"
        )
        report(result)


def _run_seeds(result, config: BenchConfig, say, report) -> None:
    """The engine seeds check per study model, then the vmapped-seeds floor check per input."""
    study_options = {name: dict(o) for name, o in (config.study_options or {}).items()}
    seed_models = {name: study_options.get(name) for name in config.seed_models}
    engine_seeds, rounds, warmup, seed = (
        config.engine_seeds,
        config.seed_rounds,
        config.warmup,
        config.seed,
    )
    num_seeds, loop_steps = config.num_seeds, config.loop_steps
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
