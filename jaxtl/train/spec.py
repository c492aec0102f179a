"""What the engine is asked to train: a :class:`TrainSpec` (how) and :class:`Job` s (what).

A spec is one frozen, hashable value per sweep: the step budget, batch, optimizer, how many
models share a compiled program (``slots``) and the rest of what decides the programs. A job is
one model: its starting variables, strategy, data, seed and learning rate. The engine's entry
points (:func:`jaxtl.train.train` for one model, :func:`jaxtl.train.train_jobs` for many) take
a model, a spec and jobs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from jaxtl.train.optimizers import AdamW, BaseOptimizer, as_base_optimizer
from jaxtl.train.steps import check_bn_policy
from jaxtl.train.strategies import Strategy

PyTree = Any

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
# The study's base optimizer (global-norm clipping at 1, AdamW with weight decay 1e-4).
STUDY_OPTIMIZER = AdamW(clip_norm=1.0, weight_decay=1e-4)


def _count(name: str, value: Any, minimum: int = 1) -> int:
    is_int = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not (is_int and value >= minimum):
        raise ValueError(f"{name}={value!r} must be an int >= {minimum}")
    return int(value)


def _dtype_name(dtype: Any) -> str | None:
    if dtype is None or dtype == "":
        return None
    try:
        name = jnp.dtype(dtype).name
    except TypeError:
        name = str(dtype)
    if name not in COMPUTE_DTYPES:
        raise ValueError(
            f"compute_dtype={dtype!r} is not supported; choices: {', '.join(COMPUTE_DTYPES)}"
        )
    return None if name == "float32" else name


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """How models train, apart from what each one is (one value per sweep).

    Attributes:
      steps: the step budget every job's phases share (:func:`jaxtl.train.phase_steps`).
      batch_size: examples per step (global, across devices when ``mesh`` is given).
      optimizer: the base optimizer: an optax transformation, or ``lr -> transformation``
        (:class:`jaxtl.train.AdamW`) whose learning rate is each job's run-time ``lr``. Each
        phase chains its multiplier, layer-wise decay and ``group_lr`` schedule onto it.
      steps_per_call: steps per compiled call (one metrics record per chunk; chunk boundaries
        are global multiples of it, so a resumed run replays the same calls).
      slots: models trained side by side in one compiled program (``jax.vmap``); results
        depend on it, never on what trains in the other slots
        (:func:`jaxtl.train.slot_count` gives the engine's measured choice).
      bn_policy: default BatchNorm policy ("frozen", "train", "adabn"); a phase may override it.
      compute_dtype: e.g. ``"bfloat16"`` (float32 master weights); None = float32.
      cache_features: compute a phase's deterministic frozen prefix once
        (:func:`jaxtl.train.cacheable_groups`) and train the remaining groups on the cache.
      pad_to: pad every job's training arrays to this many rows (never sampled), so jobs on
        different subset sizes of one dataset share one compiled loop.
      mesh: data-parallel mesh (:func:`jaxtl.train.data_mesh`); one slot only.

    Example:
      >>> spec = TrainSpec(steps=300, batch_size=20, optimizer=AdamW(1.0, 1e-4), slots=5)
    """

    steps: int
    batch_size: int
    optimizer: BaseOptimizer | optax.GradientTransformation = STUDY_OPTIMIZER
    steps_per_call: int = 100
    slots: int = 1
    bn_policy: str = "frozen"
    compute_dtype: str | None = None
    cache_features: bool = False
    pad_to: int | None = None
    mesh: Mesh | None = None

    def __post_init__(self):
        _count("steps", self.steps, minimum=0)
        for name in ("batch_size", "steps_per_call", "slots"):
            _count(name, getattr(self, name))
        check_bn_policy(self.bn_policy)
        set_ = lambda name, value: object.__setattr__(self, name, value)
        set_("optimizer", as_base_optimizer(self.optimizer))
        set_("compute_dtype", _dtype_name(self.compute_dtype))
        if self.pad_to is not None:
            set_("pad_to", _count("pad_to", self.pad_to))
        if self.mesh is not None:
            if self.batch_size % self.mesh.size:
                raise ValueError(
                    f"batch_size={self.batch_size} does not split over the mesh's"
                    f" {self.mesh.size} devices; use a multiple of {self.mesh.size}"
                )
            if self.slots > 1:
                raise ValueError(
                    f"slots={self.slots} and mesh= (data parallel) are exclusive; use slots=1"
                )


@dataclasses.dataclass(frozen=True, eq=False)
class Job:
    """One model to train.

    Attributes:
      variables: starting Linen variables (A's weights transferred, or B's init for "scratch").
      strategy: from :func:`jaxtl.train.get_strategy` (with this job's option values).
      x, y: training inputs and int labels (numpy).
      seed: keys the job's data order and dropout.
      lr: base learning rate for an ``lr -> transformation`` optimizer (unused by a fixed optax
        transformation); None = 1e-3.
      reference: L2-SP's anchor; None = ``variables["params"]`` (A's weights).

    Example:
      >>> job = Job(variables, get_strategy("lp_ft"), ds.x_train, ds.y_train, seed=0, lr=1e-3)  # doctest: +SKIP
    """

    variables: Mapping[str, PyTree]
    strategy: Strategy
    x: np.ndarray
    y: np.ndarray
    seed: int = 0
    lr: float | None = None
    reference: PyTree = None

    def __post_init__(self):
        if len(self.x) != len(self.y):
            raise ValueError(
                f"x has {len(self.x)} rows but y has {len(self.y)}; pass one label per row"
            )
        if len(self.y) == 0:
            raise ValueError("a job needs at least one training example")
        if self.lr is not None and not (
            isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0
        ):
            raise ValueError(f"lr={self.lr!r} must be a finite number > 0")
