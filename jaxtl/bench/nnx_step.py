"""A Flax NNX user's train step: head only (a freeze plan) against all trainable, under ``nnx.jit``.

The head-only step is docs/freeze.md's "With Flax NNX" recipe: ``nnx.Optimizer(model,
plan.optimizer(tx), wrt=plan.nnx_filter)``, gradients only for ``plan.nnx_filter`` through
``nnx.DiffState``, frozen BatchNorms on running statistics through ``plan.nnx_view``. The
all-trainable step is plain NNX: ``wrt=nnx.Param`` and ``nnx.grad`` of the whole model.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

from jaxtl import freeze
from jaxtl.bench.timing import interleaved_ms, moment_bytes
from jaxtl.train import cross_entropy

HEAD_ONLY = [("head/.*", {}), (".*", None)]
ALL_TRAINABLE = [(".*", {})]


class DenseBlock(nnx.Module):
    """Linear -> BatchNorm -> ReLU."""

    def __init__(self, din: int, dout: int, rngs: nnx.Rngs):
        self.linear = nnx.Linear(din, dout, use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(dout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.relu(self.bn(self.linear(x)))


class MLP(nnx.Module):
    """The study's MLP in NNX: flatten, one :class:`DenseBlock` per width, a linear head.

    Example:
      >>> net = MLP(784, (256, 256, 128), 5, nnx.Rngs(0))
      >>> net(jnp.ones((2, 28, 28, 1))).shape  # doctest: +SKIP
      (2, 5)
    """

    def __init__(self, din: int, widths: Sequence[int], num_classes: int, rngs: nnx.Rngs):
        dims = [din, *widths]
        self.blocks = nnx.List([DenseBlock(a, b, rngs) for a, b in itertools.pairwise(dims)])
        self.head = nnx.Linear(dims[-1], num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def _loss(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
    return cross_entropy(model(x), y).mean()


def _train_step(plan: freeze.FreezePlan | None) -> Callable[..., jax.Array]:
    """The un-jitted step ``(model, optimizer, x, y) -> loss``; ``plan=None`` trains everything."""

    def step(model, optimizer, x, y):
        if plan is None:
            loss, grads = nnx.value_and_grad(_loss)(model, x, y)
        else:
            trainable = nnx.DiffState(0, plan.nnx_filter)  # no gradient for frozen variables
            loss, grads = nnx.value_and_grad(_loss, argnums=trainable)(plan.nnx_view(model), x, y)
        optimizer.update(model, grads)
        return loss

    return step


def _flops(step: Callable[..., jax.Array], model, optimizer, x, y) -> float:
    """XLA FLOPs of ``step`` through NNX's functional API (the program ``nnx.jit`` compiles)."""
    graphdef, state = nnx.split((model, optimizer))

    def pure(state, x, y):
        model, optimizer = nnx.merge(graphdef, state)
        loss = step(model, optimizer, x, y)
        return loss, nnx.state((model, optimizer))

    return freeze.cost(pure, state, x, y)["flops"]


def nnx_steps(
    widths: Sequence[int],
    input_shape: tuple[int, ...],
    num_classes: int,
    batch_size: int,
    rounds: int,
    warmup: int,
    seed: int,
    tx: optax.GradientTransformation | None = None,
) -> dict[str, Any]:
    """Head-only and all-trainable NNX train steps of :class:`MLP`: ms, XLA FLOPs, state bytes.

    Args:
      widths: hidden widths of the MLP.
      input_shape: one example's shape (flattened by the model).
      num_classes: outputs of the head.
      batch_size: examples per step.
      rounds, warmup: as in :func:`jaxtl.bench.timing.interleaved_ms`.
      seed: seeds the data and the init.
      tx: the optimizer (default: clip 1.0 then AdamW 1e-3, weight decay 1e-4).

    Returns:
      ``{"head_only": {...}, "all_trainable": {...}, "ms_ratio": ..., "flops_ratio": ...}``.
    """
    tx = tx or optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3, weight_decay=1e-4))
    rng = np.random.default_rng(seed)
    x = jax.numpy.asarray(rng.random((batch_size, *input_shape), np.float32))
    y = jax.numpy.asarray(rng.integers(0, num_classes, batch_size), jax.numpy.int32)
    din = int(np.prod(input_shape))
    calls, parts = {}, {}
    for name, rules in (("head_only", HEAD_ONLY), ("all_trainable", ALL_TRAINABLE)):
        model = MLP(din, widths, num_classes, nnx.Rngs(seed))
        plan = freeze.plan(model, rules)
        if name == "head_only":
            optimizer = nnx.Optimizer(model, plan.optimizer(tx), wrt=plan.nnx_filter)
            step = _train_step(plan)
        else:
            optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
            step = _train_step(None)
        jitted = nnx.jit(step)
        calls[name] = lambda jitted=jitted, m=model, o=optimizer: jitted(m, o, x, y)
        trainable = freeze.tree_size(plan.split(nnx.as_pure(nnx.state(model, nnx.Param)))[0])
        parts[name] = {
            "trainable_params": trainable["params"],
            "trainable_bytes": trainable["bytes"],
            "flops": _flops(step, model, optimizer, x, y),
            "opt_state_moment_bytes": moment_bytes(nnx.as_pure(optimizer.opt_state)),
        }
    ms = interleaved_ms(calls, rounds, warmup)
    for name, part in parts.items():
        part["step_ms"] = ms[name]
    head, full = parts["head_only"], parts["all_trainable"]
    return {
        "model": "nnx MLP",
        "widths": list(widths),
        "input_shape": list(input_shape),
        "num_classes": num_classes,
        "batch_size": batch_size,
        **parts,
        "ms_ratio": head["step_ms"] / full["step_ms"],
        "flops_ratio": head["flops"] / full["flops"],
    }
