"""Feature caching: run a deterministic frozen prefix once, train the other groups on its output.

With the "frozen" (or "adabn") BatchNorm policy, groups whose parameters are all frozen run in
inference mode: running statistics and no dropout. A leading run of such groups is then a fixed
function of the input, so without data augmentation its output can be computed once per dataset
and every step runs only ``model.apply(..., start=k)``: the frozen prefix costs one forward
pass per example instead of one per step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtl.freeze import FreezePlan
from jaxtl.train.inference import eval_batch_size
from jaxtl.train.phase import prefix_program
from jaxtl.train.steps import check_bn_policy, frozen_groups

PyTree = Any


def frozen_prefix(plan: FreezePlan, layer_groups: Sequence[str]) -> int:
    """Number of leading layer groups whose parameters are all frozen.

    Example:
      >>> frozen_prefix(linear_probe_plan, ("stem", "block1", "head"))  # doctest: +SKIP
      2
    """
    frozen = set(frozen_groups(plan, layer_groups))
    k = 0
    while k < len(layer_groups) and k in frozen:
        k += 1
    return k


def cacheable_groups(
    plan: FreezePlan, layer_groups: Sequence[str], bn_policy: str, *, augment: bool = False
) -> int:
    """How many leading groups can be served from a feature cache (0 = none).

    The prefix is cacheable when it is frozen, runs in inference mode (BN policy "frozen" or
    "adabn", which also switches its dropout off) and sees un-augmented inputs.

    Args:
      plan: the phase's freeze plan.
      layer_groups: the model's groups.
      bn_policy: the phase's BatchNorm policy.
      augment: whether inputs are augmented per step (then nothing is cacheable).

    Returns:
      ``k``: train with ``start=k`` on ``compute_features(..., stop=k)``.

    Example:
      >>> cacheable_groups(linear_probe_plan, model.layer_groups, "frozen")  # doctest: +SKIP
      2
    """
    if check_bn_policy(bn_policy) == "train" or augment:
        return 0
    return frozen_prefix(plan, layer_groups)


def compute_features(
    model: nn.Module,
    variables: Mapping[str, PyTree],
    x: np.ndarray | jax.Array,
    *,
    stop: int,
    batch_size: int = 256,
) -> jax.Array:
    """Runs groups ``[0, stop)`` in inference mode over ``x`` in batches, on device.

    Args:
      model: a jaxtl model.
      variables: its variables.
      x: inputs.
      stop: number of leading groups to run.
      batch_size: examples per forward pass (the last batch is padded, so one compile).

    Returns:
      The features entering group ``stop``, stacked for all of ``x`` (float32 on device).

    Example:
      >>> feats = compute_features(model, variables, ds.x_train, stop=2)  # doctest: +SKIP
    """
    n = len(x)
    if n == 0:
        raise ValueError("compute_features got no examples; pass a non-empty x")
    batch_size = eval_batch_size(n, batch_size)

    variables = dict(variables)
    out = []
    for lo in range(0, n, batch_size):
        idx = np.minimum(np.arange(lo, lo + batch_size), n - 1)
        args = (variables, x[idx])
        out.append(prefix_program(model, stop, args)(*args)[: min(batch_size, n - lo)])
    return jnp.concatenate(out)
