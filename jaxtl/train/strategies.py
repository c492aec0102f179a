"""The strategy catalogue: every transfer strategy as a sequence of freeze phases.

A :class:`Phase` is a freeze plan factory (rules from the model's ``layer_groups``) plus a step
budget, a learning-rate multiplier and optional BatchNorm / L2-SP / layer-wise decay settings.
A :class:`Strategy` is an ordered tuple of phases; :func:`jaxtl.train.driver.run_phases` trains
them.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from jaxtl.freeze import selectors
from jaxtl.suggest import did_you_mean
from jaxtl.train.schedules import GroupCosineDecay
from jaxtl.train.steps import check_bn_policy

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
      outside_budget: its fixed ``steps`` come on top of the run's step budget instead of out
        of it (LP-FT's probe on cached features, which costs next to nothing per step).
      lr: multiplier on the optimizer's updates during this phase.
      group_lr: per-group multiplier that changes over training, ``(group, t) -> multiplier``
        with ``t`` = global step / total steps (e.g. FreezeOut's :class:`GroupCosineDecay`);
        None = constant. It must be hashable (a frozen dataclass): compiled loops are cached
        by it.
      bn_policy: BatchNorm policy override ("frozen", "train", "adabn"); None = the run's.
      l2sp: L2-SP strength alpha towards the source weights; None or 0 = off.
      group_decay: layer-wise learning-rate decay (a group d below the head gets decay**d);
        None or 1 = off.
    """

    name: str
    rules: RulesFactory
    fraction: float | None = 1.0
    steps: int | None = None
    outside_budget: bool = False
    lr: float = 1.0
    group_lr: Callable[[str, jax.Array], jax.Array] | None = None
    bn_policy: str | None = None
    l2sp: float | None = None
    group_decay: float | None = None

    @property
    def uses_l2sp(self) -> bool:
        """Whether the penalty is in the loss; alpha = 0 runs exactly full fine-tuning's step."""
        return bool(self.l2sp)

    @property
    def uses_group_decay(self) -> bool:
        """Whether updates are scaled per group; decay = 1 runs exactly the undecayed step."""
        return self.group_decay is not None and self.group_decay != 1.0

    def hparams(self) -> dict[str, float]:
        """This phase's numbers that travel as run-time values (see :mod:`jaxtl.train.phase`)."""
        return {
            "phase_lr": float(self.lr),
            "l2sp": float(self.l2sp or 0.0),
            "decay": 1.0 if self.group_decay is None else float(self.group_decay),
        }

    def structure(self, layer_groups: Sequence[str]) -> tuple:
        """What decides this phase's compiled program, without the numbers a sweep may vary.

        Phases of two strategies with equal structures train side by side in one program.
        """
        return (
            self.name,
            tuple(
                (str(p), None if v is None else tuple(sorted(v.items())))
                for p, v in self.rules(layer_groups)
            ),
            self.fraction,
            self.steps,
            self.outside_budget,
            self.group_lr,
            self.bn_policy,
            self.uses_l2sp,
            self.uses_group_decay,
        )


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
      lora: the LoRA adapters its model needs, ``{"rank", "alpha", "groups"}`` (arguments of
        :func:`jaxtl.models.with_lora`), or None: the strategy trains the model as it is. The
        runner builds the adapted model and loads A's weights into it.
    """

    name: str
    build: Callable[[Sequence[str]], tuple[Phase, ...]]
    from_source: bool = True
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    lora: Mapping[str, Any] | None = None

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


def lp_ft(lp_fraction: float = 0.5, ft_lr: float = 0.1, probe_steps: int = 0) -> Strategy:
    """Linear probe, then full fine-tuning at ``ft_lr`` times the learning rate (Kumar et al.).

    Args:
      lp_fraction: the probe's share of the step budget (the fine-tune gets the rest).
        ``lp_fraction = 0`` skips the probe: with ``ft_lr = 1`` that is exactly ``full_ft``.
      ft_lr: the fine-tuning phase's multiplier on the learning rate.
      probe_steps: > 0 trains the probe for this many steps *on top of* the budget, and the
        fine-tune gets the whole budget, as Kumar et al. do (probe to convergence, then the
        same fine-tuning as ``full_ft``); on cached features a probe step costs next to nothing.
        ``lp_fraction`` is then unused.
    """
    if not ft_lr > 0:
        raise StrategyError(f"ft_lr={ft_lr!r} must be > 0 (a multiplier on the learning rate)")
    if isinstance(probe_steps, bool) or not isinstance(probe_steps, int) or probe_steps < 0:
        raise StrategyError(f"probe_steps={probe_steps!r} must be an int >= 0 (0 = lp_fraction)")
    if probe_steps:
        return Strategy(
            "lp_ft",
            _fixed(
                Phase("lp", _head_only, steps=probe_steps, outside_budget=True),
                Phase("ft", _all_trainable, lr=float(ft_lr)),
            ),
        )
    if not 0.0 <= lp_fraction < 1.0:
        raise StrategyError(f"lp_fraction={lp_fraction!r} must be in [0, 1) (0 = no probe)")
    lp_fraction = float(lp_fraction)
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
    """Fine-tune all groups with layer-wise LR decay: d groups below the head get decay**d.

    The decay is a run-time value (:func:`jaxtl.train.schedules.scale_by_group_decay`), so a sweep
    over it compiles once; ``decay = 1`` is exactly ``full_ft``.
    """
    if not 0.0 < decay <= 1.0:
        raise StrategyError(f"decay={decay!r} must be in (0, 1]; e.g. 0.5 or 0.8")
    return Strategy(
        "discriminative_lr", _fixed(Phase("ft", _all_trainable, group_decay=float(decay)))
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


def _head_and(selector_for: Callable[[str], selectors.Selector]) -> RulesFactory:
    """Rules factory: the head and the leaves ``selector_for(head)`` picks outside it train; the
    rest is frozen. A model where the selector picks nothing fails with the selector's name."""

    def rules(layer_groups: Sequence[str]) -> Rules:
        head = layer_groups[-1]
        return [(_group_pattern(head), {}), (selector_for(head), {}), (".*", None)]

    return rules


def _leaf_name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


# Norm layers as Flax names them (BatchNorm_0, LayerNorm_1, GroupNorm_0) or as users often do
# (norm, bn1, ln_f, final_norm).
_NORM_MODULE = re.compile(r"(?i).*norm.*|bn\d*|ln(_?\w+)?")


def _is_norm_param(path: str) -> bool:
    parts = path.split("/")
    return (
        len(parts) > 1
        and parts[-1] in ("scale", "bias")
        and bool(_NORM_MODULE.fullmatch(parts[-2]))
    )


def biases(head: str) -> selectors.Selector:
    """BitFit's leaves: every ``bias`` outside the head (Dense/Conv biases, norm offsets)."""
    return selectors.predicate(
        lambda p, _: _leaf_name(p) == "bias" and not p.startswith(head + "/"),
        "bitfit: biases outside the head (Dense/Conv biases, norm offsets)",
    )


def norm_params(head: str) -> selectors.Selector:
    """norm_only's leaves: normalisation scales and offsets outside the head."""
    return selectors.predicate(
        lambda p, _: _is_norm_param(p) and not p.startswith(head + "/"),
        "norm_only: norm scales/offsets outside the head (BatchNorm, LayerNorm, GroupNorm)",
    )


def adapters(head: str) -> selectors.Selector:
    """LoRA's leaves: every ``lora_a``/``lora_b`` (jaxtl.models.with_lora's and nnx.LoRA's)."""
    return selectors.predicate(
        lambda p, _: _leaf_name(p) in ("lora_a", "lora_b") and not p.startswith(head + "/"),
        "lora: adapters lora_a/lora_b below the head (a model from"
        " jaxtl.models.with_lora, or nnx.LoRA layers)",
    )


def bitfit() -> Strategy:
    """BitFit (Ben Zaken et al.): only the biases train, with the head; every kernel is frozen.

    Biases are those of Dense/Conv layers and the offsets of normalisation layers, as in the
    paper; a model with neither outside its head fails with one line saying so.
    """
    return Strategy("bitfit", _fixed(Phase("bitfit", _head_and(biases))))


def norm_only() -> Strategy:
    """Only the normalisation layers' scales and offsets (BatchNorm, LayerNorm, GroupNorm) and
    the head train; a model without norm layers outside its head fails with one line."""
    return Strategy("norm_only", _fixed(Phase("norm_only", _head_and(norm_params))))


def lora(rank: int = 4, alpha: float = 8.0, groups: Sequence[str] | None = None) -> Strategy:
    """LoRA (Hu et al.): low-rank adapters on the Dense/Conv kernels of ``groups`` train, with
    the head; the base kernels are frozen.

    The model gets adapters from :func:`jaxtl.models.with_lora` (``lora_b = 0``, so training
    starts exactly at A's function); :func:`jaxtl.models.merge_lora` folds them into the kernels.

    Args:
      rank: the adapters' rank.
      alpha: their update is scaled by ``alpha / rank``.
      groups: layer groups that get adapters; None = every group but the head.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise StrategyError(f"rank={rank!r} must be an int >= 1, e.g. 4")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise StrategyError(f"alpha={alpha!r} must be a number > 0, e.g. 8")
    if groups is not None and (
        isinstance(groups, str) or not all(isinstance(g, str) for g in groups)
    ):
        raise StrategyError(f"groups={groups!r} must be a list of layer group names or None")
    chosen = None if groups is None else tuple(groups)

    def build(layer_groups: Sequence[str]) -> tuple[Phase, ...]:
        if chosen is not None:
            _check_groups(chosen, layer_groups)
            if layer_groups[-1] in chosen or not chosen:
                raise StrategyError(
                    f"groups={list(chosen)} must name groups below the head"
                    f" ({', '.join(layer_groups[:-1])}); the head trains whole"
                )
        return (Phase("lora", _head_and(adapters)),)

    spec = {"rank": rank, "alpha": float(alpha), "groups": chosen}
    return Strategy("lora", build, lora=spec)


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
    "bitfit": bitfit,
    "norm_only": norm_only,
    "lora": lora,
}


def _check_name(name: str) -> None:
    if name not in STRATEGIES:
        raise StrategyError(
            f"unknown strategy {name!r}{did_you_mean(name, STRATEGIES)};"
            f" choices: {', '.join(STRATEGIES)}"
        )


def declared_options(name: str) -> dict[str, Any]:
    """The options strategy ``name`` declares, with their defaults.

    Example:
      >>> declared_options("lp_ft")
      {'lp_fraction': 0.5, 'ft_lr': 0.1, 'probe_steps': 0}
    """
    _check_name(name)
    return {p.name: p.default for p in inspect.signature(STRATEGIES[name]).parameters.values()}


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
    valid = list(declared_options(name))
    builder = STRATEGIES[name]
    for option in options:
        if option not in valid:
            raise StrategyError(
                f"unknown option {option!r} for strategy {name!r}{did_you_mean(option, valid)};"
                f" valid options: {', '.join(valid) or 'none'}"
            )
    return dataclasses.replace(builder(**options), options=dict(options))


def phase_steps(phases: Sequence[Phase], total_steps: int) -> list[int]:
    """Splits a step budget over phases: fixed ``steps`` first, fractions of the rest after.

    Fractional boundaries are rounded cumulatively, so the counts add up exactly. Phases marked
    ``outside_budget`` get their fixed steps on top of the budget.

    Example:
      >>> phase_steps(get_strategy("lp_ft", lp_fraction=0.3).phases(("body", "head")), 10)
      [3, 7]
    """
    fixed = sum(p.steps for p in phases if p.steps is not None and not p.outside_budget)
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
