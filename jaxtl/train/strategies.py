"""Transfer strategies as sequences of freeze phases, and the driver that runs them.

A :class:`Phase` is a freeze plan factory (rules from the model's ``layer_groups``) plus a step
budget, a learning-rate multiplier and optional BatchNorm / L2-SP settings. A :class:`Strategy`
is an ordered tuple of phases. :func:`run_phases` compiles one scanned train loop per phase and,
at each switch, carries the optimizer state of leaves trainable in both phases
(:func:`carry_optimizer_state`), so LP-FT's head keeps its Adam moments when the body thaws.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from jaxtl import freeze
from jaxtl.data.pipeline import batch_indices
from jaxtl.freeze import FreezePlan, path_str
from jaxtl.freeze.carry import carry_optimizer_state
from jaxtl.suggest import did_you_mean
from jaxtl.train import features as features_lib
from jaxtl.train import sharding
from jaxtl.train.state import TrainState, create_train_state
from jaxtl.train.steps import adabn, check_bn_policy, make_train_loop

if TYPE_CHECKING:
    from jaxtl.train.checkpoint import Checkpointer

PyTree = Any
Rules = list[tuple[Any, Any]]
RulesFactory = Callable[[Sequence[str]], Rules]


class StrategyError(ValueError):
    """An unknown strategy or option, or an option that does not fit the model's groups."""


@dataclasses.dataclass(frozen=True)
class Phase:
    """One stretch of training under one freeze plan.

    Attributes:
      name: shown in metrics ("lp", "ft", "unfreeze2", ...).
      rules: ``layer_groups -> rules`` for :func:`jaxtl.freeze.plan`.
      fraction: share of the total step budget (used when ``steps`` is None).
      steps: a fixed number of steps instead of a fraction.
      lr: multiplier on the optimizer's updates during this phase.
      group_lr: per-group multiplier that changes over training, ``(group, t) -> multiplier``
        with ``t`` = global step / total steps (e.g. FreezeOut's :class:`GroupCosineDecay`);
        None = constant. It must be hashable (a frozen dataclass): compiled loops are cached
        by it.
      bn_policy: BatchNorm policy override ("frozen", "train", "adabn"); None = the run's.
      l2sp: L2-SP strength alpha towards the source weights; None = off.
    """

    name: str
    rules: RulesFactory
    fraction: float | None = 1.0
    steps: int | None = None
    lr: float = 1.0
    group_lr: Callable[[str, jax.Array], jax.Array] | None = None
    bn_policy: str | None = None
    l2sp: float | None = None


@dataclasses.dataclass(frozen=True)
class Strategy:
    """A named, ordered tuple of phases, built for a model's layer groups.

    Attributes:
      name: registry name ("lp_ft", ...).
      build: ``layer_groups -> tuple[Phase, ...]``; the phase count may depend on the model
        (gradual unfreezing, FreezeOut).
      from_source: False when the model starts from its own init instead of A's weights
        ("scratch"); the runner decides which variables to pass to :func:`run_phases`.
      options: the options it was built with (for run records).
    """

    name: str
    build: Callable[[Sequence[str]], tuple[Phase, ...]]
    from_source: bool = True
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def phases(self, layer_groups: Sequence[str]) -> tuple[Phase, ...]:
        """The phases for a model's groups; every phase's rules are checked against them.

        Example:
          >>> [p.name for p in get_strategy("gradual_unfreeze").phases(("a", "b", "head"))]
          ['unfreeze0', 'unfreeze1', 'unfreeze2']
        """
        layer_groups = tuple(layer_groups)
        phases = tuple(self.build(layer_groups))
        for phase in phases:
            phase.rules(layer_groups)
            if phase.bn_policy is not None:
                check_bn_policy(phase.bn_policy)
        return phases


def _fixed(*phases: Phase) -> Callable[[Sequence[str]], tuple[Phase, ...]]:
    return lambda layer_groups: phases


# ---- rules factories -----------------------------------------------------------------------------


def _group_pattern(group: str) -> str:
    return f"{re.escape(group)}/.*"


def train_groups_rules(trainable: Sequence[str]) -> RulesFactory:
    """Rules factory: train exactly the named groups, freeze the rest.

    Example:
      >>> train_groups_rules(["head"])(("stem", "head"))
      [('head/.*', {}), ('.*', None)]
    """

    def rules(layer_groups: Sequence[str]) -> Rules:
        _check_groups(trainable, layer_groups)
        out: Rules = [(_group_pattern(g), {}) for g in layer_groups if g in trainable]
        if len(out) < len(layer_groups):
            out.append((".*", None))
        return out

    return rules


def _check_groups(groups: Sequence[str], layer_groups: Sequence[str]) -> None:
    for g in groups:
        if g not in layer_groups:
            raise StrategyError(
                f"unknown layer group {g!r}{did_you_mean(g, layer_groups)};"
                f" groups: {', '.join(layer_groups)}"
            )


def _all_trainable(layer_groups: Sequence[str]) -> Rules:
    return [(".*", {})]


def _head_only(layer_groups: Sequence[str]) -> Rules:
    return train_groups_rules([layer_groups[-1]])(layer_groups)


def _last_n(n: int) -> RulesFactory:
    return lambda layer_groups: train_groups_rules(layer_groups[-n:])(layer_groups)


def _freeze_first(k: int) -> RulesFactory:
    def rules(layer_groups: Sequence[str]) -> Rules:
        if not 0 <= k < len(layer_groups):
            raise StrategyError(
                f"k={k} must be in 0..{len(layer_groups) - 1} for groups"
                f" {', '.join(layer_groups)} (k={len(layer_groups)} would freeze the head too)"
            )
        return train_groups_rules(layer_groups[k:])(layer_groups)

    return rules


# ---- per-group learning-rate schedules ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GroupCosineDecay:
    """FreezeOut's schedule: each group's learning rate decays to 0 by a cosine at its own end.

    Group ``g`` with end ``t_g`` (a fraction of training) gets the multiplier
    ``0.5 * (1 + cos(pi * min(t / t_g, 1)))`` at progress ``t``, divided by ``t_g`` when
    ``scaled`` (Brock et al.'s "scaled" variant, which gives groups that stop early a larger start).

    Example:
      >>> decay = GroupCosineDecay((("stem", 0.5), ("head", 1.0)))
      >>> [round(float(decay("stem", t)), 3) for t in (0.0, 0.25, 0.5, 0.75)]
      [1.0, 0.5, 0.0, 0.0]
    """

    ends: tuple[tuple[str, float], ...]
    scaled: bool = False

    def __call__(self, group: str, t: jax.Array) -> jax.Array:
        end = dict(self.ends)[group]
        multiplier = 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(t / end, 1.0)))
        return multiplier / end if self.scaled else multiplier


class GroupScheduleState(NamedTuple):
    """The global step the next update is taken at."""

    count: jax.Array


def scale_by_group_schedule(
    schedule: Callable[[str, jax.Array], jax.Array], first_step: int, total_steps: int
) -> optax.GradientTransformation:
    """Scales each update by ``schedule(group, step / total_steps)``; group = first path key.

    The count starts at ``first_step`` (the phase's first global step), so a schedule spans all
    of a strategy's phases while each phase keeps its own optimizer state. The count is state:
    checkpoints carry it and a resumed run continues the schedule where it stopped.

    Example:
      >>> tx = optax.chain(optax.sgd(0.1), scale_by_group_schedule(decay, first_step=0,
      ...                                                         total_steps=1000))  # doctest: +SKIP
    """

    def init_fn(params):
        del params
        return GroupScheduleState(jnp.asarray(first_step, jnp.int32))

    def update_fn(updates, state, params=None):
        del params
        t = state.count.astype(jnp.float32) / total_steps

        def scale(path, update):
            group = path_str(path).split("/", 1)[0]
            return update * schedule(group, t).astype(update.dtype)

        scaled = jax.tree_util.tree_map_with_path(scale, updates)
        return scaled, GroupScheduleState(optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


def phase_transform(
    tx: optax.GradientTransformation,
    lr: float,
    group_lr: Callable[[str, jax.Array], jax.Array] | None = None,
    first_step: int = 0,
    total_steps: int = 1,
) -> optax.GradientTransformation:
    """The optimizer a phase trains with: ``tx``, then its ``lr`` and ``group_lr`` multipliers."""
    if group_lr is None:
        return optax.chain(tx, optax.scale(lr))
    return optax.chain(
        tx, optax.scale(lr), scale_by_group_schedule(group_lr, first_step, total_steps)
    )


# ---- strategies ----------------------------------------------------------------------------------


def _check_fraction(name: str, value: float) -> float:
    if not 0.0 < value < 1.0:
        raise StrategyError(f"{name}={value!r} must be a fraction strictly between 0 and 1")
    return float(value)


def scratch() -> Strategy:
    """Train every parameter from the target model's own init (no transfer)."""
    return Strategy("scratch", _fixed(Phase("scratch", _all_trainable)), from_source=False)


def linear_probe() -> Strategy:
    """Train the head only on top of A's frozen features."""
    return Strategy("linear_probe", _fixed(Phase("lp", _head_only)))


def freeze_first_k(k: int = 1) -> Strategy:
    """Freeze the first ``k`` layer groups (Yosinski et al.'s AnB+ at depth k); train the rest."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise StrategyError(f"k={k!r} must be an int >= 0 (number of leading groups to freeze)")
    return Strategy("freeze_first_k", _fixed(Phase(f"freeze{k}", _freeze_first(k))))


def full_ft() -> Strategy:
    """Fine-tune every parameter from A's weights."""
    return Strategy("full_ft", _fixed(Phase("ft", _all_trainable)))


def lp_ft(lp_fraction: float = 0.5, ft_lr: float = 0.1) -> Strategy:
    """Linear probe, then full fine-tuning at ``ft_lr`` times the learning rate (Kumar et al.)."""
    lp_fraction = _check_fraction("lp_fraction", lp_fraction)
    if not ft_lr > 0:
        raise StrategyError(f"ft_lr={ft_lr!r} must be > 0 (a multiplier on the learning rate)")
    return Strategy(
        "lp_ft",
        _fixed(
            Phase("lp", _head_only, fraction=lp_fraction),
            Phase("ft", _all_trainable, fraction=1.0 - lp_fraction, lr=float(ft_lr)),
        ),
    )


def gradual_unfreeze(num_groups: int | None = None) -> Strategy:
    """ULMFiT: train the head, then thaw one more group per phase from the top.

    Args:
      num_groups: phases to run (head + ``num_groups - 1`` thawed groups); None = every group, so
        the last phase trains the whole model. Phases share the budget equally.
    """
    if num_groups is not None and (not isinstance(num_groups, int) or num_groups < 1):
        raise StrategyError(f"num_groups={num_groups!r} must be an int >= 1 or None (all groups)")

    def build(layer_groups: Sequence[str]) -> tuple[Phase, ...]:
        n = len(layer_groups) if num_groups is None else num_groups
        if n > len(layer_groups):
            raise StrategyError(
                f"num_groups={n} exceeds the model's {len(layer_groups)} groups"
                f" ({', '.join(layer_groups)})"
            )
        return tuple(Phase(f"unfreeze{i}", _last_n(i + 1), fraction=1.0 / n) for i in range(n))

    return Strategy("gradual_unfreeze", build)


def discriminative_lr(decay: float = 0.5) -> Strategy:
    """Fine-tune all groups with layer-wise LR decay: d groups below the head get decay**d."""
    if not 0.0 < decay <= 1.0:
        raise StrategyError(f"decay={decay!r} must be in (0, 1]; e.g. 0.5 or 0.8")
    return Strategy(
        "discriminative_lr",
        _fixed(Phase("ft", lambda layer_groups: freeze.layerwise_lr_rules(layer_groups, decay))),
    )


def l2_sp(alpha: float = 0.01) -> Strategy:
    """Full fine-tuning plus ``alpha/2 * ||w - w_A||^2`` on trainable non-head leaves (L2-SP)."""
    if not alpha >= 0:
        raise StrategyError(f"alpha={alpha!r} must be >= 0 (L2-SP strength)")
    return Strategy("l2_sp", _fixed(Phase("ft", _all_trainable, l2sp=float(alpha))))


def surgical(group: int | str = 0, train_head: bool = True) -> Strategy:
    """Tune a single layer group (Lee et al., surgical fine-tuning).

    Args:
      group: index into ``layer_groups`` (negative counts from the head) or a group name.
      train_head: also train the head, which a new label space needs (it starts re-initialised).
    """
    if isinstance(group, bool) or not isinstance(group, (int, str)):
        raise StrategyError(f"group={group!r} must be a group index or name")

    def rules(layer_groups: Sequence[str]) -> Rules:
        if isinstance(group, int):
            if not -len(layer_groups) <= group < len(layer_groups):
                raise StrategyError(
                    f"group={group} is out of range for groups {', '.join(layer_groups)}"
                    f" (use 0..{len(layer_groups) - 1})"
                )
            name = layer_groups[group]
        else:
            name = group
        trainable = {name, layer_groups[-1]} if train_head else {name}
        return train_groups_rules(sorted(trainable))(layer_groups)

    return Strategy("surgical", _fixed(Phase(f"surgical_{group}", rules)))


def freezeout(t0: float = 0.5, anneal: bool = True, scaled: bool = False) -> Strategy:
    """FreezeOut (Brock et al.): freeze groups front-to-back during training to save compute.

    Group ``i`` of ``n`` trains until ``t_i = t0 + (1 - t0) * i / (n - 1)`` of the budget (the
    head trains to the end), so phase ``j`` runs with the first ``j`` groups frozen. Frozen
    groups cost no backward pass, and with the "frozen" BN policy their forward can be cached.

    Args:
      t0: when the first group freezes, as a fraction of training.
      anneal: as in the paper, each group's learning rate decays to 0 by a cosine over
        ``[0, t_i]`` (:class:`GroupCosineDecay`) so it freezes where its rate reaches 0;
        False freezes groups at constant rate (the schedule alone).
      scaled: the paper's "scaled" variant: group ``i`` starts at ``1 / t_i`` times the rate.
    """
    t0 = _check_fraction("t0", t0)
    if scaled and not anneal:
        raise StrategyError("scaled=True needs anneal=True (it scales the annealed rates)")

    def build(layer_groups: Sequence[str]) -> tuple[Phase, ...]:
        n = len(layer_groups)
        ends = [t0 + (1.0 - t0) * i / max(n - 1, 1) for i in range(n)]
        starts = [0.0] + ends[:-1]
        group_lr = (
            GroupCosineDecay(tuple(zip(layer_groups, ends)), scaled=scaled) if anneal else None
        )
        return tuple(
            Phase(f"freezeout{j}", _freeze_first(j), fraction=end - begin, group_lr=group_lr)
            for j, (begin, end) in enumerate(zip(starts, ends))
            if end > begin
        )

    return Strategy("freezeout", build)


STRATEGIES: dict[str, Callable[..., Strategy]] = {
    "scratch": scratch,
    "linear_probe": linear_probe,
    "freeze_first_k": freeze_first_k,
    "full_ft": full_ft,
    "lp_ft": lp_ft,
    "gradual_unfreeze": gradual_unfreeze,
    "discriminative_lr": discriminative_lr,
    "l2_sp": l2_sp,
    "surgical": surgical,
    "freezeout": freezeout,
}


def get_strategy(name: str, **options: Any) -> Strategy:
    """Builds a registered strategy.

    Args:
      name: one of ``STRATEGIES``.
      **options: the strategy's options (e.g. ``k=2`` for "freeze_first_k").

    Returns:
      The :class:`Strategy`; ``strategy.phases(model.layer_groups)`` gives its phases.

    Raises:
      StrategyError: one line naming the unknown strategy/option and the valid choices.

    Example:
      >>> [p.name for p in get_strategy("lp_ft", ft_lr=0.1).phases(("body", "head"))]
      ['lp', 'ft']
    """
    if name not in STRATEGIES:
        raise StrategyError(
            f"unknown strategy {name!r}{did_you_mean(name, STRATEGIES)};"
            f" choices: {', '.join(STRATEGIES)}"
        )
    builder = STRATEGIES[name]
    valid = list(inspect.signature(builder).parameters)
    for option in options:
        if option not in valid:
            raise StrategyError(
                f"unknown option {option!r} for strategy {name!r}{did_you_mean(option, valid)};"
                f" valid options: {', '.join(valid) or 'none'}"
            )
    return dataclasses.replace(builder(**options), options=dict(options))


def phase_steps(phases: Sequence[Phase], total_steps: int) -> list[int]:
    """Splits a step budget over phases: fixed ``steps`` first, fractions of the rest after.

    Fractional boundaries are rounded cumulatively, so the counts add up exactly.

    Example:
      >>> phase_steps(get_strategy("lp_ft", lp_fraction=0.3).phases(("body", "head")), 10)
      [3, 7]
    """
    fixed = sum(p.steps for p in phases if p.steps is not None)
    fractions = [p.fraction for p in phases if p.steps is None]
    if fixed > total_steps:
        raise StrategyError(f"phases fix {fixed} steps but the budget is total_steps={total_steps}")
    if fractions and not math.isclose(sum(fractions), 1.0, rel_tol=1e-6):
        raise StrategyError(f"phase fractions sum to {sum(fractions):.4f}; they must sum to 1")
    share = total_steps - fixed
    out, cumulative, done = [], 0.0, 0
    for phase in phases:
        if phase.steps is not None:
            out.append(phase.steps)
            continue
        cumulative += phase.fraction
        end = round(cumulative * share)
        out.append(end - done)
        done = end
    return out


# ---- driver --------------------------------------------------------------------------------------


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


@functools.lru_cache(maxsize=32)
def _phase_loop(
    model, plan_key, tx, schedule, bn_policy, l2sp, compute_dtype, start, mesh, vmapped
):
    """One compiled loop per distinct phase, shared by every run in the process (sweeps).

    ``schedule``: :func:`phase_transform`'s arguments after ``tx``, hashable.
    ``vmapped``: the loop maps over a leading seed axis of every argument (state, data, batch
    indices, rng), so S seeds train in one compiled call.
    """
    loop = make_train_loop(
        model,
        plan_key.plan,
        phase_transform(tx, *schedule),
        bn_policy=bn_policy,
        l2sp=l2sp,
        compute_dtype=compute_dtype,
        start=start,
        mesh=mesh,
    )
    return jax.jit(jax.vmap(loop), donate_argnums=0) if vmapped else loop


_AOT: dict[tuple, Any] = {}


def _compiled(loop: Callable[..., Any], args: tuple) -> Callable[..., Any]:
    """``loop`` compiled ahead of time for these argument shapes, cached for the process.

    Compiling before the call keeps compilation out of the measured step time, and the cache
    keeps every run of a sweep with the same phase and shapes on one executable.
    """
    leaves, treedef = jax.tree.flatten(args)
    key = (loop, treedef, tuple((np.shape(x), jnp.result_type(x)) for x in leaves))
    if key not in _AOT:
        _AOT[key] = loop.lower(*args).compile()
    return _AOT[key]


@dataclasses.dataclass
class PhaseRun:
    """Result of :func:`run_phases`.

    Attributes:
      variables: the trained Linen variables.
      state: the final phase's train state.
      history: one dict per scanned chunk: phase, step (global, after the chunk), loss, acc.
      plans: the freeze plan of each phase that ran, by phase name.
      carried: per phase switch ("lp->ft"), the parameter paths whose optimizer state carried.
      cached_groups: per phase, how many leading groups ran from a feature cache (0 = none).
    """

    variables: dict[str, PyTree]
    state: TrainState
    history: list[dict[str, Any]]
    plans: dict[str, FreezePlan]
    carried: dict[str, tuple[str, ...]]
    cached_groups: dict[str, int]


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


def _pad(a: Any, rows: int | None) -> np.ndarray:
    a = np.asarray(a)
    if rows is None or rows == len(a):
        return a
    return np.concatenate([a, np.zeros((rows - len(a), *a.shape[1:]), a.dtype)])


def run_phases(
    model: nn.Module,
    variables: Mapping[str, PyTree],
    strategy: Strategy,
    tx: optax.GradientTransformation,
    x: np.ndarray,
    y: np.ndarray,
    *,
    total_steps: int,
    batch_size: int,
    seed: int = 0,
    bn_policy: str = "frozen",
    steps_per_call: int = 100,
    compute_dtype: Any = None,
    reference: PyTree = None,
    cache_features: bool = False,
    mesh: Mesh | None = None,
    on_chunk: Callable[[dict[str, Any]], None] | None = None,
    on_phase_start: Callable[[str, TrainState], None] | None = None,
    on_phase_end: Callable[[str, TrainState], None] | None = None,
    checkpointer: Checkpointer | None = None,
    on_resume: Callable[[int], None] | None = None,
    pad_to: int | None = None,
    seeds: Sequence[int] | None = None,
) -> PhaseRun:
    """Trains ``model`` through a strategy's phases with one compiled scan loop per phase.

    Args:
      model: a jaxtl model.
      variables: starting variables (A's weights transferred, or B's init for "scratch").
      strategy: from :func:`get_strategy` (built here for ``model.layer_groups``).
      tx: base optax transformation; each phase chains ``optax.scale(phase.lr)`` and its
        ``group_lr`` schedule onto it (:func:`phase_transform`).
      x, y: training inputs and int labels (numpy); they are put on device once.
      total_steps: step budget shared by the phases (:func:`phase_steps`).
      batch_size: examples per step (global, across devices when ``mesh`` is given).
      seed: keys the data order and dropout.
      bn_policy: default BatchNorm policy; a phase's ``bn_policy`` overrides it. On entering an
        "adabn" phase the running statistics are re-estimated on ``x`` with :func:`adabn`.
      steps_per_call: steps per compiled scan (one metrics record per chunk).
      compute_dtype: e.g. ``jnp.bfloat16`` (float32 master weights).
      reference: L2-SP anchor; defaults to ``variables["params"]`` (A's weights).
      cache_features: when a phase's frozen prefix is deterministic (see
        :func:`jaxtl.train.features.can_cache`; no augmentation happens here), compute its
        output once and train the remaining groups on the cache.
      mesh: data-parallel mesh (:func:`jaxtl.train.sharding.data_mesh`); None = one device.
      on_chunk: called with each history record as it is produced (logging).
      on_phase_start, on_phase_end: called with (phase name, state) when a phase begins (after
        the optimizer-state carry-over) and ends (checkpointing, per-phase evaluation). The
        state's buffers are donated to the next step: copy what you keep.
      checkpointer: saves the state after every chunk whose global step is a multiple of its
        ``every`` and at each phase end; when it already holds a checkpoint the run resumes
        from the newest readable one. Chunk boundaries are global multiples of
        ``steps_per_call`` (and phase ends), so a resumed run repeats exactly the same compiled
        calls on the same batches as an uninterrupted one: on CPU the results are bit-identical.
      on_resume: called with the restored step before training continues (e.g. to drop
        metrics logged after that checkpoint).
      pad_to: pad the on-device training arrays to this many rows (never sampled), so runs
        on different subset sizes of one dataset share one compiled loop per phase.
      seeds: train one model per seed in a single compiled, ``jax.vmap``-ed loop. Then
        ``variables``, ``reference``, ``x`` and ``y`` carry a leading axis of ``len(seeds)``
        (one training set per seed), ``seed`` is unused, the returned variables and state are
        stacked the same way, and history values are per-seed lists. Not combined with ``mesh``.

    Returns:
      A :class:`PhaseRun`.

    Example:
      >>> run = run_phases(model, variables, get_strategy("lp_ft"), optax.adam(1e-3),
      ...                  ds.x_train, ds.y_train, total_steps=500, batch_size=64)  # doctest: +SKIP
    """
    phases = strategy.phases(model.layer_groups)
    check_bn_policy(bn_policy)
    if mesh is not None and batch_size % mesh.size:
        raise ValueError(
            f"batch_size={batch_size} does not split over the mesh's {mesh.size} devices;"
            f" use a multiple of {mesh.size}"
        )
    budgets = phase_steps(phases, total_steps)
    variables = dict(variables)
    if reference is None and any(p.l2sp for p in phases):
        reference = variables["params"]
    vmapped = seeds is not None
    if vmapped and mesh is not None:
        raise ValueError("seeds= (vmapped seeds) and mesh= (data parallel) are exclusive; pick one")
    seed_list = list(seeds) if vmapped else [seed]
    rngs = [jax.random.fold_in(jax.random.key(s), 1) for s in seed_list]
    rng = jnp.stack(rngs) if vmapped else rngs[0]
    per_seed = (lambda tree, i: jax.tree.map(lambda a: a[i], tree)) if vmapped else None
    n = y.shape[-1] if vmapped else len(y)
    if pad_to is not None and pad_to < n:
        raise ValueError(f"pad_to={pad_to} is smaller than the {n} training examples")
    pad = (
        (lambda a: np.stack([_pad(r, pad_to) for r in np.asarray(a)]))
        if vmapped
        else (lambda a: _pad(a, pad_to))
    )
    # Host arrays in, so every process of a multi-host run builds the same replicated copy.
    x_device, y_device = sharding.put_replicated(mesh, (pad(x), pad(y)))

    def for_each_seed(fn, variables, x):
        """Applies a per-model host function (adabn, feature caching) to every seed."""
        if not vmapped:
            return fn(variables, x)
        outs = [fn(per_seed(variables, i), x[i]) for i in range(len(seed_list))]
        return jax.tree.map(lambda *a: jnp.stack(a), *outs)

    history: list[dict[str, Any]] = []
    plans: dict[str, FreezePlan] = {}
    carried: dict[str, tuple[str, ...]] = {}
    cached: dict[str, int] = {}
    ends = np.cumsum(budgets).tolist()

    one_model = per_seed(variables["params"], 0) if vmapped else variables["params"]

    def phase_plan(index: int) -> FreezePlan:
        return freeze.plan(one_model, phases[index].rules(model.layer_groups))

    def phase_schedule(index: int) -> tuple[Any, ...]:
        """phase_transform's arguments after tx; the step span only matters with a group_lr."""
        phase = phases[index]
        if phase.group_lr is None:
            return (phase.lr,)  # the same key for every budget: sweeps share the loop
        return (phase.lr, phase.group_lr, ends[index] - budgets[index], total_steps)

    def phase_state(index: int, start_step: int) -> TrainState:
        phase = phases[index]
        create = lambda v, r: create_train_state(
            v,
            phase_plan(index),
            phase_transform(tx, *phase_schedule(index)),
            reference=r if phase.l2sp else None,
            step=start_step,
        )
        return jax.vmap(create)(variables, reference) if vmapped else create(variables, reference)

    def phase_of(step: int) -> int:
        return next(i for i, end in enumerate(ends) if step <= end and budgets[i] > 0)

    restored = None
    if checkpointer is not None:
        restored = checkpointer.restore_latest(
            lambda s: jax.eval_shape(lambda: phase_state(phase_of(s), s))
        )
    resume_step = restored[0] if restored is not None else 0
    if restored is not None and on_resume is not None:
        on_resume(resume_step)

    state: TrainState | None = None
    previous: tuple[str, FreezePlan, PyTree] | None = None
    previous_policy = None
    step = 0
    for index, (phase, budget) in enumerate(zip(phases, budgets)):
        if budget <= 0:
            continue
        policy = phase.bn_policy or bn_policy
        plan = phase_plan(index)
        phase_begin = ends[index] - budget
        if restored is not None and resume_step >= ends[index]:
            # Finished before the checkpoint: only its plan (for the carry-over) and how it ran
            # (from a feature cache or not) matter.
            step = ends[index]
            previous_policy = policy
            plans[phase.name] = plan
            cached[phase.name] = (
                features_lib.can_cache(plan, model.layer_groups, policy) if cache_features else 0
            )
            if resume_step == ends[index]:
                state = restored[1]
                variables = state.variables
                previous = (phase.name, plan, state.opt_state)
            continue
        if restored is not None and phase_begin < resume_step:
            state = restored[1]  # resumed inside this phase: its state is the checkpoint's
            variables = state.variables
            step = resume_step
        else:
            if policy == "adabn" and previous_policy != "adabn":
                variables = for_each_seed(
                    lambda v, xs: adabn(model, v, xs, batch_size), variables, x
                )
            state = phase_state(index, step)
            if previous is not None:
                previous_name, previous_plan, previous_opt_state = previous
                opt_state, carried[f"{previous_name}->{phase.name}"] = carry_optimizer_state(
                    previous_opt_state, previous_plan, state.opt_state, plan
                )
                state = state.replace(opt_state=opt_state)
        previous_policy = policy
        start = 0
        inputs = x_device
        if cache_features:
            start = features_lib.can_cache(plan, model.layer_groups, policy)
            if start:
                features = for_each_seed(
                    functools.partial(features_lib.compute_features, model, stop=start),
                    variables,
                    x,
                )
                inputs = sharding.put_replicated(mesh, pad(features))
        cached[phase.name] = start
        state = sharding.put_replicated(mesh, state)
        loop = _phase_loop(
            model,
            _PlanKey(plan),
            tx,
            phase_schedule(index),
            policy,
            phase.l2sp,
            compute_dtype,
            start,
            mesh,
            vmapped,
        )
        if on_phase_start is not None:
            on_phase_start(phase.name, state)
        while step < ends[index]:
            # Boundaries at global multiples of steps_per_call: a resumed run replays the same calls.
            chunk = min(steps_per_call - step % steps_per_call, ends[index] - step)
            idx = np.stack([batch_schedule(n, batch_size, s, step, chunk) for s in seed_list])
            args = (state, inputs, y_device, idx if vmapped else idx[0], rng)
            call = _compiled(loop, args)
            started = time.perf_counter()
            state, metrics = call(*args)
            metrics = jax.block_until_ready(metrics)
            step += chunk
            record = {
                "phase": phase.name,
                "step": step,
                "chunk_steps": chunk,
                "seconds": time.perf_counter() - started,  # running the call, compilation excluded
            }
            if vmapped:  # one value per seed: mean over the chunk's steps
                record.update(
                    {k: np.asarray(jnp.mean(v, axis=1)).tolist() for k, v in metrics.items()}
                )
            else:
                record.update({k: float(jnp.mean(v)) for k, v in metrics.items()})
            history.append(record)
            if on_chunk is not None:
                on_chunk(record)
            if checkpointer is not None:
                checkpointer.save(step, state, {"phase": phase.name}, force=step == ends[index])
        if on_phase_end is not None:
            on_phase_end(phase.name, state)
        variables = state.variables
        plans[phase.name] = plan
        previous = (phase.name, plan, state.opt_state)
    if state is None:
        raise StrategyError(f"total_steps={total_steps} gives every phase 0 steps; raise it")
    return PhaseRun(dict(variables), state, history, plans, carried, cached)
