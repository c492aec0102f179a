"""One phase's compiled step, its chunk loop, and the engine's one compile cache.

A :class:`PhaseStep` holds what decides the program a phase trains with: model, freeze plan,
base optimizer, BatchNorm policy, whether L2-SP / layer-wise decay / a per-group schedule are
on, compute dtype, the first group run (feature cache) and the mesh. The *numbers* a tuning
sweep varies (learning rate, LP-FT's fine-tune multiplier, L2-SP's alpha, the layer-wise decay)
are not part of it: they travel in ``TrainState.hparams`` (:mod:`jaxtl.train.optimizers`), so
every grid point and every seed of a sweep runs the same compiled program.

The same value trains (:meth:`PhaseStep.loop`), is costed (:meth:`PhaseStep.cost`: XLA's cost
and memory analysis of exactly that step) and is benchmarked (``jaxtl bench``). Every program
the engine compiles — chunk loops, state initialisers, step costs, evaluation and feature
passes — goes through :data:`PROGRAMS`, one bounded cache keyed by what decides the program
and the shapes it runs on.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec

from jaxtl import freeze
from jaxtl.data.pipeline import data_sharding
from jaxtl.freeze import FreezePlan
from jaxtl.train.optimizers import AdamW, BaseOptimizer, FixedTx
from jaxtl.train.schedules import (
    group_decay_multipliers,
    scale_by_group_decay,
    scale_by_group_schedule,
)
from jaxtl.train.state import TrainState, create_train_state
from jaxtl.train.steps import build_step, cast_floating, cross_entropy

PyTree = Any
Hparams = Mapping[str, jax.Array]


# ---- the compile cache ------------------------------------------------------------------------


class ProgramCache:
    """The engine's one compile cache: values by key, least recently used first out.

    :meth:`compiled` compiles a jitted function ahead of time for its arguments' shapes, so
    compilation stays out of measured step times and every run of a sweep with the same program
    and shapes shares one executable; :meth:`get` holds other derived values (step costs).

    Example:
      >>> cache = ProgramCache(maxsize=8)
      >>> f = cache.compiled("double", lambda: jax.jit(lambda x: 2 * x), (jnp.ones(3),))
      >>> f(jnp.ones(3)).tolist(), cache.misses
      ([2.0, 2.0, 2.0], 1)
    """

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0
        self._entries: collections.OrderedDict[Hashable, Any] = collections.OrderedDict()
        # Study parts run in threads (jaxtl.runner.streams). The lock guards the entries, not
        # the build: two threads missing one key both build it, and the first stored is kept.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def cached_keys(self) -> set[Hashable]:
        """The keys held now (tests compare them to see what a run compiled)."""
        return set(self._entries)

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """The value under ``key``, built with ``build()`` on a miss."""
        with self._lock:
            if key in self._entries:
                self.hits += 1
                self._entries.move_to_end(key)
                return self._entries[key]
            self.misses += 1
        value = build()
        with self._lock:
            value = self._entries.setdefault(key, value)
            self._entries.move_to_end(key)
            if len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)
        return value

    def compiled(self, key: Hashable, jitted: Callable[[], Any], args: tuple) -> Any:
        """``jitted()`` (a ``jax.jit``-ed function) compiled for the shapes of ``args``."""
        return self.get((key, signature(args)), lambda: jitted().lower(*args).compile())


def signature(args: PyTree) -> tuple:
    """What an ahead-of-time compiled program is specialised on: structure, shapes, dtypes and
    placements of its arguments."""
    leaves, treedef = jax.tree.flatten(args)
    return treedef, tuple(
        (np.shape(x), jnp.result_type(x), getattr(x, "sharding", None)) for x in leaves
    )


PROGRAMS = ProgramCache(maxsize=256)


# ---- one phase's step -------------------------------------------------------------------------


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
      optimizer: base optimizer, ``lr -> transformation`` (:class:`~jaxtl.train.AdamW`,
        :class:`~jaxtl.train.FixedTx`).
      bn_policy: BatchNorm policy of this phase ("frozen", "train", "adabn").
      l2sp: whether the L2-SP penalty is in the loss (alpha from ``hparams["l2sp"]``).
      group_decay: whether layer-wise decay scales updates (``hparams["decay"]``).
      group_lr: a per-group schedule ``(group, t) -> multiplier`` (FreezeOut), or None.
      clock: ``(first_step, total_steps)``: the schedule's clock, this phase's first global
        step and the run's total (only used with ``group_lr``).
      compute_dtype: e.g. ``"bfloat16"``; None = float32.
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
    clock: tuple[int, int] = (0, 1)
    compute_dtype: str | None = None
    start: int = 0
    mesh: Mesh | None = None

    @property
    def key(self) -> tuple:
        """What the compiled program depends on (the numbers in ``hparams`` are not in it)."""
        return (
            self.model,
            _PlanKey(self.plan),
            self.optimizer,
            self.bn_policy,
            self.l2sp,
            self.group_decay,
            (self.group_lr, self.clock) if self.group_lr else None,
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
        rather than a run-time ``optax.scale``: XLA:CPU then fuses the update as it does for a
        compile-time learning rate, so a phase at multiplier 1 trains bit-identically to a step
        compiled with a constant learning rate (a separate scale by a run-time 1.0 changed the
        rounding of ~5% of weights per step). A :class:`FixedTx` has no learning rate to
        scale, so its updates are scaled.
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
            parts.append(scale_by_group_schedule(self.group_lr, *self.clock))
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
        """A fresh state for this phase (one model; :meth:`initializer` vmaps it over slots)."""
        return create_train_state(
            variables,
            self.plan,
            self.transform,
            reference=reference if self.l2sp else None,
            step=step,
            hparams=hp,
        )

    def initializer(self, args: tuple) -> Callable[..., TrainState]:
        """``(variables, reference, hparams, step) -> state`` for every slot, compiled for the
        shapes of ``args`` (one program per phase program, not one per leaf shape, which is
        what running the initializer eagerly would compile)."""

        return PROGRAMS.compiled(("init", self), self._slots_initializer, args)

    def initial_shapes(self, args: tuple) -> TrainState:
        """The shapes and dtypes :meth:`initializer` returns for ``args`` (nothing compiled; a
        checkpoint restore reads them)."""
        return jax.eval_shape(self._slots_initializer(), *args)

    def _slots_initializer(self) -> Callable[..., TrainState]:
        create = lambda v, r, h, step: self.init_state(v, h, r, step)
        return jax.jit(jax.vmap(create, in_axes=(0, 0, 0, None)))

    def loop(self, args: tuple) -> Callable[..., tuple[TrainState, dict]]:
        """The chunk loop compiled for the shapes (and placement) of ``args`` (see
        :func:`_chunk_loop`)."""
        # The placement is part of the compiled signature, so the key need not name the mesh.
        slots = slot_mesh_of(args[1])
        return PROGRAMS.compiled(("loop", self), lambda: _chunk_loop(self, slots), args)

    def cost(self, state: PyTree, x_shape: tuple[int, ...]) -> dict[str, float]:
        """XLA's cost and memory analysis of one step exactly as it trains (one model, no slots).

        Args:
          state: a state of one model (arrays or ``jax.ShapeDtypeStruct``s).
          x_shape: one batch's input shape entering group ``start``.
        """
        state = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), state
        )
        x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
        y = jax.ShapeDtypeStruct(x_shape[:1], jnp.int32)
        key = ("cost", self, signature((state, x, y)))
        measure = lambda: freeze.cost(self.step_fn(), state, x, y, jax.random.key(0))
        return dict(PROGRAMS.get(key, measure))


def _metric_zeros(step_fn, state, x_all, y_all, idx, rng) -> dict[str, jax.Array]:
    """Zeros shaped like one step's metrics (the running sums' starting value)."""
    shapes = jax.eval_shape(lambda s: step_fn(s, x_all[idx[0]], y_all[idx[0]], rng)[1], state)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), shapes)


def slot_mesh_of(tree: PyTree) -> Mesh | None:
    """The "slots" mesh ``tree``'s first leaf is split over
    (:func:`jaxtl.train.sharding.slot_sharding`), or None."""
    leaves = jax.tree.leaves(tree)
    mesh = getattr(getattr(leaves[0], "sharding", None), "mesh", None) if leaves else None
    return mesh if mesh is not None and "slots" in mesh.axis_names else None


def over_slots(
    fn: Callable[..., Any], in_axes: tuple[int | None, ...], slots: Mesh | None
) -> Callable[..., Any]:
    """``fn`` vmapped over models side by side (``in_axes``: 0 for what each slot has its own
    of, None for what they share); with a ``slots`` mesh, every device runs it on its own slots.

    The split is a ``jax.shard_map``, not XLA's partitioner: nothing is exchanged between
    slots, and the partitioned form of a vmapped convolution runs several times slower on CPU
    devices (measured 2026-12-03: 37 ms vs 8.6 ms for two slots of the study CNN's step).
    """
    mapped = jax.vmap(fn, in_axes=in_axes)
    if slots is None:
        return mapped
    spec = lambda axis: PartitionSpec() if axis is None else PartitionSpec("slots")
    return jax.shard_map(
        mapped,
        mesh=slots,
        in_specs=tuple(spec(a) for a in in_axes),
        out_specs=PartitionSpec("slots"),
        # Carries start as zeros every device has alike (metric sums); the slots never meet.
        check_vma=False,
    )


def _chunk_loop(
    step: PhaseStep, slots: Mesh | None = None
) -> Callable[..., tuple[TrainState, dict]]:
    """``loop(state, x_all, y_all, batch_idx, num_steps, rng) -> (state, metric sums)``, jitted.

    Every argument but ``num_steps`` has a leading slot axis (models trained side by side, one
    per slot); ``batch_idx`` is ``(slots, K, batch)`` and the loop runs its first ``num_steps``
    rows. The trip count is a run-time value, so chunks of any length up to ``K`` share one
    program (phase ends that are not multiples of the chunk length compile nothing new).
    Metrics come back as sums over the chunk's steps; divide by ``num_steps`` for means.

    With a ``slots`` mesh (the slot axis split over local devices), each device runs the same
    loop over its own slots (``jax.shard_map``): nothing is exchanged between slots, and XLA's
    partitioner, which makes the vmapped convolutions several times slower on CPU devices, is
    not involved.
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

    return jax.jit(over_slots(one_model, (0, 0, 0, 0, None, 0), slots), donate_argnums=0)


# ---- inference programs -----------------------------------------------------------------------


def eval_program(
    model: nn.Module,
    compute_dtype: str | None,
    start: int,
    args: tuple,
    slot_axes: tuple[int | None, ...] | None = None,
) -> Callable[..., dict]:
    """``(variables, x, y, mask) -> {"loss_sum", "correct", "count"}`` in inference mode,
    compiled for the shapes of ``args``; with ``slot_axes`` vmapped over models side by side
    (:func:`over_slots`; split over the devices when ``args[0]`` is).

    Sums (not means) so that padded final batches (``mask`` False) average correctly.
    """
    slots = None if slot_axes is None else slot_mesh_of(args[0])

    def jitted():
        def eval_step(variables, x, y, mask):
            if compute_dtype is not None:
                params = cast_floating(variables["params"], compute_dtype)
                variables = {**variables, "params": params}
                x = x.astype(compute_dtype)
            logits = model.apply(variables, x, train=False, start=start)
            loss = cross_entropy(logits, y)
            correct = (jnp.argmax(logits, -1) == y) & mask
            return {
                "loss_sum": jnp.sum(jnp.where(mask, loss, 0.0)),
                "correct": jnp.sum(correct),
                "count": jnp.sum(mask),
            }

        if slot_axes is None:
            return jax.jit(eval_step)
        return jax.jit(over_slots(eval_step, slot_axes, slots))

    return PROGRAMS.compiled(("eval", model, compute_dtype, start, slot_axes), jitted, args)


def prefix_program(model: nn.Module, stop: int, args: tuple) -> Callable[..., jax.Array]:
    """``(variables, x) -> features entering group stop`` in inference mode, compiled for the
    shapes of ``args`` (the feature cache's forward pass)."""
    jitted = lambda: jax.jit(lambda v, xb: model.apply(v, xb, train=False, stop=stop))
    return PROGRAMS.compiled(("prefix", model, stop), jitted, args)


def batch_stats_program(model: nn.Module, args: tuple) -> Callable[..., PyTree]:
    """``(params, batch_stats, x, rng) -> batch_stats`` after one train-mode pass (AdaBN),
    compiled for the shapes of ``args``."""

    def jitted():
        def updated(params, stats, xb, rng):
            _, updates = model.apply(
                {"params": params, "batch_stats": stats},
                xb,
                train=True,
                rngs={"dropout": rng},
                mutable=["batch_stats"],
            )
            return updates["batch_stats"]

        return jax.jit(updated)

    return PROGRAMS.compiled(("batch_stats", model), jitted, args)
