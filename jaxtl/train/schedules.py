"""Per-group learning-rate transforms that a phase chains after the base optimizer.

Both take their numbers at run time (a schedule's clock lives in the optimizer state; a decay is a
traced hyperparameter), so a tuning sweep over them reuses one compiled program.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxtl.freeze import path_str


def _group_of(path) -> str:
    return path_str(path).split("/", 1)[0]


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
            return update * schedule(_group_of(path), t).astype(update.dtype)

        scaled = jax.tree_util.tree_map_with_path(scale, updates)
        return scaled, GroupScheduleState(optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


def group_decay_multipliers(
    decay: jax.Array | float, layer_groups: Sequence[str]
) -> dict[str, jax.Array]:
    """``{group: decay**d}`` for a group ``d`` groups below the head (the head gets exactly 1).

    Example:
      >>> {g: float(m) for g, m in group_decay_multipliers(0.5, ("stem", "head")).items()}
      {'stem': 0.5, 'head': 1.0}
    """
    n = len(layer_groups)
    return {
        g: jnp.power(jnp.asarray(decay, jnp.float32), n - 1 - i) for i, g in enumerate(layer_groups)
    }


def scale_by_group_decay(
    decay: jax.Array | float, layer_groups: Sequence[str]
) -> optax.GradientTransformation:
    """Layer-wise learning-rate decay: a group ``d`` groups below the head scales by ``decay**d``.

    ULMFiT's discriminative fine-tuning as a transform: ``decay`` may be a traced scalar, so a
    sweep over it shares one compiled step (the plan's static ``lr_mult`` could not).
    ``decay = 1`` multiplies every update by exactly 1.

    Example:
      >>> tx = scale_by_group_decay(0.5, ("stem", "body", "head"))
      >>> u, _ = tx.update({"stem": jnp.ones(1), "head": jnp.ones(1)}, tx.init(None))
      >>> float(u["stem"][0]), float(u["head"][0])
      (0.25, 1.0)
    """
    head = layer_groups[-1]

    def update_fn(updates, state, params=None):
        del params
        multipliers = group_decay_multipliers(decay, layer_groups)

        def scale(path, update):
            group = _group_of(path)
            if group == head:  # its multiplier is exactly 1
                return update
            return update * multipliers[group].astype(update.dtype)

        return jax.tree_util.tree_map_with_path(scale, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def scale_by_group_learning_rate(
    lr: jax.Array | float, multipliers: dict[str, jax.Array]
) -> optax.GradientTransformation:
    """``optax.scale_by_learning_rate`` with one learning rate per layer group: ``lr * m[group]``.

    Each leaf is multiplied once, by the scalar ``-(lr * m)``, as a compile-time learning rate
    would be (XLA folds constant factors into one): a separate run-time scale after the learning
    rate rounds differently (see :class:`jaxtl.train.phase.AdamW`).

    Example:
      >>> tx = scale_by_group_learning_rate(0.1, {"body": 0.5, "head": 1.0})
      >>> u, _ = tx.update({"body": jnp.ones(1), "head": jnp.ones(1)}, tx.init(None))
      >>> float(u["body"][0]), float(u["head"][0])
      (-0.05000000074505806, -0.10000000149011612)
    """

    def update_fn(updates, state, params=None):
        del params

        def scale(path, update):
            step_size = -(jnp.asarray(lr, jnp.float32) * multipliers[_group_of(path)])
            return update * step_size.astype(update.dtype)

        return jax.tree_util.tree_map_with_path(scale, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)
