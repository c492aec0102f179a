"""Inference passes over a dataset: evaluation and AdaBN's re-estimated BatchNorm statistics.

Both run in fixed-size padded batches through the engine's compile cache
(:data:`jaxtl.train.phase.PROGRAMS`), so a sweep evaluating many models compiles each shape once.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtl.freeze import flatten_with_paths
from jaxtl.train.phase import batch_stats_program, eval_program
from jaxtl.train.slots import slot_placement

PyTree = Any


def eval_batch_size(n: int, batch_size: int = 256) -> int:
    """The padded batch used to run ``n`` examples: a power of two between 32 and ``batch_size``.

    A handful of shapes serves every dataset size (a sweep's validation splits of 5, 20 or 500
    examples compile two programs, not three), at the price of some padded rows.

    Example:
      >>> [eval_batch_size(n) for n in (5, 20, 100, 500)]
      [32, 32, 128, 256]
    """
    return min(batch_size, max(32, 1 << max(n - 1, 0).bit_length()))


def padded_batches(n: int, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(indices, mask)`` per batch over ``n`` rows; the last batch repeats row ``n - 1``.

    Example:
      >>> [m.sum() for _, m in padded_batches(5, 4)]
      [4, 1]
    """
    for lo in range(0, n, batch_size):
        idx = np.arange(lo, lo + batch_size)
        yield np.minimum(idx, n - 1), idx < n


def evaluate(
    model: nn.Module,
    variables: Mapping[str, PyTree],
    x: np.ndarray | jax.Array,
    y: np.ndarray | jax.Array,
    *,
    batch_size: int = 256,
    compute_dtype: Any = None,
    start: int = 0,
) -> dict[str, float]:
    """Mean loss and accuracy of ``model`` on ``(x, y)`` in inference mode.

    Args:
      model: a jaxtl model.
      variables: its variables.
      x, y: inputs (or cached features entering group ``start``) and int labels.
      batch_size: eval batch; the last batch is padded and masked so every batch has one shape.
      compute_dtype: e.g. ``"bfloat16"``: params and inputs are cast, logits read in float32.
      start: first group to run.

    Returns:
      ``{"loss": float, "acc": float}``.

    Example:
      >>> evaluate(model, state.variables, ds.x_test, ds.y_test)  # doctest: +SKIP
      {'loss': 0.31, 'acc': 0.9}
    """
    n = len(y)
    if n == 0:
        raise ValueError("evaluate got an empty dataset; pass at least one example")
    dtype = None if compute_dtype is None else jnp.dtype(compute_dtype).name
    batch_size = eval_batch_size(n, batch_size)
    variables = dict(variables)
    loss_sum, correct = 0.0, 0
    for idx, mask in padded_batches(n, batch_size):
        args = (variables, x[idx], y[idx], jnp.asarray(mask))
        out = eval_program(model, dtype, start, args)(*args)
        loss_sum += float(out["loss_sum"])
        correct += int(out["correct"])
    return {"loss": loss_sum / n, "acc": correct / n}


def evaluate_many(
    model: nn.Module,
    variables: Sequence[Mapping[str, PyTree]],
    data: tuple[np.ndarray, np.ndarray] | Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    slots: int,
    batch_size: int = 512,
) -> list[dict[str, float]]:
    """:func:`evaluate` of many models (of one architecture), ``slots`` side by side per call.

    Args:
      model: a jaxtl model.
      variables: one variables dict per model.
      data: ``(x, y)`` every model is evaluated on, or one ``(x, y)`` per model (each its own,
        e.g. its validation split; equal sizes share calls, others are evaluated one by one).
      slots: models per compiled call; a partial last group is filled with copies of its last
        model (discarded), so a model's numbers never depend on which others were evaluated
        with it.
      batch_size: examples per call (padded and masked as in :func:`evaluate`).

    Returns:
      ``{"loss", "acc"}`` per model, in order.

    Example:
      >>> evaluate_many(model, [v0, v1], (ds.x_test, ds.y_test), slots=2)  # doctest: +SKIP
      [{'loss': 0.31, 'acc': 0.9}, {'loss': 0.29, 'acc': 0.91}]
    """
    shared = isinstance(data, tuple) and len(data) == 2 and not isinstance(data[0], tuple)
    per_model = [data] * len(variables) if shared else list(data)
    if len(per_model) != len(variables):
        raise ValueError(f"{len(per_model)} datasets for {len(variables)} models; pass one each")
    if not shared and len({len(y) for _, y in per_model}) > 1:
        return [evaluate(model, v, *xy) for v, xy in zip(variables, per_model)]
    out = []
    for lo in range(0, len(variables), slots):
        group = list(range(lo, min(lo + slots, len(variables))))
        group += [group[-1]] * (slots - len(group))
        stacked = jax.tree.map(
            lambda *leaves: np.stack([np.asarray(x) for x in leaves]),
            *[dict(variables[i]) for i in group],
        )
        split = slot_placement(model, slots)
        if split is not None:  # each device evaluates its own slots, as they trained
            stacked = jax.device_put(stacked, split)
        sums = _slot_sums(model, stacked, [per_model[i] for i in group], shared, batch_size)
        n = len(per_model[group[0]][1])
        out += [
            {"loss": float(sums["loss_sum"][j]) / n, "acc": int(sums["correct"][j]) / n}
            for j in range(min(slots, len(variables) - lo))
        ]
    return out


def _slot_sums(model, stacked, data, shared: bool, batch_size: int) -> dict[str, np.ndarray]:
    """Loss and correct-prediction sums of the stacked models over their data, per slot."""
    n = len(data[0][1])
    if n == 0:
        raise ValueError("evaluate got an empty dataset; pass at least one example")
    batch_size = eval_batch_size(n, batch_size)
    axes = (0, None, None, None) if shared else (0, 0, 0, None)
    totals = {"loss_sum": 0.0, "correct": 0}
    for idx, mask in padded_batches(n, batch_size):
        if shared:
            x, y = data[0][0][idx], data[0][1][idx]
        else:
            x, y = np.stack([d[0][idx] for d in data]), np.stack([d[1][idx] for d in data])
        args = (stacked, x, y, jnp.asarray(mask))
        got = jax.device_get(eval_program(model, None, 0, args, axes)(*args))
        totals = {k: totals[k] + np.asarray(got[k], np.float64) for k in totals}
    return totals


def adabn(
    model: nn.Module,
    variables: Mapping[str, PyTree],
    x: np.ndarray | jax.Array,
    batch_size: int = 256,
    *,
    rng: jax.Array | None = None,
) -> dict[str, PyTree]:
    """AdaBN: re-estimates every BatchNorm's running statistics on target data, params fixed.

    Each batch is run in train mode and its per-module batch mean and variance are read off;
    the new running statistics are the example-weighted average over all batches (what
    PyTorch's ``momentum=None`` cumulative average gives), independent of the model's
    BatchNorm momentum. The batch moments are recovered from Linen's update
    ``new = m * old + (1 - m) * batch``: a pass from zero statistics gives ``(1 - m) * batch``,
    and one pass from unit statistics gives ``m``.

    Args:
      model: a jaxtl model.
      variables: its variables; returned unchanged when there is no ``batch_stats``.
      x: target inputs (train split); labels are not used.
      batch_size: examples per pass; the last partial batch is used as is.
      rng: dropout key for the train-mode passes (default ``jax.random.key(0)``).

    Returns:
      Variables with new ``batch_stats`` and the same params.

    Example:
      >>> variables = adabn(model, variables, ds_b.x_train, 256)  # doctest: +SKIP
    """
    batch_stats = variables.get("batch_stats")
    if not batch_stats:
        return dict(variables)
    rng = jax.random.key(0) if rng is None else rng
    params = variables["params"]

    def updated_stats(stats, xb):
        args = (params, stats, xb, rng)
        return batch_stats_program(model, args)(*args)

    zeros = jax.tree.map(jnp.zeros_like, batch_stats)
    ones = jax.tree.map(jnp.ones_like, batch_stats)
    first = x[: min(batch_size, len(x))]
    from_zeros = updated_stats(zeros, first)
    momentum = jax.tree.map(jnp.subtract, updated_stats(ones, first), from_zeros)
    paths, leaves, _ = flatten_with_paths(momentum)
    for path, m in zip(paths, leaves):
        if np.any(np.isclose(np.asarray(m), 1.0)):
            raise ValueError(
                f"adabn cannot read batch statistics at batch_stats/{path}: BatchNorm momentum"
                " is 1 (running averages never move); use a momentum < 1"
            )
    total = jax.tree.map(jnp.zeros_like, batch_stats)
    for lo in range(0, len(x), batch_size):
        xb = x[lo : lo + batch_size]
        weight = len(xb)
        moments = jax.tree.map(lambda s, m: s / (1.0 - m), updated_stats(zeros, xb), momentum)
        total = jax.tree.map(lambda t, s, w=weight: t + w * s, total, moments)
    new_stats = jax.tree.map(lambda t, old: (t / len(x)).astype(old.dtype), total, batch_stats)
    return {**variables, "batch_stats": new_stats}
