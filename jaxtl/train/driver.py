"""The phase driver: trains models through a strategy's phases, several side by side in slots.

Read :func:`run_phases` top to bottom: the phases are laid out, a checkpoint (if any) gives the
resume point, then each phase is entered (its plan, a fresh or restored state, the optimizer-state
carry-over from the previous phase, AdaBN, the feature cache) and trained in chunks of compiled
steps, and the trained variables come back.

Models always carry a leading *slot* axis (size 1 for one model). Slots are independent models
(seeds, or grid points of a tuning sweep) trained by one compiled program under ``jax.vmap``;
:func:`seed_slots` is the one place that decides how many share a program. A model's bits depend
on its own inputs and on the slot count only, never on what trains in the other slots.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from jaxtl import freeze
from jaxtl.data.pipeline import batch_indices
from jaxtl.freeze import FreezePlan
from jaxtl.freeze.carry import carry_optimizer_state
from jaxtl.train import features as features_lib
from jaxtl.train import sharding
from jaxtl.train.phase import HPARAM_DEFAULTS, PhaseStep, as_base_optimizer
from jaxtl.train.state import TrainState
from jaxtl.train.steps import adabn, check_bn_policy
from jaxtl.train.strategies import Phase, Strategy, StrategyError, phase_steps

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
    """What the caller hears while :func:`run_phases` trains (all optional).

    Attributes:
      on_chunk: each chunk's record: phase, step (global, after the chunk), chunk_steps,
        seconds (the compiled call, compilation excluded), and the chunk's mean metrics (a list
        per slot when slots are given).
      on_phase_start, on_phase_end: ``(phase name, state)`` when a phase begins (after the
        optimizer-state carry-over) and ends. The state's buffers are donated to the next
        step: copy what you keep.
      on_resume: called with the restored step (or None when no checkpoint exists) before
        training continues, e.g. to drop metrics logged after that checkpoint.
      stop_requested: polled after every chunk; when it returns True the driver saves a
        checkpoint and raises :class:`Interrupted` (a signal handler sets it).
    """

    on_chunk: Callable[[dict[str, Any]], None] | None = None
    on_phase_start: Callable[[str, TrainState], None] | None = None
    on_phase_end: Callable[[str, TrainState], None] | None = None
    on_resume: Callable[[int | None], None] | None = None
    stop_requested: Callable[[], bool] | None = None


@dataclasses.dataclass
class PhaseRun:
    """Result of :func:`run_phases`.

    Attributes:
      variables: the trained Linen variables (stacked over slots when slots were given).
      state: the final phase's train state (likewise).
      history: one dict per chunk (see :class:`Callbacks`).
      plans: the freeze plan of each phase that ran, by phase name.
      carried: per phase switch ("lp->ft"), the parameter paths whose optimizer state carried.
      cached_groups: per phase, how many leading groups ran from a feature cache (0 = none).
      steps: per phase, the :class:`PhaseStep` it trained with (cost it with ``.cost``).
    """

    variables: dict[str, PyTree]
    state: TrainState
    history: list[dict[str, Any]]
    plans: dict[str, FreezePlan]
    carried: dict[str, tuple[str, ...]]
    cached_groups: dict[str, int]
    steps: dict[str, PhaseStep]


# ---- slots -----------------------------------------------------------------------------------


def stack_trees(trees: Sequence[PyTree]) -> PyTree:
    """Stacks equally shaped pytrees along a new leading (slot) axis.

    Stacked on the host (numpy): a device-side stack would compile one small program per leaf
    shape, which for a sweep adds up to more compilation than its training programs.

    Example:
      >>> stack_trees([{"w": jnp.zeros(2)}, {"w": jnp.ones(2)}])["w"].shape
      (2, 2)
    """
    return jax.tree.map(lambda *leaves: np.stack([np.asarray(x) for x in leaves]), *trees)


def unstack_tree(tree: PyTree, i: int) -> PyTree:
    """Slot ``i`` of a stacked pytree (on the host, for the same reason as :func:`stack_trees`).

    Example:
      >>> unstack_tree({"w": jnp.zeros((2, 3))}, 1)["w"].shape
      (3,)
    """
    return jax.tree.map(lambda leaf: np.asarray(leaf)[i], tree)


def _has_convolutions(model: nn.Module) -> bool:
    return any(hasattr(model, a) for a in ("kernel_size", "stem", "patch_size"))


def seed_slots(model: nn.Module, platform: str | None = None) -> int:
    """How many models train side by side in one compiled program (the slot count).

    The one place this is decided, from ``jaxtl bench``'s seeds check: on a CPU a vmapped
    convolution over per-slot weights becomes a grouped convolution that runs no faster than
    the slots one after another, so conv nets (and ResNets, ViTs) get one slot; dense models
    amortise per-step overhead over 5 slots. Accelerators, which one small model leaves idle,
    get 8. The count is part of what a result depends on (XLA batches differently per count),
    so runs record it and caches are keyed by it.

    Example:
      >>> seed_slots(jaxtl.models.create("mlp", 10), "cpu")  # doctest: +SKIP
      5
    """
    platform = platform or jax.default_backend()
    if platform == "cpu":
        return 1 if _has_convolutions(model) else 5
    return 8


# ---- data order -------------------------------------------------------------------------------


def batch_schedule(
    n: int, batch_size: int, seed: int, start_step: int, num_steps: int
) -> np.ndarray:
    """Index batches for global steps ``[start_step, start_step + num_steps)``: (num_steps, batch).

    Step ``s`` takes batch ``s % per_epoch`` of epoch ``s // per_epoch`` from
    :func:`jaxtl.data.batch_indices` (last partial batch dropped), so the data order is a
    function of (seed, epoch, step) and a resumed run sees the same batches.

    Example:
      >>> batch_schedule(10, 4, seed=0, start_step=0, num_steps=3).shape
      (3, 4)
    """
    per_epoch = n // batch_size if batch_size <= n else 1
    rows, epochs = [], {}
    for step in range(start_step, start_step + num_steps):
        epoch, within = divmod(step, per_epoch)
        if epoch not in epochs:
            epochs[epoch] = batch_indices(n, batch_size, seed, epoch)
        rows.append(epochs[epoch][within])
    return np.asarray(rows, np.int32).reshape(num_steps, batch_size)


def _pad_rows(a: Any, rows: int | None) -> np.ndarray:
    a = np.asarray(a)
    if rows is None or rows == len(a):
        return a
    return np.concatenate([a, np.zeros((rows - len(a), *a.shape[1:]), a.dtype)])


# ---- compiled programs ------------------------------------------------------------------------

_COMPILED: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
_COMPILED_MAX = 64


def _compiled(loop: Callable[..., Any], args: tuple) -> Callable[..., Any]:
    """``loop`` compiled ahead of time for these argument shapes (a bounded LRU per process).

    Compiling before the call keeps compilation out of the measured step time; the cache keeps
    every run of a sweep with the same phase and shapes on one executable.
    """
    leaves, treedef = jax.tree.flatten(args)
    key = (loop, treedef, tuple((np.shape(x), jnp.result_type(x)) for x in leaves))
    if key in _COMPILED:
        _COMPILED.move_to_end(key)
    else:
        _COMPILED[key] = loop.lower(*args).compile()
        if len(_COMPILED) > _COMPILED_MAX:
            _COMPILED.popitem(last=False)
    return _COMPILED[key]


# ---- the driver -------------------------------------------------------------------------------


@dataclasses.dataclass
class _Layout:
    """The phases of a run and where each begins and ends (global steps)."""

    phases: tuple[Phase, ...]
    per_slot: list[tuple[Phase, ...]]
    budgets: list[int]
    ends: list[int]

    def begin(self, index: int) -> int:
        return self.ends[index] - self.budgets[index]

    def phase_of(self, step: int) -> int:
        return next(i for i, end in enumerate(self.ends) if step <= end and self.budgets[i] > 0)


def _layout(
    strategies: Sequence[Strategy], layer_groups: Sequence[str], total_steps: int
) -> _Layout:
    per_slot = [s.phases(layer_groups) for s in strategies]
    structures = {tuple(p.structure(layer_groups) for p in phases) for phases in per_slot}
    if len(structures) > 1:
        raise StrategyError(
            "slots train one program, so their strategies must differ only in numbers (lr,"
            " ft_lr, alpha, decay); got different phases: "
            + " vs ".join(sorted({"/".join(p.name for p in ph) for ph in per_slot}))
        )
    budgets = phase_steps(per_slot[0], total_steps)
    return _Layout(per_slot[0], per_slot, budgets, np.cumsum(budgets).tolist())


def _slot_hparams(layout: _Layout, index: int, lrs: Sequence[float]) -> dict[str, jax.Array]:
    """Phase ``index``'s run-time numbers, one value per slot (float32, leading slot axis)."""
    rows = [phases[index].hparams() for phases in layout.per_slot]
    out = {k: jnp.asarray([r[k] for r in rows], jnp.float32) for k in rows[0]}
    out["lr"] = jnp.asarray(lrs, jnp.float32)
    return out


def run_phases(
    model: nn.Module,
    variables: Mapping[str, PyTree],
    strategy: Strategy | Sequence[Strategy],
    tx: optax.GradientTransformation | Callable[[Any], optax.GradientTransformation],
    x: np.ndarray,
    y: np.ndarray,
    *,
    total_steps: int,
    batch_size: int,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    lr: float | Sequence[float] | None = None,
    sizes: Sequence[int] | None = None,
    bn_policy: str = "frozen",
    steps_per_call: int = 100,
    compute_dtype: Any = None,
    reference: PyTree = None,
    cache_features: bool = False,
    mesh: Mesh | None = None,
    checkpointer: Checkpointer | None = None,
    callbacks: Callbacks | None = None,
    pad_to: int | None = None,
) -> PhaseRun:
    """Trains ``model`` through a strategy's phases, one compiled chunk loop per phase.

    Args:
      model: a jaxtl model.
      variables: starting variables (A's weights transferred, or B's init for "scratch").
      strategy: from :func:`jaxtl.train.get_strategy`; with ``seeds``, optionally one per slot
        (they may differ only in run-time numbers: ``lp_ft(ft_lr=...)``, ``l2_sp(alpha=...)``,
        ``discriminative_lr(decay=...)``).
      tx: the base optimizer: an optax transformation, or ``lr -> transformation``
        (:class:`jaxtl.train.phase.AdamW`) whose learning rate is the run-time ``lr``. Each phase
        chains its ``lr`` multiplier, layer-wise decay and ``group_lr`` schedule onto it.
      x, y: training inputs and int labels (numpy); they are put on device once.
      total_steps: step budget shared by the phases (:func:`jaxtl.train.phase_steps`).
      batch_size: examples per step (global, across devices when ``mesh`` is given).
      seed: keys the data order and dropout of a single model.
      seeds: train one model per seed side by side in one ``jax.vmap``-ed program (slots).
        Then ``variables``, ``reference``, ``x`` and ``y`` carry a leading axis of
        ``len(seeds)``, the returned variables and state are stacked the same way, and history
        values are per-slot lists. Slots never influence each other's bits.
      lr: the base learning rate (per slot with ``seeds``) for a factory ``tx``.
      sizes: per slot, how many leading rows of ``x``/``y`` are real (the rest is padding);
        default all of them.
      bn_policy: default BatchNorm policy; a phase's ``bn_policy`` overrides it. On entering an
        "adabn" phase the running statistics are re-estimated on ``x`` with :func:`adabn`.
      steps_per_call: steps per compiled call (one metrics record per chunk).
      compute_dtype: e.g. ``jnp.bfloat16`` (float32 master weights).
      reference: L2-SP anchor; defaults to ``variables["params"]`` (A's weights).
      cache_features: when a phase's frozen prefix is deterministic (see
        :func:`jaxtl.train.features.cacheable_groups`), compute its output once and train the
        remaining groups on the cache.
      mesh: data-parallel mesh (:func:`jaxtl.train.sharding.data_mesh`); one slot only.
      checkpointer: saves the state when :meth:`~jaxtl.train.checkpoint.Checkpointer.due` after
        a chunk; when it holds a checkpoint the run resumes from the newest readable one.
        Chunk boundaries are global multiples of ``steps_per_call`` (and phase ends), so a
        resumed run repeats the same compiled calls on the same batches: on CPU the result is
        bit-identical to an uninterrupted run.
      callbacks: :class:`Callbacks`.
      pad_to: pad the on-device training arrays to this many rows (never sampled), so runs
        on different subset sizes of one dataset share one compiled loop per phase.

    Returns:
      A :class:`PhaseRun`.

    Example:
      >>> run = run_phases(model, variables, get_strategy("lp_ft"), optax.adam(1e-3),
      ...                  ds.x_train, ds.y_train, total_steps=500, batch_size=64)  # doctest: +SKIP
    """
    callbacks = callbacks or Callbacks()
    run = _prepare(
        model,
        variables,
        strategy,
        tx,
        x,
        y,
        total_steps=total_steps,
        batch_size=batch_size,
        seed=seed,
        seeds=seeds,
        lr=lr,
        sizes=sizes,
        bn_policy=bn_policy,
        steps_per_call=steps_per_call,
        compute_dtype=compute_dtype,
        reference=reference,
        cache_features=cache_features,
        mesh=mesh,
        pad_to=pad_to,
    )
    restored = _resume_point(
        checkpointer,
        lambda s: jax.eval_shape(lambda: run.fresh_state(run.layout.phase_of(s), run.variables, s)),
    )
    if callbacks.on_resume is not None:
        callbacks.on_resume(None if restored is None else restored[0])

    out = PhaseRun({}, None, [], {}, {}, {}, {})
    variables, state, step, previous = run.variables, None, 0, None
    for index, phase in enumerate(run.layout.phases):
        if run.layout.budgets[index] <= 0:
            continue
        entry = _enter_phase(run, index, variables, step, restored, previous, out)
        if entry is None:  # finished before the checkpoint
            step = run.layout.ends[index]
            if restored is not None and restored[0] == step:
                state = restored[1]
                variables = state.variables
                previous = (phase.name, run.plans[index], state.opt_state)
            continue
        state, step, variables, inputs = entry
        if callbacks.on_phase_start is not None:
            callbacks.on_phase_start(phase.name, run.view(state))
        state, step = _train_chunks(
            out.steps[phase.name],
            state,
            (inputs, run.y_device, run.rng),
            phase=phase.name,
            step=step,
            end=run.layout.ends[index],
            schedule=run.batches,
            steps_per_call=steps_per_call,
            slotted=run.slotted,
            history=out.history,
            checkpointer=checkpointer,
            callbacks=callbacks,
        )
        if callbacks.on_phase_end is not None:
            callbacks.on_phase_end(phase.name, run.view(state))
        variables = state.variables
        previous = (phase.name, run.plans[index], state.opt_state)
    if state is None:
        raise StrategyError(f"total_steps={total_steps} gives every phase 0 steps; raise it")
    out.variables, out.state = run.view(dict(variables)), run.view(state)
    return out


@dataclasses.dataclass
class _Run:
    """What every phase of one :func:`run_phases` call shares (models on a leading slot axis)."""

    model: nn.Module
    layout: _Layout
    plans: list[FreezePlan]
    base: Callable[[Any], optax.GradientTransformation]
    lrs: list[float]
    seeds: list[int]
    sizes: list[int]
    slotted: bool
    variables: PyTree
    reference: PyTree
    x_host: np.ndarray
    x_device: jax.Array
    y_device: jax.Array
    rng: jax.Array
    pad_to: int | None
    batch_size: int
    bn_policy: str
    total_steps: int
    compute_dtype: Any
    cache_features: bool
    mesh: Mesh | None

    def phase_step(self, index: int, start: int) -> PhaseStep:
        """The :class:`PhaseStep` of phase ``index`` running from group ``start``."""
        phase = self.layout.phases[index]
        return PhaseStep(
            self.model,
            self.plans[index],
            self.base,
            bn_policy=phase.bn_policy or self.bn_policy,
            l2sp=phase.uses_l2sp,
            group_decay=phase.uses_group_decay,
            group_lr=phase.group_lr,
            first_step=self.layout.begin(index),
            total_steps=self.total_steps,
            compute_dtype=self.compute_dtype,
            start=start,
            mesh=self.mesh,
        )

    def fresh_state(self, index: int, variables: PyTree, step: int) -> TrainState:
        """A new state for phase ``index`` in every slot, starting at global ``step``."""
        hp = _slot_hparams(self.layout, index, self.lrs)
        create = _state_initializer(self.phase_step(index, 0))
        return create(variables, self.reference, hp, np.int32(step))

    def view(self, tree: PyTree) -> PyTree:
        """What the caller gave: the slot axis removed for a single model (on device, keeping
        each array's sharding)."""
        return tree if self.slotted else jax.tree.map(lambda leaf: leaf[0], tree)

    def for_each_slot(self, fn: Callable[[PyTree, np.ndarray], Any], variables: PyTree) -> Any:
        """Applies a per-model host function (AdaBN, feature caching) to every slot."""
        return stack_trees(
            [fn(unstack_tree(variables, i), self.x_host[i]) for i in range(len(self.seeds))]
        )

    def pad(self, a: np.ndarray) -> np.ndarray:
        return np.stack([_pad_rows(row, self.pad_to) for row in a])

    def batches(self, step: int, num_steps: int) -> np.ndarray:
        """Every slot's index batches for ``num_steps`` steps from global ``step``."""
        return np.stack(
            [
                batch_schedule(n, self.batch_size, seed, step, num_steps)
                for n, seed in zip(self.sizes, self.seeds)
            ]
        )


@functools.lru_cache(maxsize=64)
def _state_initializer(phase_step: PhaseStep) -> Callable[..., TrainState]:
    """One jitted, slot-vmapped state initializer per phase program (not one small program per
    leaf shape, which is what running the initializer eagerly compiles)."""
    create = lambda v, r, h, step: phase_step.init_state(v, h, r, step)
    return jax.jit(jax.vmap(create, in_axes=(0, 0, 0, None)))


def _prepare(
    model,
    variables,
    strategy,
    tx,
    x,
    y,
    *,
    total_steps,
    batch_size,
    seed,
    seeds,
    lr,
    sizes,
    bn_policy,
    steps_per_call,
    compute_dtype,
    reference,
    cache_features,
    mesh,
    pad_to,
) -> _Run:
    """Checks :func:`run_phases`' arguments and lays out its run (phases, plans, slots, data)."""
    del steps_per_call
    check_bn_policy(bn_policy)
    slotted = seeds is not None
    seed_list = list(seeds) if slotted else [seed]
    num_slots = len(seed_list)
    if mesh is not None and batch_size % mesh.size:
        raise ValueError(
            f"batch_size={batch_size} does not split over the mesh's {mesh.size} devices;"
            f" use a multiple of {mesh.size}"
        )
    if slotted and mesh is not None and num_slots > 1:
        raise ValueError("seeds= (several slots) and mesh= (data parallel) are exclusive; pick one")
    strategies = list(strategy) if isinstance(strategy, Sequence) else [strategy] * num_slots
    if len(strategies) != num_slots:
        raise ValueError(f"got {len(strategies)} strategies for {num_slots} slots; pass one each")
    lrs = list(lr) if isinstance(lr, Sequence) else [HPARAM_DEFAULTS["lr"] if lr is None else lr]
    lrs = lrs * num_slots if len(lrs) == 1 else lrs
    layout = _layout(strategies, model.layer_groups, total_steps)
    # Everything works on a leading slot axis; a single model gets one of size 1.
    lift = (lambda tree: tree) if slotted else (lambda tree: stack_trees([tree]))
    variables = lift(dict(variables))
    if reference is None and any(p.uses_l2sp for p in layout.phases):
        reference = variables["params"]
    elif reference is not None:
        reference = lift(reference)
    x_host = np.asarray(x) if slotted else np.asarray(x)[None]
    y_host = np.asarray(y) if slotted else np.asarray(y)[None]
    n_rows = y_host.shape[1]
    if pad_to is not None and pad_to < n_rows:
        raise ValueError(f"pad_to={pad_to} is smaller than the {n_rows} training examples")
    pad = lambda a: np.stack([_pad_rows(row, pad_to) for row in a])
    # Host arrays in, so every process of a multi-host run builds the same replicated copy.
    x_device, y_device = sharding.put_replicated(mesh, (pad(x_host), pad(y_host)))
    one_params = unstack_tree(variables["params"], 0)
    return _Run(
        model=model,
        layout=layout,
        plans=[freeze.plan(one_params, p.rules(model.layer_groups)) for p in layout.phases],
        base=as_base_optimizer(tx),
        lrs=lrs,
        seeds=seed_list,
        sizes=list(sizes) if sizes is not None else [n_rows] * num_slots,
        slotted=slotted,
        variables=variables,
        reference=reference,
        x_host=x_host,
        x_device=x_device,
        y_device=y_device,
        rng=jnp.stack([jax.random.fold_in(jax.random.key(s), 1) for s in seed_list]),
        pad_to=pad_to,
        batch_size=batch_size,
        bn_policy=bn_policy,
        total_steps=total_steps,
        compute_dtype=compute_dtype,
        cache_features=cache_features,
        mesh=mesh,
    )


def _enter_phase(
    run: _Run,
    index: int,
    variables: PyTree,
    step: int,
    restored: tuple[int, TrainState] | None,
    previous: tuple[str, FreezePlan, PyTree] | None,
    out: PhaseRun,
) -> tuple[TrainState, int, PyTree, jax.Array] | None:
    """Phase ``index``'s starting point: ``(state, step, variables, inputs)``, or None when the
    phase finished before the checkpoint the run resumes from.

    A fresh phase gets a new state (AdaBN first when its policy asks), the optimizer state of
    leaves trainable before and now carried over, and its feature cache when its frozen prefix
    is deterministic; a phase the checkpoint lies inside continues from the checkpoint.
    """
    phase, plan = run.layout.phases[index], run.plans[index]
    policy = phase.bn_policy or run.bn_policy
    start = (
        features_lib.cacheable_groups(plan, run.model.layer_groups, policy)
        if run.cache_features
        else 0
    )
    out.plans[phase.name], out.cached_groups[phase.name] = plan, start
    out.steps[phase.name] = run.phase_step(index, start)
    resume_step = None if restored is None else restored[0]
    if resume_step is not None and resume_step >= run.layout.ends[index]:
        return None
    if resume_step is not None and run.layout.begin(index) < resume_step:
        state, step = restored[1], resume_step  # resumed inside this phase
        variables = state.variables
    else:
        earlier = [p for i, p in enumerate(run.layout.phases[:index]) if run.layout.budgets[i] > 0]
        previous_policy = (earlier[-1].bn_policy or run.bn_policy) if earlier else None
        if policy == "adabn" and previous_policy != "adabn":
            variables = run.for_each_slot(
                lambda v, xs: adabn(run.model, v, xs, run.batch_size), variables
            )
        state = run.fresh_state(index, variables, step)
        if previous is not None:
            name, previous_plan, previous_opt_state = previous
            opt_state, out.carried[f"{name}->{phase.name}"] = carry_optimizer_state(
                previous_opt_state, previous_plan, state.opt_state, plan
            )
            state = state.replace(opt_state=opt_state)
    inputs = run.x_device
    if start:
        features = run.for_each_slot(
            functools.partial(features_lib.compute_features, run.model, stop=start), variables
        )
        inputs = sharding.put_replicated(run.mesh, run.pad(np.asarray(features)))
    return sharding.put_replicated(run.mesh, state), step, variables, inputs


def _resume_point(
    checkpointer: Checkpointer | None, abstract_for_step: Callable[[int], PyTree]
) -> tuple[int, TrainState] | None:
    """The newest readable checkpoint as ``(step, state)``, or None to start from scratch."""
    if checkpointer is None:
        return None
    restored = checkpointer.restore_latest(abstract_for_step)
    return None if restored is None else (restored[0], restored[1])


def _train_chunks(
    phase_step: PhaseStep,
    state: TrainState,
    data: tuple[jax.Array, jax.Array, jax.Array],
    *,
    phase: str,
    step: int,
    end: int,
    schedule: Callable[[int, int], np.ndarray],
    steps_per_call: int,
    slotted: bool,
    history: list[dict[str, Any]],
    checkpointer: Checkpointer | None,
    callbacks: Callbacks,
) -> tuple[TrainState, int]:
    """Trains ``[step, end)`` in chunks of at most ``steps_per_call`` compiled steps.

    Chunk boundaries sit at global multiples of ``steps_per_call`` (and at ``end``), so a
    resumed run replays exactly the calls of an uninterrupted one. Every chunk reuses one
    program: the batch indices are padded to ``steps_per_call`` rows and the trip count is a
    run-time value.
    """
    loop = phase_step.loop()
    inputs, labels, rng = data
    while step < end:
        chunk = min(steps_per_call - step % steps_per_call, end - step)
        idx = schedule(step, chunk)
        idx = np.concatenate(
            [idx, np.zeros((idx.shape[0], steps_per_call - chunk, idx.shape[2]), np.int32)], 1
        )
        args = (state, inputs, labels, idx, np.int32(chunk), rng)
        call = _compiled(loop, args)
        started = time.perf_counter()
        state, sums = call(*args)
        sums = jax.device_get(sums)
        seconds = time.perf_counter() - started
        step += chunk
        record: dict[str, Any] = {
            "phase": phase,
            "step": step,
            "chunk_steps": chunk,
            "seconds": seconds,
        }
        for name, total in sums.items():
            means = (np.asarray(total, np.float64) / chunk).tolist()
            record[name] = means if slotted else means[0]
        history.append(record)
        if callbacks.on_chunk is not None:
            callbacks.on_chunk(record)
        stop = callbacks.stop_requested is not None and callbacks.stop_requested()
        if checkpointer is not None and (stop or checkpointer.due(step, phase_end=step == end)):
            checkpointer.save(step, state, {"phase": phase}, force=True)
        if stop:
            raise Interrupted(step, None if checkpointer is None else str(checkpointer.directory))
    return state, step
