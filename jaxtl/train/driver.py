"""The engine's entry points: train jobs side by side in slots, through their strategy's phases.

:func:`train_jobs` is the one way models are trained, for every caller: it packs jobs whose
strategies share a program into packs of ``spec.slots``, fills a partial pack with copies of
its last job (discarded), and trains each pack as one vmapped program per phase; :func:`train`
is the same for one model. Read :func:`_train_pack` top to bottom: the phases are laid out, a
checkpoint (if any) gives the resume point, then each phase is entered (its plan, a fresh or
restored state, the optimizer-state carry-over from the previous phase, AdaBN, the feature
cache) and trained in chunks of compiled steps.

A model's bits depend on its own inputs and on the slot count only, never on what trains in
the other slots or its position in the pack.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtl import freeze
from jaxtl.freeze import FreezePlan
from jaxtl.freeze.carry import carry_optimizer_state
from jaxtl.train import features as features_lib
from jaxtl.train import sharding
from jaxtl.train.inference import adabn
from jaxtl.train.optimizers import HPARAM_DEFAULTS
from jaxtl.train.phase import PhaseStep
from jaxtl.train.slots import (
    batch_schedule,
    pad_rows,
    slot_placement,
    stack_trees,
    unstack_tree,
)
from jaxtl.train.spec import Job, TrainSpec
from jaxtl.train.state import TrainState
from jaxtl.train.strategies import Phase, StrategyError, phase_steps

if TYPE_CHECKING:
    from jaxtl.train.checkpoint import Checkpointer

PyTree = Any


class Interrupted(KeyboardInterrupt):
    """Training stopped on request (SIGINT/SIGTERM) after saving a checkpoint at ``step``."""

    def __init__(self, step: int, directory: str | None):
        self.step = step
        self.directory = directory
        where = f" in {directory}" if directory else ""
        super().__init__(f"stopped at step {step}; checkpoint saved{where}")


@dataclasses.dataclass(frozen=True)
class Callbacks:
    """What the caller hears while a pack trains (all optional).

    Attributes:
      on_chunk: each chunk's record: phase, step (global, after the chunk), chunk_steps,
        seconds (the compiled call, compilation excluded), and the chunk's mean metrics, one
        value per slot (:func:`train` passes one model's values).
      on_phase_start, on_phase_end: ``(phase name, state)`` when a phase begins (after the
        optimizer-state carry-over) and ends; the state has a leading slot axis (none from
        :func:`train`). Its buffers are donated to the next step: copy what you keep.
      on_resume: called with the restored step (or None when no checkpoint exists) before
        training continues, e.g. to drop metrics logged after that checkpoint.
      stop_requested: polled after every chunk; when it returns True the engine saves a
        checkpoint and raises :class:`Interrupted` (a signal handler sets it).
    """

    on_chunk: Callable[[dict[str, Any]], None] | None = None
    on_phase_start: Callable[[str, TrainState], None] | None = None
    on_phase_end: Callable[[str, TrainState], None] | None = None
    on_resume: Callable[[int | None], None] | None = None
    stop_requested: Callable[[], bool] | None = None


@dataclasses.dataclass
class TrainRun:
    """One trained job.

    Attributes:
      job: the job.
      variables: its trained Linen variables (host arrays).
      history: one dict per chunk, this job's values (see :class:`Callbacks`).
      plans: the freeze plan of each phase that ran, by phase name.
      carried: per phase switch ("lp->ft"), the parameter paths whose optimizer state carried.
      cached_groups: per phase, how many leading groups ran from a feature cache (0 = none).
      steps: per phase, the :class:`PhaseStep` it trained with (cost it with ``.cost``).
      pack_size: how many real jobs trained side by side with it (time is shared by them).
      slot: its slot in the pack's program.
    """

    job: Job
    variables: dict[str, PyTree]
    history: list[dict[str, Any]]
    plans: dict[str, FreezePlan]
    carried: dict[str, tuple[str, ...]]
    cached_groups: dict[str, int]
    steps: dict[str, PhaseStep]
    pack_size: int
    slot: int
    pack_state: TrainState = dataclasses.field(repr=False, default=None)

    @property
    def state(self) -> TrainState:
        """The final phase's train state of this job (sliced from its pack on device)."""
        return jax.tree.map(lambda leaf: leaf[self.slot], self.pack_state)


def pack_jobs(jobs: Sequence[Job], spec: TrainSpec, layer_groups: Sequence[str]) -> list[list[Job]]:
    """Jobs in packs of at most ``spec.slots`` that can share one program, in order.

    Jobs share a program when their strategies' phases have the same structure (they differ
    only in run-time numbers: lr, LP-FT's ``ft_lr``, L2-SP's ``alpha``, the layer-wise decay)
    and their training arrays have the same number of rows (or are padded to ``spec.pad_to``).
    """
    by_program: dict[tuple, list[Job]] = {}
    for job in jobs:
        structure = tuple(p.structure(layer_groups) for p in job.strategy.phases(layer_groups))
        rows = spec.pad_to or len(job.y)
        by_program.setdefault((structure, rows), []).append(job)
    slots = spec.slots
    return [same[i : i + slots] for same in by_program.values() for i in range(0, len(same), slots)]


def train_jobs(
    model: nn.Module,
    spec: TrainSpec,
    jobs: Sequence[Job],
    *,
    checkpointer_for: Callable[[list[Job]], Checkpointer | None] | None = None,
    callbacks_for: Callable[[list[Job]], Callbacks] | None = None,
) -> list[TrainRun]:
    """Trains ``jobs`` side by side in packs of ``spec.slots`` and returns them, in order.

    A partial pack is filled with copies of its last job, whose results are discarded, so every
    job trains in a program of the same shape and its bits never depend on its neighbours.

    Args:
      model: a jaxtl model (``layer_groups``; ``start``/``stop``/``inference_groups`` in apply).
      spec: how to train (:class:`TrainSpec`).
      jobs: what to train, one :class:`Job` per model.
      checkpointer_for: per pack, where it checkpoints (a
        :class:`~jaxtl.train.checkpoint.Checkpointer`, closed here) or None. A pack whose
        checkpointer holds a checkpoint resumes from the newest readable one; chunk boundaries
        are global multiples of ``spec.steps_per_call``, so on CPU a resumed run is
        bit-identical to an uninterrupted one.
      callbacks_for: per pack, its :class:`Callbacks`.

    Returns:
      One :class:`TrainRun` per job.

    Example:
      >>> runs = train_jobs(model, TrainSpec(steps=300, batch_size=20, slots=5),
      ...                   [Job(variables, get_strategy("lp_ft"), x, y, seed=s) for s in range(5)])  # doctest: +SKIP
    """
    out: dict[int, TrainRun] = {}
    for pack in pack_jobs(jobs, spec, model.layer_groups):
        padded = pack + [pack[-1]] * (spec.slots - len(pack))
        checkpointer = checkpointer_for(pack) if checkpointer_for is not None else None
        callbacks = callbacks_for(pack) if callbacks_for is not None else Callbacks()
        try:
            runs = _train_pack(model, spec, padded, checkpointer, callbacks)
        finally:
            if checkpointer is not None:
                checkpointer.close()
        for job, run in zip(pack, runs):
            out[id(job)] = dataclasses.replace(run, pack_size=len(pack))
    return [out[id(job)] for job in jobs]


def train(
    model: nn.Module,
    spec: TrainSpec,
    job: Job,
    *,
    checkpointer: Checkpointer | None = None,
    callbacks: Callbacks | None = None,
) -> TrainRun:
    """Trains one model (a one-slot :func:`train_jobs`); callbacks see that model's values.

    Example:
      >>> run = train(model, TrainSpec(steps=500, batch_size=64, optimizer=optax.adam(1e-3)),
      ...             Job(variables, get_strategy("lp_ft"), ds.x_train, ds.y_train))  # doctest: +SKIP
      >>> run.variables["params"]  # doctest: +SKIP
    """
    callbacks = callbacks or Callbacks()
    one = lambda tree: jax.tree.map(lambda leaf: leaf[0], tree)
    heard = lambda fn: None if fn is None else (lambda name, state: fn(name, one(state)))
    on_chunk = callbacks.on_chunk
    single = dataclasses.replace(
        callbacks,
        on_chunk=None
        if on_chunk is None
        else (lambda r: on_chunk({k: v[0] if isinstance(v, list) else v for k, v in r.items()})),
        on_phase_start=heard(callbacks.on_phase_start),
        on_phase_end=heard(callbacks.on_phase_end),
    )
    # The caller's checkpointer stays open (train_jobs closes the ones its factory makes).
    (run,) = _train_pack(model, dataclasses.replace(spec, slots=1), [job], checkpointer, single)
    return run


# ---- one pack ---------------------------------------------------------------------------------


@dataclasses.dataclass
class _Layout:
    """The phases of a pack and where each begins and ends (global steps)."""

    phases: tuple[Phase, ...]
    per_slot: list[tuple[Phase, ...]]
    budgets: list[int]
    ends: list[int]

    def begin(self, index: int) -> int:
        return self.ends[index] - self.budgets[index]

    def phase_of(self, step: int) -> int:
        return next(i for i, end in enumerate(self.ends) if step <= end and self.budgets[i] > 0)


def _layout(jobs: Sequence[Job], layer_groups: Sequence[str], total_steps: int) -> _Layout:
    per_slot = [job.strategy.phases(layer_groups) for job in jobs]
    structures = {tuple(p.structure(layer_groups) for p in phases) for phases in per_slot}
    if len(structures) > 1:
        raise StrategyError(
            "slots train one program, so their strategies must differ only in numbers (lr,"
            " ft_lr, alpha, decay); got different phases: "
            + " vs ".join(sorted({"/".join(p.name for p in ph) for ph in per_slot}))
        )
    budgets = phase_steps(per_slot[0], total_steps)
    return _Layout(per_slot[0], per_slot, budgets, np.cumsum(budgets).tolist())


@dataclasses.dataclass
class _Record:
    """What a pack's run measured, shared by its jobs' :class:`TrainRun` s."""

    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    plans: dict[str, FreezePlan] = dataclasses.field(default_factory=dict)
    carried: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    cached_groups: dict[str, int] = dataclasses.field(default_factory=dict)
    steps: dict[str, PhaseStep] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _Pack:
    """One pack's run: what every phase shares (models on a leading slot axis), where it
    checkpoints, who listens, and what it measured."""

    model: nn.Module
    spec: TrainSpec
    jobs: list[Job]
    layout: _Layout
    plans: list[FreezePlan]
    variables: PyTree
    reference: PyTree
    data: tuple[jax.Array, jax.Array, jax.Array]  # x, y (padded, on device) and dropout keys
    checkpointer: Checkpointer | None
    callbacks: Callbacks
    record: _Record = dataclasses.field(default_factory=_Record)

    def phase_step(self, index: int, start: int) -> PhaseStep:
        """The :class:`PhaseStep` of phase ``index`` running from group ``start``."""
        phase = self.layout.phases[index]
        return PhaseStep(
            self.model,
            self.plans[index],
            self.spec.optimizer,
            bn_policy=self.policy(index),
            l2sp=phase.uses_l2sp,
            group_decay=phase.uses_group_decay,
            group_lr=phase.group_lr,
            clock=(self.layout.begin(index), self.spec.steps),
            compute_dtype=self.spec.compute_dtype,
            start=start,
            mesh=self.spec.mesh,
        )

    def policy(self, index: int) -> str:
        """Phase ``index``'s BatchNorm policy (its own, else the spec's)."""
        return self.layout.phases[index].bn_policy or self.spec.bn_policy

    def hparams(self, index: int) -> dict[str, jax.Array]:
        """Phase ``index``'s run-time numbers, one value per slot (float32, leading slot axis)."""
        rows = [phases[index].hparams() for phases in self.layout.per_slot]
        out = {k: jnp.asarray([r[k] for r in rows], jnp.float32) for k in rows[0]}
        lrs = [HPARAM_DEFAULTS["lr"] if job.lr is None else job.lr for job in self.jobs]
        out["lr"] = jnp.asarray(lrs, jnp.float32)
        return out

    def fresh_state(
        self, index: int, variables: PyTree, step: int, shapes: bool = False
    ) -> TrainState:
        """A new state for phase ``index`` in every slot, starting at global ``step`` (only its
        shapes and dtypes with ``shapes=True``)."""
        args = (variables, self.reference, self.hparams(index), np.int32(step))
        phase_step = self.phase_step(index, 0)
        if shapes:
            return phase_step.initial_shapes(args)
        # Placed first, so the state is made where it trains: a state made on the default device
        # and split over the slot devices afterwards costs one compiled slicing program per
        # leaf shape (0.4 s of the CNN part's 33 s).
        args = (*self.place(args[:3]), args[3])
        return phase_step.initializer(args)(*args)

    def for_each_slot(self, fn: Callable[[PyTree, np.ndarray], Any], variables: PyTree) -> list:
        """A per-model host function (AdaBN, feature caching) of every slot, on its own rows."""
        return [fn(unstack_tree(variables, i), np.asarray(j.x)) for i, j in enumerate(self.jobs)]

    def place(self, tree: PyTree) -> PyTree:
        """Puts per-slot arrays where the pack trains (:func:`_place`)."""
        return _place(self.spec, self.model, len(self.jobs), tree)

    def pad(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """Per-slot arrays padded to the spec's rows and stacked."""
        return np.stack([pad_rows(a, self.spec.pad_to) for a in arrays])

    def batches(self, step: int, num_steps: int) -> np.ndarray:
        """Every slot's index batches for ``num_steps`` steps from global ``step``."""
        return np.stack(
            [
                batch_schedule(len(job.y), self.spec.batch_size, job.seed, step, num_steps)
                for job in self.jobs
            ]
        )


def _place(spec: TrainSpec, model: nn.Module, slots: int, tree: PyTree) -> PyTree:
    """Per-slot arrays where a pack of ``slots`` models trains: replicated over a data-parallel
    mesh, the slot axis split over the local devices
    (:func:`jaxtl.train.slots.slot_placement`), or on the default device."""
    if spec.mesh is not None:
        return sharding.put_replicated(spec.mesh, tree)
    split = slot_placement(model, slots)
    return jax.device_put(tree) if split is None else jax.device_put(tree, split)


def _prepare(model: nn.Module, spec: TrainSpec, jobs: list[Job], listeners: tuple) -> _Pack:
    """Lays out one pack: phases, plans, stacked variables and data on device."""
    layout = _layout(jobs, model.layer_groups, spec.steps)
    shapes = {np.shape(j.x)[1:] for j in jobs}
    if len(shapes) > 1:
        raise ValueError(f"jobs packed together need one input shape; got {sorted(shapes)}")
    variables = stack_trees([dict(j.variables) for j in jobs])
    reference = None
    if any(p.uses_l2sp for p in layout.phases):
        reference = stack_trees(
            [j.variables["params"] if j.reference is None else j.reference for j in jobs]
        )
    pad = lambda arrays: np.stack([pad_rows(a, spec.pad_to) for a in arrays])
    rng = jnp.stack([jax.random.fold_in(jax.random.key(j.seed), 1) for j in jobs])
    # Host arrays in, so every process of a multi-host run builds the same replicated copy.
    data = _place(spec, model, len(jobs), (pad([j.x for j in jobs]), pad([j.y for j in jobs]), rng))
    one_params = unstack_tree(variables["params"], 0)
    return _Pack(
        model=model,
        spec=spec,
        jobs=jobs,
        layout=layout,
        plans=[freeze.plan(one_params, p.rules(model.layer_groups)) for p in layout.phases],
        variables=variables,
        reference=reference,
        data=data,
        checkpointer=listeners[0],
        callbacks=listeners[1],
    )


def _train_pack(
    model: nn.Module,
    spec: TrainSpec,
    jobs: list[Job],
    checkpointer: Checkpointer | None,
    callbacks: Callbacks,
) -> list[TrainRun]:
    """Trains one pack (a full set of ``spec.slots`` jobs) through its phases."""
    pack = _prepare(model, spec, jobs, (checkpointer, callbacks))
    restored = _resume_point(pack)
    if callbacks.on_resume is not None:
        callbacks.on_resume(None if restored is None else restored[0])
    variables, state, step, previous = pack.variables, None, 0, None
    for index, phase in enumerate(pack.layout.phases):
        if pack.layout.budgets[index] <= 0:
            continue
        entry = _enter_phase(pack, index, variables, step, restored, previous)
        if entry is None:  # finished before the checkpoint
            step = pack.layout.ends[index]
            if restored is not None and restored[0] == step:
                state = restored[1]
                variables = state.variables
                previous = (phase.name, pack.plans[index], state.opt_state)
            continue
        state, step, variables, inputs = entry
        if callbacks.on_phase_start is not None:
            callbacks.on_phase_start(phase.name, state)
        state, step = _train_chunks(pack, index, state, inputs, step)
        if callbacks.on_phase_end is not None:
            callbacks.on_phase_end(phase.name, state)
        variables = state.variables
        previous = (phase.name, pack.plans[index], state.opt_state)
    if state is None:
        raise StrategyError(f"steps={spec.steps} gives every phase 0 steps; raise it")
    return [_job_run(pack, i, variables, state) for i in range(len(jobs))]


def _job_run(pack: _Pack, slot: int, variables: PyTree, state: TrainState) -> TrainRun:
    """Slot ``slot``'s :class:`TrainRun` from its pack's run."""
    pick = lambda v: v[slot] if isinstance(v, list) else v
    record = pack.record
    return TrainRun(
        job=pack.jobs[slot],
        # On the host, except under a mesh, where variables stay sharded on the devices.
        variables=unstack_tree(dict(variables), slot)
        if pack.spec.mesh is None
        else jax.tree.map(lambda leaf: leaf[slot], dict(variables)),
        history=[{k: pick(v) for k, v in h.items()} for h in record.history],
        plans=dict(record.plans),
        carried=dict(record.carried),
        cached_groups=dict(record.cached_groups),
        steps=dict(record.steps),
        pack_size=1,
        slot=slot,
        pack_state=state,
    )


def _enter_phase(
    pack: _Pack,
    index: int,
    variables: PyTree,
    step: int,
    restored: tuple[int, TrainState] | None,
    previous: tuple[str, FreezePlan, PyTree] | None,
) -> tuple[TrainState, int, PyTree, jax.Array] | None:
    """Phase ``index``'s starting point: ``(state, step, variables, inputs)``, or None when the
    phase finished before the checkpoint the run resumes from.

    A fresh phase gets a new state (AdaBN first when its policy asks), the optimizer state of
    leaves trainable before and now (``previous``: the last phase's name, plan and optimizer
    state) carried over, and its feature cache when its frozen prefix is deterministic; a phase
    the checkpoint lies inside continues from the checkpoint.
    """
    phase, plan, record = pack.layout.phases[index], pack.plans[index], pack.record
    policy = pack.policy(index)
    start = (
        features_lib.cacheable_groups(plan, pack.model.layer_groups, policy)
        if pack.spec.cache_features
        else 0
    )
    record.plans[phase.name], record.cached_groups[phase.name] = plan, start
    record.steps[phase.name] = pack.phase_step(index, start)
    resume_step = None if restored is None else restored[0]
    if resume_step is not None and resume_step >= pack.layout.ends[index]:
        return None
    if resume_step is not None and pack.layout.begin(index) < resume_step:
        state, step = restored[1], resume_step  # resumed inside this phase
        variables = state.variables
    else:
        earlier = [i for i in range(index) if pack.layout.budgets[i] > 0]
        previous_policy = pack.policy(earlier[-1]) if earlier else None
        if policy == "adabn" and previous_policy != "adabn":
            batch = pack.spec.batch_size
            variables = stack_trees(
                pack.for_each_slot(lambda v, xs: adabn(pack.model, v, xs, batch), variables)
            )
        state = pack.fresh_state(index, variables, step)
        if previous is not None:
            name, previous_plan, previous_opt_state = previous
            opt_state, record.carried[f"{name}->{phase.name}"] = carry_optimizer_state(
                previous_opt_state, previous_plan, state.opt_state, plan
            )
            state = state.replace(opt_state=opt_state)
    inputs = pack.data[0]
    if start:
        features = pack.for_each_slot(
            lambda v, xs: np.asarray(features_lib.compute_features(pack.model, v, xs, stop=start)),
            variables,
        )
        inputs = pack.place(pack.pad(features))
    return pack.place(state), step, variables, inputs


def _resume_point(pack: _Pack) -> tuple[int, TrainState] | None:
    """The newest readable checkpoint as ``(step, state)``, or None to start from scratch."""
    if pack.checkpointer is None:
        return None
    abstract = lambda s: pack.fresh_state(pack.layout.phase_of(s), pack.variables, s, shapes=True)
    restored = pack.checkpointer.restore_latest(abstract)
    return None if restored is None else (restored[0], restored[1])


def _train_chunks(
    pack: _Pack, index: int, state: TrainState, inputs: jax.Array, step: int
) -> tuple[TrainState, int]:
    """Trains phase ``index`` from global ``step`` to its end in chunks of at most
    ``steps_per_call`` compiled steps.

    Chunk boundaries sit at global multiples of ``steps_per_call`` (and at the phase's end), so
    a resumed run replays exactly the calls of an uninterrupted one. Every chunk reuses one
    program: the batch indices are padded to ``steps_per_call`` rows and the trip count is a
    run-time value.
    """
    phase, end = pack.layout.phases[index].name, pack.layout.ends[index]
    per_call = pack.spec.steps_per_call
    phase_step = pack.record.steps[phase]
    checkpointer, callbacks = pack.checkpointer, pack.callbacks
    _, labels, rng = pack.data
    while step < end:
        chunk = min(per_call - step % per_call, end - step)
        idx = pack.batches(step, chunk)
        idx = np.concatenate(
            [idx, np.zeros((idx.shape[0], per_call - chunk, idx.shape[2]), np.int32)], 1
        )
        idx = pack.place(idx)
        args = (state, inputs, labels, idx, np.int32(chunk), rng)
        call = phase_step.loop(args)
        started = time.perf_counter()
        state, sums = call(*args)
        sums = jax.device_get(sums)
        seconds = time.perf_counter() - started
        step += chunk
        record = {"phase": phase, "step": step, "chunk_steps": chunk, "seconds": seconds}
        for name, total in sums.items():
            record[name] = (np.asarray(total, np.float64) / chunk).tolist()
        pack.record.history.append(record)
        if callbacks.on_chunk is not None:
            callbacks.on_chunk(record)
        stop = callbacks.stop_requested is not None and callbacks.stop_requested()
        if checkpointer is not None and (stop or checkpointer.due(step, phase_end=step == end)):
            checkpointer.save(step, state, {"phase": phase}, force=True)
        if stop:
            raise Interrupted(step, None if checkpointer is None else str(checkpointer.directory))
    return state, step
