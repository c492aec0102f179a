"""Data parallelism for training: state replicated, batches split over the "data" mesh axis.

The mesh and batch placement come from :mod:`jaxtl.data.pipeline` (``data_mesh``,
``device_put_sharded_batch``); this module places the train state and starts the multi-host
runtime. Every device holds a full copy of the state and XLA's partitioner inserts the gradient
all-reduce, so the compiled step is the single-device step.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxtl.data.pipeline import data_mesh, device_put_sharded_batch, replicated_sharding

PyTree = Any

__all__ = [
    "auto_cpu_devices",
    "data_mesh",
    "maybe_initialize_distributed",
    "put_replicated",
    "shard_batch",
    "slot_sharding",
    "use_cpu_devices",
]


def shard_batch(mesh: Mesh | None, batch: PyTree) -> PyTree:
    """Splits a batch (pytree of arrays) over the mesh's "data" axis; unchanged without a mesh.

    Example:
      >>> x, y = shard_batch(data_mesh(), (x, y))  # doctest: +SKIP
    """
    return batch if mesh is None else device_put_sharded_batch(batch, mesh)


def put_replicated(mesh: Mesh | None, tree: PyTree) -> PyTree:
    """Puts ``tree`` (a train state, a dataset) on every device of the mesh.

    Without a mesh the tree goes to the default device.

    Example:
      >>> state = put_replicated(data_mesh(), state)  # doctest: +SKIP
    """
    if mesh is None:
        return jax.device_put(tree)
    return jax.device_put(tree, replicated_sharding(mesh))


AUTO_CPU_DEVICES_MAX = 8


def auto_cpu_devices() -> int:
    """``cpu_devices=0``'s count: one CPU device per core this process may use, at most
    :data:`AUTO_CPU_DEVICES_MAX`.

    Example:
      >>> 1 <= auto_cpu_devices() <= AUTO_CPU_DEVICES_MAX
      True
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, AUTO_CPU_DEVICES_MAX))


def use_cpu_devices(count: int) -> None:
    """Asks JAX for ``count`` CPU devices (``jax_num_cpu_devices``); 0 = :func:`auto_cpu_devices`.

    Must run before JAX starts its backend (the first ``jax.devices()`` or computation); with
    0, a backend that already started keeps the devices it has.

    Raises:
      ValueError: ``count`` is negative, or the backend already started with another count.

    Example:
      >>> use_cpu_devices(0)  # one per core, or what a started backend has
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"cpu_devices={count!r} must be an int >= 0 (0 = one per core)")
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        if count and len(jax.devices("cpu")) != count:
            raise ValueError(
                f"cpu_devices={count}: JAX's backend already started with"
                f" {len(jax.devices('cpu'))} CPU device(s); set it before any JAX computation"
                " (a fresh process, e.g. `jaxtl run`)"
            )
        return
    jax.config.update("jax_num_cpu_devices", count or auto_cpu_devices())


@functools.cache
def _slot_mesh(count: int) -> Mesh:
    return Mesh(np.array(jax.local_devices()[:count]), ("slots",))


def slot_sharding(slots: int) -> NamedSharding | None:
    """The slot axis of models trained side by side, split over this process's devices.

    With several local devices (GPUs, or CPU devices from ``jax_num_cpu_devices``) and a slot
    count they divide, each device holds and trains its own slots (the programs run them
    through ``jax.shard_map``, :func:`jaxtl.train.phase.over_slots`). None on one device, or
    when the slots do not divide. Whether a model's slots spread at all is the model's rule:
    call :func:`jaxtl.train.slots.slot_placement`.

    Example:
      >>> slot_sharding(1) is None
      True
    """
    count = jax.local_device_count()
    if count < 2 or slots % count:
        return None
    return NamedSharding(_slot_mesh(count), PartitionSpec("slots"))


def maybe_initialize_distributed(config: Mapping[str, Any]) -> bool:
    """Calls ``jax.distributed.initialize`` when ``config["distributed"]`` is true.

    Call it once, first thing in every process of a multi-host run, before any other JAX call.
    Cloud TPU pods and SLURM fill in the coordinator themselves; elsewhere set the keys below.

    Args:
      config: a mapping with ``distributed`` (bool) and optionally ``coordinator_address``
        ("host:port"), ``num_processes`` and ``process_id``.

    Returns:
      True if it initialised the distributed runtime.

    Example:
      >>> maybe_initialize_distributed({"distributed": False})
      False
    """
    if not config.get("distributed", False):
        return False
    jax.distributed.initialize(
        coordinator_address=config.get("coordinator_address"),
        num_processes=config.get("num_processes"),
        process_id=config.get("process_id"),
    )
    return True
