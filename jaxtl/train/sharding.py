"""Data parallelism for training: state replicated, batches split over the "data" mesh axis.

The mesh and batch placement come from :mod:`jaxtl.data.pipeline` (``data_mesh``,
``device_put_sharded_batch``); this module places the train state and starts the multi-host
runtime. Every device holds a full copy of the state and XLA's partitioner inserts the gradient
all-reduce, so the compiled step is the single-device step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
from jax.sharding import Mesh

from jaxtl.data.pipeline import data_mesh, device_put_sharded_batch, replicated_sharding

PyTree = Any

__all__ = ["data_mesh", "maybe_initialize_distributed", "put_replicated", "shard_batch"]


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
