"""Models side by side: stacking their pytrees on a slot axis, the slot count, each slot's data.

A *slot* is one model of a compiled program that trains several independent models under
``jax.vmap`` (seeds, grid points of a sweep). :func:`slot_count` is the one place that decides
how many share a program; :func:`batch_schedule` is each slot's data order, a function of
(seed, epoch, step) only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding

from jaxtl.data.pipeline import batch_indices
from jaxtl.train import sharding

PyTree = Any


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


def slot_count(model: nn.Module, platform: str | None = None) -> int:
    """How many models train side by side in one compiled program on ``platform``.

    The one place this is decided, from measurements (``jaxtl bench``'s seeds check, the
    study's parts): on a CPU a vmapped convolution over per-slot weights becomes a grouped
    convolution that runs no faster than the slots one after another, so conv nets (and
    ResNets, ViTs) get one slot per device, and with several CPU devices (``cpu_devices``)
    each device trains its own model at once, which XLA's intra-op threads do not make of one
    small convolution; dense models amortise per-step overhead over 5 slots on one device (their
    step is bound by memory traffic the cores already share; split over two CPU devices the
    MLP's strategies part ran slower). Accelerators, which one small model leaves idle, get 8
    per device. Split slots go through :func:`slot_placement`. The count is
    part of what a result depends on (XLA batches differently per count), so runs record it
    and caches are keyed by it.

    Example:
      >>> slot_count(jaxtl.models.create("mlp", 10), "cpu")  # doctest: +SKIP
      5
    """
    platform = platform or jax.default_backend()
    if not slots_spread(model, platform):
        return 5
    per_device = 1 if platform == "cpu" else 8
    return per_device * jax.local_device_count()


def slots_spread(model: nn.Module, platform: str | None = None) -> bool:
    """Whether ``model``'s slots are spread over the local devices (each device training its
    own) or all stay on one: dense models on a CPU stay together (:func:`slot_count`).

    Example:
      >>> slots_spread(jaxtl.models.create("mlp", 10), "cpu")  # doctest: +SKIP
      False
    """
    platform = platform or jax.default_backend()
    return platform != "cpu" or _has_convolutions(model)


def slot_placement(model: nn.Module, slots: int) -> NamedSharding | None:
    """Where ``slots`` models of ``model`` trained side by side live: their slot axis split over
    the local devices (:func:`jaxtl.train.sharding.slot_sharding`) when the model's slots
    spread (:func:`slots_spread`), else None (the default device).

    Decided by the model, not by whether the count divides the devices: five dense slots on a
    five-core machine still share one device, as :func:`slot_count` counted them.

    Example:
      >>> slot_placement(jaxtl.models.create("mlp", 10), 5) is None  # doctest: +SKIP
      True
    """
    return sharding.slot_sharding(slots) if slots_spread(model) else None


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


def pad_rows(a: np.ndarray, rows: int | None) -> np.ndarray:
    """``a`` with zero rows appended up to ``rows`` (None: unchanged).

    Example:
      >>> pad_rows(np.ones((2, 3)), 4).shape
      (4, 3)
    """
    a = np.asarray(a)
    if rows is None or rows == len(a):
        return a
    if rows < len(a):
        raise ValueError(f"pad_to={rows} is smaller than a job's {len(a)} training examples")
    return np.concatenate([a, np.zeros((rows - len(a), *a.shape[1:]), a.dtype)])
