"""One value per phase that says everything about its compiled step.

A :class:`PhaseStep` holds what decides the program a phase trains with: model, freeze plan,
base optimizer, BatchNorm policy, whether L2-SP / layer-wise decay / a per-group schedule are
on, compute dtype, the first group run (feature cache) and the mesh. The *numbers* a tuning
sweep varies (learning rate, LP-FT's fine-tune multiplier, L2-SP's alpha, the layer-wise decay)
are not part of it: they travel in ``TrainState.hparams`` as float32 scalars, so every grid point
and every seed of a sweep runs the same compiled program.

The same value trains (:meth:`PhaseStep.loop`), is costed (:meth:`PhaseStep.cost`: XLA's cost
and memory analysis of exactly that step) and is benchmarked (``jaxtl bench``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jaxtl import freeze
from jaxtl.data.pipeline import data_sharding
from jaxtl.freeze import FreezePlan
from jaxtl.train.schedules import (
    group_decay_multipliers,
    scale_by_group_decay,
    scale_by_group_learning_rate,
    scale_by_group_schedule,
)
from jaxtl.train.state import TrainState, create_train_state
from jaxtl.train.steps import build_step

PyTree = Any
Hparams = Mapping[str, jax.Array]

# The numbers a sweep may vary without recompiling, and their neutral values.
HPARAM_DEFAULTS = {"lr": 1e-3, "phase_lr": 1.0, "l2sp": 0.0, "decay": 1.0}


def hparams(**values: float) -> dict[str, jax.Array]:
    """A full hyperparameter dict: ``values`` over :data:`HPARAM_DEFAULTS`, as float32 scalars.

    Example:
      >>> sorted(hparams(lr=3e-3))
      ['decay', 'l2sp', 'lr', 'phase_lr']
    """
    unknown = sorted(set(values) - set(HPARAM_DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown hyperparameter {unknown[0]!r}; choices: {', '.join(HPARAM_DEFAULTS)}"
        )
    return {k: jnp.asarray(values.get(k, v), jnp.float32) for k, v in HPARAM_DEFAULTS.items()}


@dataclasses.dataclass(frozen=True)
class AdamW:
    """The study's base optimizer: global-norm clipping, then AdamW at a run-time learning rate.

    Called with a (traced) learning rate it returns the transformation, so one compiled step
    serves every learning rate of a sweep.

    Example:
      >>> tx = AdamW(clip_norm=1.0, weight_decay=1e-4)(1e-3)
    """

    clip_norm: float
    weight_decay: float

    def __call__(
        self, lr: jax.Array | float, group_multipliers: dict[str, jax.Array] | None = None
    ) -> optax.GradientTransformation:
        """The transformation at learning rate ``lr``, times ``group_multipliers[group]`` per
        layer group when given (layer-wise decay; the state is ``optax.adamw``'s either way)."""
        clip = optax.clip_by_global_norm(self.clip_norm)
        if group_multipliers is None:
            return optax.chain(clip, optax.adamw(lr, weight_decay=self.weight_decay))
        # optax.adamw's own chain with its last link per group, so each leaf's update is scaled
        # once by -(lr * multiplier), as the plan's static lr_mult once did.
        return optax.chain(
            clip,
            optax.chain(
                optax.scale_by_adam(),
                optax.add_decayed_weights(self.weight_decay),
                scale_by_group_learning_rate(lr, group_multipliers),
            ),
        )


@dataclasses.dataclass(frozen=True)
class FixedTx:
    """A user's own optax transformation as a base optimizer; the ``lr`` hyperparameter is unused.

    Example:
      >>> base = FixedTx(optax.adam(1e-3))
    """

    tx: optax.GradientTransformation

    def __call__(self, lr: jax.Array | float) -> optax.GradientTransformation:
        del lr
        return self.tx


BaseOptimizer = Callable[[Any], optax.GradientTransformation]


def as_base_optimizer(tx: optax.GradientTransformation | BaseOptimizer) -> BaseOptimizer:
    """``tx`` as a base optimizer (``lr -> transformation``); a plain transformation is fixed."""
    return FixedTx(tx) if isinstance(tx, optax.GradientTransformation) else tx


class _PlanKey:
    """Hashes a freeze plan by what it decides (paths, structure, per-leaf settings)."""

    def __init__(self, plan: FreezePlan):
        self.plan = plan
        settings = tuple(
            None if s is None else tuple(sorted(s.items()))
            for s in (plan.rules[r][1] for r in plan.rule_of_leaf)
        )
        self.key = (plan.paths, plan.treedef, settings)

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _PlanKey) and self.key == other.key


@dataclasses.dataclass(frozen=True, eq=False)
class PhaseStep:
    """Everything that decides one phase's compiled train step.

    Attributes:
      model: the jaxtl model.
      plan: the phase's freeze plan.
      optimizer: base optimizer, ``lr -> transformation`` (:class:`AdamW`, :class:`FixedTx`).
      bn_policy: BatchNorm policy of this phase ("frozen", "train", "adabn").
      l2sp: whether the L2-SP penalty is in the loss (alpha from ``hparams["l2sp"]``).
      group_decay: whether layer-wise decay scales updates (``hparams["decay"]``).
      group_lr: a per-group schedule ``(group, t) -> multiplier`` (FreezeOut), or None.
      first_step, total_steps: the schedule's clock: this phase's first global step and the run's
        total (only used with ``group_lr``).
      compute_dtype: e.g. ``jnp.bfloat16``; None = float32.
      start: first layer group the step runs (features of the earlier ones come from a cache).
      mesh: data-parallel mesh, or None.
    """

    model: nn.Module
    plan: FreezePlan
    optimizer: BaseOptimizer
    bn_policy: str = "frozen"
    l2sp: bool = False
    group_decay: bool = False
    group_lr: Callable[[str, jax.Array], jax.Array] | None = None
    first_step: int = 0
    total_steps: int = 1
    compute_dtype: Any = None
    start: int = 0
    mesh: Mesh | None = None

    @property
    def key(self) -> tuple:
        """What the compiled program depends on (the numbers in ``hparams`` are not in it)."""
        schedule = (self.group_lr, self.first_step, self.total_steps) if self.group_lr else None
        return (
            self.model,
            _PlanKey(self.plan),
            self.optimizer,
            self.bn_policy,
            self.l2sp,
            self.group_decay,
            schedule,
            None if self.compute_dtype is None else jnp.dtype(self.compute_dtype).name,
            self.start,
            self.mesh,
        )

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PhaseStep) and self.key == other.key

    def transform(self, hp: Hparams) -> optax.GradientTransformation:
        """The phase's optimizer: base at ``hp["lr"] * hp["phase_lr"]`` (per group times the
        layer-wise decay), then the schedule.

        The phase's multiplier enters the base optimizer's learning rate (one scalar product)
        rather than a run-time ``optax.scale``: XLA:CPU then fuses the update as it did for a
        compile-time learning rate, so a phase at multiplier 1 trains bit-identically to the
        engine before learning rates became run-time values (a separate scale by a run-time 1.0
        changed the rounding of ~5% of weights per step). A :class:`FixedTx` has no learning
        rate to scale, so its updates are scaled.
        """
        lr = hp["lr"] * hp["phase_lr"]
        fold_decay = self.group_decay and isinstance(self.optimizer, AdamW)
        if isinstance(self.optimizer, FixedTx):
            parts = [self.optimizer.tx, optax.scale(hp["phase_lr"])]
        elif fold_decay:
            parts = [
                self.optimizer(lr, group_decay_multipliers(hp["decay"], self.model.layer_groups))
            ]
        else:
            parts = [self.optimizer(lr)]
        if self.group_decay and not fold_decay:
            parts.append(scale_by_group_decay(hp["decay"], self.model.layer_groups))
        if self.group_lr is not None:
            parts.append(scale_by_group_schedule(self.group_lr, self.first_step, self.total_steps))
        return optax.chain(*parts)

    def step_fn(self) -> Callable[..., tuple[TrainState, dict]]:
        """The un-jitted step ``(state, x, y, rng) -> (state, metrics)`` this phase trains with."""
        return build_step(
            self.model,
            self.plan,
            self.transform,
            bn_policy=self.bn_policy,
            l2sp=True if self.l2sp else None,
            compute_dtype=self.compute_dtype,
            start=self.start,
        )

    def init_state(
        self, variables: Mapping[str, PyTree], hp: Hparams, reference: PyTree, step: int
    ) -> TrainState:
        """A fresh state for this phase (one model; vmap it over slots)."""
        return create_train_state(
            variables,
            self.plan,
            self.transform,
            reference=reference if self.l2sp else None,
            step=step,
            hparams=hp,
        )

    def loop(self) -> Callable[..., tuple[TrainState, dict]]:
        """The compiled chunk loop, vmapped over a leading slot axis (see :func:`_compiled_loop`)."""
        return _compiled_loop(self)

    def cost(self, state: PyTree, x_shape: tuple[int, ...]) -> dict[str, float]:
        """XLA's cost and memory analysis of one step exactly as it trains (one model, no slots).

        Args:
          state: a state of one model (arrays or ``jax.ShapeDtypeStruct``s).
          x_shape: one batch's input shape entering group ``start``.
        """
        x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
        y = jax.ShapeDtypeStruct(x_shape[:1], jnp.int32)
        return _cost(self, _abstract(state), x, y)


def _abstract(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), tree)


@functools.lru_cache(maxsize=64)
def _cost_cached(step: PhaseStep, treedef: Any, shapes: tuple, x, y) -> dict[str, float]:
    state = jax.tree_util.tree_unflatten(treedef, [jax.ShapeDtypeStruct(*s) for s in shapes])
    return freeze.cost(step.step_fn(), state, x, y, jax.random.key(0))


def _cost(step: PhaseStep, state: PyTree, x, y) -> dict[str, float]:
    leaves, treedef = jax.tree.flatten(state)
    shapes = tuple((leaf.shape, leaf.dtype) for leaf in leaves)
    return dict(_cost_cached(step, treedef, shapes, x, y))


def _metric_zeros(step_fn, state, x_all, y_all, idx, rng) -> dict[str, jax.Array]:
    """Zeros shaped like one step's metrics (the running sums' starting value)."""
    shapes = jax.eval_shape(lambda s: step_fn(s, x_all[idx[0]], y_all[idx[0]], rng)[1], state)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), shapes)


@functools.lru_cache(maxsize=64)
def _compiled_loop(step: PhaseStep) -> Callable[..., tuple[TrainState, dict]]:
    """``loop(state, x_all, y_all, batch_idx, num_steps, rng) -> (state, metric sums)``, jitted.

    Every argument but ``num_steps`` has a leading slot axis (models trained side by side, one
    per slot); ``batch_idx`` is ``(slots, K, batch)`` and the loop runs its first ``num_steps``
    rows. The trip count is a run-time value, so chunks of any length up to ``K`` share one
    program (phase ends that are not multiples of the chunk length compile nothing new).
    Metrics come back as sums over the chunk's steps; divide by ``num_steps`` for means.
    Cached per :class:`PhaseStep`: one program per distinct phase in a process.
    """
    step_fn = step.step_fn()
    batch_sharding = None if step.mesh is None else data_sharding(step.mesh)

    def one_model(state, x_all, y_all, batch_idx, num_steps, rng):
        def body(i, carry):
            state, sums = carry
            idx = batch_idx[i]
            x, y = x_all[idx], y_all[idx]
            if batch_sharding is not None:
                x = jax.lax.with_sharding_constraint(x, batch_sharding)
                y = jax.lax.with_sharding_constraint(y, batch_sharding)
            state, metrics = step_fn(state, x, y, rng)
            return state, jax.tree.map(lambda s, m: s + m.astype(jnp.float32), sums, metrics)

        zeros = _metric_zeros(step_fn, state, x_all, y_all, batch_idx, rng)
        return jax.lax.fori_loop(0, num_steps, body, (state, zeros))

    return jax.jit(jax.vmap(one_model, in_axes=(0, 0, 0, 0, None, 0)), donate_argnums=0)
