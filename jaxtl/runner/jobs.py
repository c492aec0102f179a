"""Jobs: models to train on B, packed into fixed-size slot groups and handed to the driver.

A job is one model: a seed, a strategy (with its option values), a learning rate, a training
subset and starting variables. Jobs whose strategies share a program (they differ only in
numbers) train side by side in groups of the config's slot count; a partial group is filled
with copies of its last job, whose results are discarded, so every job trains in a program of
the same shape and its bits never depend on its neighbours.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxtl import data as data_lib
from jaxtl.runner.sources import _adamw
from jaxtl.runner.tasks import mesh_for, slots_for
from jaxtl.train import (
    Callbacks,
    PhaseRun,
    Strategy,
    evaluate,
    hparams,
    outputs,
    run_phases,
    stack_trees,
    unstack_tree,
)
from jaxtl.train import checkpoint as ckpt_lib

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Job:
    """One model to train on B.

    Attributes:
      seed: keys its data order and dropout (and names its run).
      strategy: the strategy with this job's option values.
      lr: base learning rate.
      task: its training data (``x_train``/``y_train``; a few-shot subset or a split of one).
      start: starting variables (A's weights transferred, or B's init).
      reference: L2-SP's anchor (A's weights), or None.
      setting: the hyperparameters this job tries (for records), e.g. ``{"lr": 3e-3}``.
    """

    seed: int
    strategy: Strategy
    lr: float
    task: data_lib.Dataset
    start: dict
    reference: PyTree = None
    setting: tuple[tuple[str, Any], ...] = ()


@dataclasses.dataclass
class Trained:
    """A trained job: its variables, and what its group's run measured."""

    job: Job
    variables: dict
    run: PhaseRun
    group_size: int


def _structure(job: Job, layer_groups: Sequence[str]) -> tuple:
    return (
        tuple(p.structure(layer_groups) for p in job.strategy.phases(layer_groups)),
        len(job.task.y_train),
        job.reference is None,
    )


def slot_groups(jobs: Sequence[Job], layer_groups: Sequence[str], slots: int) -> list[list[Job]]:
    """Jobs packed into groups of at most ``slots`` that can share one program, in order."""
    by_structure: dict[tuple, list[Job]] = {}
    for job in jobs:
        by_structure.setdefault(_structure(job, layer_groups), []).append(job)
    return [
        same[i : i + slots] for same in by_structure.values() for i in range(0, len(same), slots)
    ]


def train_jobs(
    config: ml_collections.ConfigDict,
    model,
    jobs: Sequence[Job],
    *,
    batch_size: int,
    pad_to: int,
    checkpoint_dir: Callable[[list[Job]], Path] | None = None,
    on_chunk: Callable[[list[Job], dict], None] | None = None,
    on_resume: Callable[[list[Job], int | None], None] | None = None,
    stop_requested: Callable[[], bool] | None = None,
) -> list[Trained]:
    """Trains ``jobs`` in slot groups and returns them trained, in the order given.

    Args:
      config: the experiment config (training settings, BN policy, slots, checkpoints).
      model: the model every job trains.
      jobs: the jobs.
      batch_size: examples per step (the same for every job of a cell).
      pad_to: rows every training set is padded to (so every data size shares one program).
      checkpoint_dir: where a group checkpoints (None: no checkpoints, e.g. selection runs).
      on_chunk, on_resume: per group, the driver's callbacks.
      stop_requested: polled after every chunk (SIGINT/SIGTERM).
    """
    slots = slots_for(config, model)
    train = config.train_b
    out: dict[int, Trained] = {}
    for group in slot_groups(jobs, model.layer_groups, slots):
        padded = group + [group[-1]] * (slots - len(group))
        checkpointer = None
        if checkpoint_dir is not None:
            checkpointer = ckpt_lib.Checkpointer(
                checkpoint_dir(group),
                keep=config.checkpoint_keep,
                every=config.checkpoint_every or None,
                seconds=config.checkpoint_seconds,
            )
        callbacks = Callbacks(
            on_chunk=None if on_chunk is None else (lambda r, g=group: on_chunk(g, r)),
            on_resume=None if on_resume is None else (lambda s, g=group: on_resume(g, s)),
            stop_requested=stop_requested,
        )
        references = [j.reference for j in padded]
        try:
            run = run_phases(
                model,
                stack_trees([j.start for j in padded]),
                [j.strategy for j in padded],
                _adamw(train),
                np.stack([j.task.x_train for j in padded]),
                np.stack([j.task.y_train for j in padded]),
                seeds=[j.seed for j in padded],
                lr=[j.lr for j in padded],
                total_steps=train.steps,
                batch_size=batch_size,
                bn_policy=config.bn_policy,
                steps_per_call=config.steps_per_call,
                compute_dtype=config.compute_dtype or None,
                reference=None if references[0] is None else stack_trees(references),
                cache_features=config.cache_features,
                mesh=mesh_for(config),
                checkpointer=checkpointer,
                callbacks=callbacks,
                pad_to=pad_to,
            )
        finally:
            if checkpointer is not None:
                checkpointer.close()
        for i, job in enumerate(group):
            out[id(job)] = Trained(job, unstack_tree(run.variables, i), run, len(group))
    return [out[id(job)] for job in jobs]


def accuracy(model, variables: dict, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of one model on ``(x, y)`` (inference mode, one compiled eval step per model)."""
    return evaluate(model, variables, x, y)["acc"]


def non_finite(record: dict, group: Sequence[Job]) -> list[tuple[int, float]]:
    """``(slot, loss)`` of every job in ``group`` whose chunk loss is NaN or infinite."""
    losses = record["loss"]
    return [(i, losses[i]) for i in range(len(group)) if not math.isfinite(losses[i])]


def step_costs(trained: Trained, model, batch_size: int) -> list[dict[str, float]]:
    """XLA's cost and memory analysis of each phase's step exactly as it trained (one model)."""
    job = trained.job
    one = jax.ShapeDtypeStruct((batch_size, *job.task.x_train.shape[1:]), np.float32)
    costs = []
    for step in trained.run.steps.values():
        state = jax.eval_shape(
            lambda step=step: step.init_state(job.start, hparams(), job.reference, 0)
        )
        x_shape = one.shape
        if step.start:
            x_shape = jax.eval_shape(
                lambda v, x, step=step: model.apply(v, x, stop=step.start), job.start, one
            ).shape
        costs.append(step.cost(state, x_shape))
    return costs


def write_chunk(
    run_dirs: dict[int, outputs.RunDir], group: Sequence[Job], record: dict, batch: int
):
    """Appends a chunk's record to each job's metrics.jsonl (per-slot values unpacked)."""
    seconds, steps = record["seconds"], record["chunk_steps"]
    for i, job in enumerate(group):
        logged = {
            k: (v[i] if isinstance(v, list) else v)
            for k, v in record.items()
            if k not in ("chunk_steps", "seconds")
        }
        logged.update(
            step_time_s=seconds / steps,
            examples_per_s=batch * len(group) * steps / seconds,
        )
        run_dirs[job.seed].append_metrics(logged)
