"""Base optimizers whose learning rate is a run-time value, and the numbers a sweep varies.

The numbers a tuning sweep varies (learning rate, a phase's multiplier, L2-SP's alpha, the
layer-wise decay) travel in ``TrainState.hparams`` as float32 scalars rather than being baked
into the compiled step, so every grid point and every seed of a sweep runs one program. A base
optimizer is therefore a function ``lr -> optax.GradientTransformation``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxtl.train.schedules import scale_by_group_learning_rate

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
        # once by -(lr * multiplier), as a static per-leaf lr_mult would be.
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
    """``tx`` as a base optimizer (``lr -> transformation``); a plain transformation is fixed.

    Example:
      >>> as_base_optimizer(optax.adam(1e-3))  # doctest: +ELLIPSIS
      FixedTx(tx=...)
    """
    if isinstance(tx, (AdamW, FixedTx)):
        return tx
    if isinstance(tx, optax.GradientTransformation):
        return FixedTx(tx)
    if callable(tx):
        return tx
    raise TypeError(
        f"optimizer must be an optax.GradientTransformation or lr -> transformation"
        f" (e.g. jaxtl.train.AdamW(clip_norm=1.0, weight_decay=1e-4)); got {type(tx).__name__}"
    )
