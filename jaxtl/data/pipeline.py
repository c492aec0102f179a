"""Input pipeline: train-split normalisation, deterministic batch order, data-parallel placement.

Batch order is a pure function of (seed, epoch), so a run restarted from a checkpoint at epoch e
sees exactly the batches it would have seen. Batches are laid out along one mesh axis, "data",
over all devices; small datasets can live on device whole and be gathered per step inside jit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxtl.data.dataset import DataError

DATA_AXIS = "data"


class NormStats(NamedTuple):
    """Per-channel mean and std, shape (C,), float32."""

    mean: np.ndarray
    std: np.ndarray


def normalization_stats(x_train: np.ndarray, eps: float = 1e-6) -> NormStats:
    """Per-channel mean/std over all examples and positions; pass the TRAIN split only.

    Args:
      x_train: training inputs (N, H, W, C) or (N, L, C).
      eps: floor on the std so constant channels do not divide by zero.

    Returns:
      NormStats with arrays of shape (C,).

    Example:
      >>> normalization_stats(np.ones((4, 2, 2, 3), np.float32)).mean.tolist()
      [1.0, 1.0, 1.0]
    """
    axes = tuple(range(x_train.ndim - 1))
    mean = x_train.mean(axis=axes, dtype=np.float64)
    std = np.maximum(x_train.std(axis=axes, dtype=np.float64), eps)
    return NormStats(mean.astype(np.float32), std.astype(np.float32))


def normalize(x: Any, stats: NormStats) -> Any:
    """(x - mean) / std per channel; works on numpy and jax arrays alike.

    Args:
      x: inputs whose last axis is the channel axis.
      stats: from `normalization_stats` on the training split.

    Returns:
      The normalised inputs, same type and shape as x.

    Example:
      >>> stats = NormStats(np.array([1.0]), np.array([2.0]))
      >>> normalize(np.full((1, 2, 1), 3.0, np.float32), stats).ravel()
      array([1., 1.])
    """
    return (x - stats.mean) / stats.std


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The example order of one epoch, a pure function of (seed, epoch).

    Args:
      n: number of examples.
      seed: run seed.
      epoch: epoch number.

    Returns:
      int32 permutation of range(n).

    Example:
      >>> sorted(epoch_permutation(5, seed=0, epoch=3).tolist())
      [0, 1, 2, 3, 4]
    """
    return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int32)


def batch_indices(
    n: int,
    batch_size: int,
    seed: int,
    epoch: int,
    *,
    shuffle: bool = True,
    drop_remainder: bool = True,
) -> list[np.ndarray]:
    """Example indices of every batch of one epoch.

    Args:
      n: number of examples.
      batch_size: examples per batch.
      seed: run seed.
      epoch: epoch number (the order differs per epoch).
      shuffle: False keeps the examples in order (evaluation).
      drop_remainder: drop the last, smaller batch (training keeps shapes static for jit).

    Returns:
      A list of int32 index arrays; with drop_remainder all have length batch_size.

    Example:
      >>> [len(b) for b in batch_indices(10, 4, seed=0, epoch=0)]
      [4, 4]
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    if drop_remainder and batch_size > n:
        raise DataError(
            f"batch_size {batch_size} is larger than the {n} examples, so dropping the "
            f"remainder leaves no batch; use batch_size <= {n}"
        )
    order = epoch_permutation(n, seed, epoch) if shuffle else np.arange(n, dtype=np.int32)
    stop = n - n % batch_size if drop_remainder else n
    return [order[i : i + batch_size] for i in range(0, stop, batch_size)]


def data_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis "data" over ``devices`` (default: all devices of all processes).

    Example:
      >>> data_mesh().axis_names
      ('data',)
    """
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), (DATA_AXIS,))


def data_sharding(mesh: Mesh | None = None) -> NamedSharding:
    """Sharding that splits the leading (batch) axis over the mesh's "data" axis.

    Example:
      >>> data_sharding().spec == PartitionSpec("data")
      True
    """
    return NamedSharding(mesh if mesh is not None else data_mesh(), PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: Mesh | None = None) -> NamedSharding:
    """Sharding that keeps a full copy on every device of the mesh.

    Example:
      >>> replicated_sharding().spec == PartitionSpec()
      True
    """
    return NamedSharding(mesh if mesh is not None else data_mesh(), PartitionSpec())


def process_slice(
    n: int, process_index: int | None = None, process_count: int | None = None
) -> slice:
    """The part of a global batch of n examples that one process loads in multi-host training.

    Args:
      n: global batch size; must be divisible by process_count.
      process_index: this process (default jax.process_index()).
      process_count: number of processes (default jax.process_count()).

    Returns:
      slice(start, stop) into the global batch.

    Example:
      >>> process_slice(8, process_index=1, process_count=2)
      slice(4, 8, None)
    """
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if n % count:
        raise DataError(
            f"global batch size {n} is not divisible by the {count} processes; "
            f"use a multiple of {count}"
        )
    if not 0 <= index < count:
        raise DataError(f"process_index must be in 0..{count - 1}, got {index}")
    per_process = n // count
    return slice(index * per_process, (index + 1) * per_process)


def _local_device_count(mesh: Mesh) -> int:
    return sum(d.process_index == jax.process_index() for d in mesh.devices.flat)


def device_put_sharded_batch(batch: Any, mesh: Mesh | None = None) -> Any:
    """Places this process's batch (a pytree of numpy arrays) sharded over the "data" axis.

    With one process this is a sharded ``jax.device_put``; with several, every process passes
    its own `process_slice` of the global batch and the global array is assembled with
    ``jax.make_array_from_process_local_data``.

    Args:
      batch: pytree of arrays with a common leading batch axis.
      mesh: the data mesh (default `data_mesh()`).

    Returns:
      The same pytree of global jax.Arrays sharded along the batch axis.

    Example:
      >>> device_put_sharded_batch({"x": np.zeros((jax.device_count(), 3))})["x"].shape[1]
      3
    """
    mesh = mesh if mesh is not None else data_mesh()
    sharding = data_sharding(mesh)
    local = _local_device_count(mesh)

    def put(leaf: Any) -> jax.Array:
        if leaf.shape[0] % local:
            raise DataError(
                f"batch size {leaf.shape[0]} is not divisible by the {local} local devices; "
                f"use a multiple of {local}"
            )
        if jax.process_count() > 1:
            return jax.make_array_from_process_local_data(sharding, np.asarray(leaf))
        return jax.device_put(leaf, sharding)

    return jax.tree.map(put, batch)


def device_dataset(
    x: np.ndarray, y: np.ndarray, *, stats: NormStats | None = None, mesh: Mesh | None = None
) -> tuple[jax.Array, jax.Array]:
    """Puts a whole (small) split on device once, normalised and replicated on every device.

    Args:
      x: inputs, float32.
      y: int32 labels.
      stats: when given, x is normalised with them before the transfer.
      mesh: the data mesh (default `data_mesh()`).

    Returns:
      (x, y) as replicated jax.Arrays, to be indexed with `batch_gather`.

    Example:
      >>> x, y = device_dataset(np.zeros((4, 2, 1), np.float32), np.zeros(4, np.int32))
      >>> x.shape
      (4, 2, 1)
    """
    if stats is not None:
        x = normalize(x, stats).astype(np.float32)
    sharding = replicated_sharding(mesh)
    return jax.device_put(x, sharding), jax.device_put(y, sharding)


def batch_gather(
    mesh: Mesh | None = None,
) -> Callable[[jax.Array, jax.Array, Any], tuple[jax.Array, jax.Array]]:
    """A jitted ``(x, y, idx) -> (x[idx], y[idx])`` whose outputs are sharded over "data".

    Use with `device_dataset` and `batch_indices`: per step only the indices travel to the
    device. Single-process; with several processes use `device_put_sharded_batch`.

    Args:
      mesh: the data mesh (default `data_mesh()`).

    Returns:
      The gather function; len(idx) must be divisible by the mesh size.

    Example:
      >>> x, y = device_dataset(np.arange(8, dtype=np.float32).reshape(8, 1),
      ...                       np.arange(8, dtype=np.int32))
      >>> gather = batch_gather()
      >>> gather(x, y, np.array([3, 1]))[1].tolist()
      [3, 1]
    """
    mesh = mesh if mesh is not None else data_mesh()
    sharding = data_sharding(mesh)

    @jax.jit
    def gather(x: jax.Array, y: jax.Array, idx: Any) -> tuple[jax.Array, jax.Array]:
        if idx.shape[0] % mesh.size:
            raise DataError(
                f"batch size {idx.shape[0]} is not divisible by the {mesh.size} devices; "
                f"use a multiple of {mesh.size}"
            )
        idx = jnp.asarray(idx)
        return (
            jax.lax.with_sharding_constraint(x[idx], sharding),
            jax.lax.with_sharding_constraint(y[idx], sharding),
        )

    return gather
