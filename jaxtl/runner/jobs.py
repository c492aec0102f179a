"""From a config to the engine: the training spec of a task, checkpoints and per-run records.

The runner asks the engine (:func:`jaxtl.train.train_jobs`) for every model it trains — source
models on A, grid runs and final runs on B — with a :class:`~jaxtl.train.TrainSpec` built here
from the config, so each is trained the one way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import ml_collections
import numpy as np

from jaxtl.runner.tasks import mesh_for, slots_for
from jaxtl.train import PROGRAMS, AdamW, Job, TrainRun, TrainSpec, hparams, outputs, signature
from jaxtl.train import checkpoint as ckpt_lib


def spec_for(
    config: ml_collections.ConfigDict,
    model,
    task: str,
    *,
    batch_size: int,
    pad_to: int | None = None,
) -> TrainSpec:
    """How the config trains on ``task`` ("a": ``train_a``, "b": ``train_b``).

    Example:
      >>> spec_for(base_config(), model, "b", batch_size=20).slots  # doctest: +SKIP
      5
    """
    train = config.train_a if task == "a" else config.train_b
    return TrainSpec(
        steps=train.steps,
        batch_size=batch_size,
        optimizer=AdamW(float(train.clip_norm), float(train.weight_decay)),
        steps_per_call=config.steps_per_call,
        slots=slots_for(config, model),
        bn_policy=config.bn_policy,
        compute_dtype=config.compute_dtype or None,
        cache_features=config.cache_features,
        pad_to=pad_to,
        mesh=mesh_for(config),
    )


def checkpoints_in(
    config: ml_collections.ConfigDict, directory_of: Callable[[list[Job]], Path]
) -> Callable[[list[Job]], ckpt_lib.Checkpointer]:
    """Per pack of jobs, a checkpointer in ``directory_of(pack)`` with the config's cadence."""
    return lambda pack: ckpt_lib.Checkpointer(
        directory_of(pack),
        keep=config.checkpoint_keep,
        every=config.checkpoint_every or None,
        seconds=config.checkpoint_seconds,
    )


def non_finite(record: dict, pack: Sequence[Job]) -> list[tuple[int, float]]:
    """``(slot, loss)`` of every job in ``pack`` whose chunk loss is NaN or infinite."""
    losses = record["loss"]
    return [(i, losses[i]) for i in range(len(pack)) if not math.isfinite(losses[i])]


def step_costs(run: TrainRun, model, batch_size: int) -> list[dict[str, float]]:
    """XLA's cost and memory analysis of each phase's step exactly as it trained (one model).

    Every seed and grid point of a cell trains the same steps on the same shapes, so the
    analysis is cached by them (the engine's one cache): tracing the state and feature shapes
    anew for each of a study's ~1,000 runs took ~40 s.
    """
    job = run.job
    one = jax.ShapeDtypeStruct((batch_size, *np.shape(job.x)[1:]), np.float32)
    reference = job.variables["params"] if job.reference is None else job.reference
    shapes = signature((job.variables, reference, one))
    return [
        dict(
            PROGRAMS.get(
                ("step_cost", step, model, shapes),
                lambda step=step: _step_cost(step, model, job.variables, reference, one),
            )
        )
        for step in run.steps.values()
    ]


def _step_cost(step, model, variables, reference, one: jax.ShapeDtypeStruct) -> dict[str, float]:
    state = jax.eval_shape(lambda: step.init_state(variables, hparams(), reference, 0))
    x_shape = one.shape
    if step.start:
        x_shape = jax.eval_shape(
            lambda v, x: model.apply(v, x, stop=step.start), variables, one
        ).shape
    return step.cost(state, x_shape)


def write_chunk(
    run_dirs: dict[int, outputs.RunDir], pack: Sequence[Job], record: dict, batch: int
) -> None:
    """Appends a chunk's record to each job's metrics.jsonl (per-slot values unpacked)."""
    seconds, steps = record["seconds"], record["chunk_steps"]
    for i, job in enumerate(pack):
        logged = {
            k: (v[i] if isinstance(v, list) else v)
            for k, v in record.items()
            if k not in ("chunk_steps", "seconds")
        }
        logged.update(
            step_time_s=seconds / steps,
            examples_per_s=batch * len(pack) * steps / seconds,
        )
        run_dirs[job.seed].append_metrics(logged)
