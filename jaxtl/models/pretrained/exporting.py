"""jaxtl ResNet/ViT variables written back under torchvision/timm names."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jaxtl.models.pretrained.files import CheckpointError, format_of, write_state_dict
from jaxtl.models.pretrained.tables import resnet_table, to_torch, vit_table


def _flat_variables(variables: Mapping[str, Any]) -> dict[tuple[str, str], np.ndarray]:
    flat = jax.tree_util.tree_flatten_with_path(dict(variables))[0]
    return {
        (str(p[0].key), "/".join(str(k.key) for k in p[1:])): np.asarray(leaf) for p, leaf in flat
    }


def _model_of_variables(params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The architecture options a ResNet's or ViT's params were built with (for export)."""
    groups = list(params)
    if "cls" in params.get("stem", {}):
        blocks = [g for g in groups if re.fullmatch(r"block\d+", g)]
        return "vit", {"depth": len(blocks)}
    stages = [g for g in groups if re.fullmatch(r"stage\d+", g)]
    if not stages or "Conv_0" not in params.get("stem", {}):
        raise CheckpointError(
            f"variables with groups {groups} are neither a jaxtl ResNet nor a ViT; only those "
            "export to torchvision/timm names"
        )
    stage_sizes = tuple(len(params[f"stage{i + 1}"]) for i in range(len(stages)))
    bottleneck = "Conv_2" in params["stage1"]["block0"]
    return "resnet", {"stage_sizes": stage_sizes, "bottleneck": bottleneck}


def to_state_dict(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """jaxtl ResNet/ViT variables as a torchvision/timm state dict (numpy), in torch's order.

    The classifier is written when ``variables`` has one.

    Example:
      >>> to_state_dict(variables)["conv1.weight"].shape  # doctest: +SKIP
      (64, 3, 7, 7)
    """
    if "params" not in variables:
        raise CheckpointError(
            f"variables have collections {sorted(variables)} but no 'params'; pass the Linen "
            "variables dict ({'params': ..., 'batch_stats': ...})"
        )
    kind, layout = _model_of_variables(variables["params"])
    with_head = "Dense_0" in variables["params"].get("head", {})
    if kind == "vit":
        table = vit_table(layout["depth"], with_head)
    else:
        table = resnet_table(layout["stage_sizes"], layout["bottleneck"], with_head)
    flat = _flat_variables(variables)
    used = {t for r in table for t in r.targets}
    extra = sorted(set(flat) - used)
    if extra:
        raise CheckpointError(
            f"variables leaf {'/'.join(extra[0])} has no torchvision/timm name ({len(extra)} "
            "such leaves); only default ResNet (batchnorm) and ViT layouts export"
        )
    absent = [f"{c}/{p}" for r in table for c, p in r.targets if (c, p) not in flat]
    if absent:
        raise CheckpointError(
            f"variables lack {absent[0]} ({len(absent)} leaves missing); export the full "
            "variables of one model ({'params': ..., 'batch_stats': ...})"
        )
    return {
        r.torch_key: np.ascontiguousarray(to_torch(r.kind, [flat[t] for t in r.targets]))
        for r in table
    }


def export(
    variables: Mapping[str, Any], path: str | os.PathLike, format: str | None = None
) -> tuple[str, ...]:
    """Writes jaxtl ResNet/ViT variables under torchvision/timm names, loadable by ``load`` and by
    ``torchvision.models.resnet18().load_state_dict(...)`` or timm's ViT.

    A jaxtl ResNet built with conv_padding="same" gives other activations in torch (whose convs
    pad symmetrically); models loaded with ``load`` use "symmetric" and round-trip exactly.

    Args:
      variables: ``{"params": ..., "batch_stats": ...}`` of a ResNet or ViT.
      path: the file to write.
      format: "safetensors" or "pth" (needs torch); None: from the extension.

    Returns:
      The torch keys written, in order.

    Example:
      >>> export(ckpt.variables, "/tmp/resnet18.safetensors")  # doctest: +SKIP
    """
    path = os.fspath(path)
    fmt = format_of(path, format)
    state = to_state_dict(variables)
    write_state_dict(state, path, fmt)
    return tuple(state)
