"""The train state: one pytree holding everything a compiled step reads and writes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxtl.freeze import FreezePlan

PyTree = Any
TxFactory = Callable[[Mapping[str, jax.Array]], optax.GradientTransformation]


@flax.struct.dataclass
class TrainState:
    """Everything a train step carries from one step to the next.

    Attributes:
      step: global step count (int32 scalar); it keys dropout and survives phase switches.
      params: the full parameter tree, trainable and frozen leaves together.
      batch_stats: the Linen ``batch_stats`` collection (``{}`` for models without BatchNorm).
      opt_state: state of ``plan.optimizer(tx)`` for the current phase (trainable leaves only).
      reference: the weights L2-SP pulls towards (A's weights), or None when L2-SP is off.
      hparams: the numbers a tuning sweep varies (``lr``, ``phase_lr``, ``l2sp``, ``decay``; see
        :mod:`jaxtl.train.phase`) as float32 scalars, or None when the step's optimizer is a
        fixed optax transformation. Values, not constants: a sweep reuses one compiled step.
    """

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: PyTree
    reference: PyTree = None
    hparams: PyTree = None

    @property
    def variables(self) -> dict[str, PyTree]:
        """The Linen variables dict (``params`` and, when present, ``batch_stats``)."""
        return variables_of(self.params, self.batch_stats)


def variables_of(params: PyTree, batch_stats: PyTree) -> dict[str, PyTree]:
    """Builds Linen variables from params and a possibly empty batch_stats collection."""
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def create_train_state(
    variables: Mapping[str, PyTree],
    plan: FreezePlan,
    tx: optax.GradientTransformation | TxFactory,
    *,
    reference: PyTree = None,
    step: int = 0,
    hparams: Mapping[str, Any] | None = None,
) -> TrainState:
    """Builds the state for a phase: optimizer state over the plan's trainable partition only.

    Args:
      variables: Linen variables with "params" and optionally "batch_stats".
      plan: the phase's freeze plan (built on ``variables["params"]``).
      tx: the optax transformation; it is wrapped with ``plan.optimizer``. Or a factory
        ``hparams -> transformation`` (:class:`jaxtl.train.phase.PhaseStep.transform`), built
        here from ``hparams`` and again inside every step from ``state.hparams``.
      reference: weights for L2-SP (usually A's params); copied so the state owns its buffers.
      step: initial global step (non-zero when a later phase continues a run).
      hparams: float32 scalars for a factory ``tx`` (and L2-SP's ``l2sp``); stored in the state.

    Returns:
      A :class:`TrainState`.

    Example:
      >>> state = create_train_state(variables, plan, optax.adam(1e-3))  # doctest: +SKIP
    """
    params = variables["params"]
    # Copies, so donating the state's buffers never invalidates the caller's variables (or
    # donates one buffer twice when `reference` is the same tree as `params`).
    params = jax.tree.map(jnp.copy, params)
    batch_stats = jax.tree.map(jnp.copy, dict(variables.get("batch_stats", {})))
    if reference is not None:
        reference = jax.tree.map(jnp.copy, reference)
    if hparams is not None:
        hparams = {k: jnp.asarray(v, jnp.float32) for k, v in hparams.items()}
    if not isinstance(tx, optax.GradientTransformation):
        if hparams is None:
            raise ValueError("a transformation factory needs hparams=; pass the sweep's values")
        tx = tx(hparams)
    return TrainState(
        step=jnp.asarray(step, jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=plan.optimizer(tx).init(params),
        reference=reference,
        hparams=hparams,
    )
