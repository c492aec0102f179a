"""Compiled train and eval steps that differentiate only the trainable partition.

A step closes over one freeze plan, so each freeze phase compiles its own step. The loss is a
function of the trainable partition alone; the frozen partition enters as a plain input, so XLA
never builds the gradient of a frozen weight (equinox's partition/combine).

BatchNorm policy for frozen modules (``bn_policy``):

* ``"frozen"`` (default): groups whose parameters are all frozen run in inference mode (running
  averages, no dropout); so does a frozen BatchNorm inside a group that trains (its scale and
  offset frozen while adapters or kernels around it train, as under LoRA), which otherwise would
  normalise with batch statistics in training and with stale running ones at evaluation. After
  the step the ``batch_stats`` of every frozen module are restored, so a frozen module is
  bit-identical through training.
* ``"train"``: every module normalises with batch statistics and updates its running averages.
* ``"adabn"``: like ``"frozen"`` during training; the running averages are first re-estimated on
  the target data with :func:`adabn` (the runner calls it before a phase with this policy).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxtl.freeze import FreezePlan
from jaxtl.freeze.batch_stats import module_frozen
from jaxtl.suggest import did_you_mean
from jaxtl.train.state import TrainState, TxFactory, variables_of

PyTree = Any
StepFn = Callable[[TrainState, jax.Array, jax.Array, jax.Array], tuple[TrainState, dict]]

BN_POLICIES = ("frozen", "train", "adabn")


def check_bn_policy(bn_policy: str) -> str:
    """Returns ``bn_policy`` if it is known, else raises a one-line ValueError with the choices."""
    if bn_policy not in BN_POLICIES:
        raise ValueError(
            f"unknown bn_policy {bn_policy!r}{did_you_mean(bn_policy, BN_POLICIES)};"
            f" choices: {', '.join(BN_POLICIES)}"
        )
    return bn_policy


def frozen_groups(plan: FreezePlan, layer_groups: Sequence[str]) -> tuple[int, ...]:
    """Indices of the layer groups whose parameters are all frozen.

    Args:
      plan: a freeze plan over the model's params.
      layer_groups: the model's ``layer_groups`` (top-level keys of its params).

    Returns:
      Sorted group indices, e.g. ``(0, 1)`` for a linear probe of a 3-group model.

    Example:
      >>> frozen_groups(plan, ("stem", "block1", "head"))  # doctest: +SKIP
      (0, 1)
    """
    by_group: dict[str, list[bool]] = {}
    for path, frozen in zip(plan.paths, plan.frozen_flags):
        by_group.setdefault(path.split("/", 1)[0], []).append(frozen)
    return tuple(i for i, g in enumerate(layer_groups) if g in by_group and all(by_group[g]))


def _inference_groups(plan: FreezePlan, model: nn.Module, bn_policy: str) -> tuple[int, ...]:
    if check_bn_policy(bn_policy) == "train":
        return ()
    return frozen_groups(plan, model.layer_groups)


def _frozen_norms_on_running_averages(plan: FreezePlan) -> Callable[..., Any]:
    """A Linen method interceptor: a frozen BatchNorm that would normalise with batch statistics
    (its group trains) runs on its running averages instead, and leaves them unchanged."""

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__" or not isinstance(module, nn.BatchNorm):
            return next_fun(*args, **kwargs)
        # Flax lets a model decide use_running_average at the call instead of the constructor.
        if (
            kwargs.get("use_running_average", module.use_running_average)
            or len(args) > 1
            or not module_frozen(plan, "/".join(module.path))
        ):
            return next_fun(*args, **kwargs)
        kwargs = {k: v for k, v in kwargs.items() if k != "use_running_average"}
        inference = module.clone(parent=None, use_running_average=True)
        return inference.apply(dict(module.variables), *args, **kwargs)

    return interceptor


def cast_floating(tree: PyTree, dtype: Any) -> PyTree:
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )


def _l2sp_mask(plan: FreezePlan, head: str) -> PyTree:
    """True on trainable leaves outside the head: the leaves L2-SP pulls towards A's weights."""
    flags = [
        (not frozen) and not (path == head or path.startswith(head + "/"))
        for path, frozen in zip(plan.paths, plan.frozen_flags)
    ]
    return jax.tree_util.tree_unflatten(plan.treedef, flags)


def l2sp_penalty(params: PyTree, reference: PyTree, mask: PyTree, alpha: float) -> jax.Array:
    """``alpha / 2 * ||w - w_A||^2`` summed over the leaves where ``mask`` is True.

    Args:
      params: current parameters.
      reference: the starting point (A's weights), shaped like params.
      mask: bool pytree shaped like params (static Python bools).
      alpha: penalty strength.

    Returns:
      A float32 scalar.

    Example:
      >>> l2sp_penalty({"w": jnp.ones(2)}, {"w": jnp.zeros(2)}, {"w": True}, 0.1)
      Array(0.1, dtype=float32)
    """
    terms = [
        jnp.sum(jnp.square(p.astype(jnp.float32) - r.astype(jnp.float32)))
        for p, r, m in zip(
            jax.tree.leaves(params), jax.tree.leaves(reference), jax.tree.leaves(mask)
        )
        if m
    ]
    return 0.5 * alpha * sum(terms, jnp.zeros([], jnp.float32))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy with integer labels, in float32: the one loss of jaxtl.

    Example:
      >>> float(cross_entropy(jnp.zeros((1, 2)), jnp.array([0]))[0])  # log 2
      0.6931471824645996
    """
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def build_step(
    model: nn.Module,
    plan: FreezePlan,
    tx: optax.GradientTransformation | TxFactory,
    *,
    bn_policy: str = "frozen",
    l2sp: float | bool | None = None,
    compute_dtype: Any = None,
    start: int = 0,
) -> StepFn:
    """The un-jitted step function behind :func:`make_train_step` and the engine's chunk loop.

    Same arguments as :func:`make_train_step`; use it to embed a step in your own jitted code.
    ``tx`` may also be a factory ``hparams -> transformation`` and ``l2sp=True`` reads alpha
    from ``state.hparams["l2sp"]``: the numbers then live in the state, so one compiled step
    serves every value of a sweep (:class:`jaxtl.train.phase.PhaseStep` builds steps this way).
    """
    inference_groups = _inference_groups(plan, model, bn_policy)
    fixed_tx = isinstance(tx, optax.GradientTransformation)
    fixed_optimizer = plan.optimizer(tx) if fixed_tx else None
    penalty_mask = _l2sp_mask(plan, model.layer_groups[-1]) if l2sp else None
    # Under "train" every BatchNorm uses (and updates) batch statistics by definition.
    frozen_norms = None if bn_policy == "train" else _frozen_norms_on_running_averages(plan)

    def loss_fn(trainable, frozen, batch_stats, reference, alpha, x, y, rng):
        params = plan.merge(trainable, frozen)
        penalty = (
            l2sp_penalty(params, reference, penalty_mask, alpha)
            if l2sp
            else jnp.zeros([], jnp.float32)
        )
        if compute_dtype is not None:
            params = cast_floating(params, compute_dtype)
            x = x.astype(compute_dtype)
        with nn.intercept_methods(frozen_norms) if frozen_norms else contextlib.nullcontext():
            logits, updates = model.apply(
                variables_of(params, batch_stats),
                x,
                train=True,
                start=start,
                inference_groups=inference_groups,
                rngs={"dropout": rng},
                mutable=["batch_stats"],
            )
        logits = logits.astype(jnp.float32)
        loss = cross_entropy(logits, y).mean()
        acc = jnp.mean(jnp.argmax(logits, -1) == y)
        aux = (updates.get("batch_stats", {}), {"loss": loss, "acc": acc, "l2sp": penalty})
        return loss + penalty, aux

    def step(state: TrainState, x: jax.Array, y: jax.Array, rng: jax.Array):
        if l2sp and state.reference is None:
            raise ValueError(
                "l2sp is set but state.reference is None; pass"
                " create_train_state(..., reference=source_params)"
            )
        if not fixed_tx and state.hparams is None:
            raise ValueError("a transformation factory needs state.hparams; see create_train_state")
        alpha = state.hparams["l2sp"] if l2sp is True else l2sp
        optimizer = fixed_optimizer or plan.optimizer(tx(state.hparams))
        trainable, frozen = plan.split(state.params)
        dropout_rng = jax.random.fold_in(rng, state.step)
        grads, (batch_stats, metrics) = jax.grad(loss_fn, has_aux=True)(
            trainable, frozen, state.batch_stats, state.reference, alpha, x, y, dropout_rng
        )
        # The plan's optimizer takes full trees; zeros stand in for frozen gradients, which it
        # ignores (and XLA removes).
        full_grads = plan.merge(grads, jax.tree.map(jnp.zeros_like, frozen))
        updates, opt_state = optimizer.update(full_grads, state.opt_state, state.params)
        params = plan.apply_updates(state.params, updates)
        if bn_policy != "train":
            batch_stats = plan.restore_frozen_stats(state.batch_stats, batch_stats)
        else:
            batch_stats = jax.tree.map(
                lambda o, n: n.astype(o.dtype), state.batch_stats, batch_stats
            )
        new_state = state.replace(
            step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
        )
        if not l2sp:
            metrics = {k: v for k, v in metrics.items() if k != "l2sp"}
        return new_state, metrics

    return step


def make_train_step(
    model: nn.Module,
    plan: FreezePlan,
    tx: optax.GradientTransformation,
    *,
    bn_policy: str = "frozen",
    l2sp: float | None = None,
    compute_dtype: Any = None,
    start: int = 0,
) -> StepFn:
    """Compiles one train step for a freeze phase: ``(state, x, y, rng) -> (state, metrics)``.

    Gradients are taken only w.r.t. ``plan``'s trainable partition; the optimizer is
    ``plan.optimizer(tx)``; the state's buffers are donated. Dropout is keyed by
    ``fold_in(rng, state.step)``, so pass the same ``rng`` every step.

    Args:
      model: a jaxtl Linen model (``layer_groups``, ``start``/``inference_groups`` in apply).
      plan: the phase's freeze plan; static, so each phase compiles once.
      tx: optax transformation (learning rate included).
      bn_policy: "frozen", "train" or "adabn" (see the module docstring).
      l2sp: L2-SP strength alpha: adds ``alpha/2 * ||w - state.reference||^2`` over trainable
        non-head leaves; None disables it.
      compute_dtype: e.g. ``jnp.bfloat16``: params and inputs are cast inside the loss, master
        params, gradients and optimizer state stay float32.
      start: first group to run; inputs are then the features entering that group (feature
        caching, see :mod:`jaxtl.train.features`).

    Returns:
      The jitted step. Metrics: "loss" (cross-entropy), "acc" (batch accuracy) and, with L2-SP,
      "l2sp" (the penalty).

    Example:
      >>> step = make_train_step(model, plan, optax.adam(1e-3))  # doctest: +SKIP
      >>> state, metrics = step(state, x, y, jax.random.key(0))  # doctest: +SKIP
    """
    step = build_step(
        model, plan, tx, bn_policy=bn_policy, l2sp=l2sp, compute_dtype=compute_dtype, start=start
    )
    return jax.jit(step, donate_argnums=0)
