"""Which jaxtl model a state dict belongs to, from its keys and shapes, and the reverse."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtl.models import registry
from jaxtl.models.base import GroupedModel, choice_error
from jaxtl.models.pretrained.files import CheckpointError
from jaxtl.models.pretrained.tables import Rule, resnet_table, torch_shape, vit_table

ARCHS: tuple[str, ...] = ("resnet", "vit")
# timm's standard ViTs (tiny/small/base/large) all use 64-dim heads; the head count is not in the
# state dict's shapes, so it is inferred from this unless options give num_heads.
_VIT_HEAD_DIM = 64
# What torchvision's models are trained on; the side is nominal (any size runs).
RESNET_INPUT = (224, 224, 3)


def _arch_of_name(model: str) -> str:
    for arch in ARCHS:
        if model.startswith(arch):
            return arch
    raise choice_error(
        "pretrained checkpoints load into ResNets and ViTs only, not model",
        model,
        [n for n in registry.names() if n.startswith(ARCHS)],
    )


def _infer_resnet(state: Mapping[str, np.ndarray]) -> dict[str, Any]:
    stages = []
    while any(k.startswith(f"layer{len(stages) + 1}.") for k in state):
        i = len(stages) + 1
        blocks = {int(m.group(1)) for k in state if (m := re.match(rf"layer{i}\.(\d+)\.", k))}
        stages.append(max(blocks) + 1)
    if not stages:
        raise CheckpointError(
            "ResNet checkpoint has no 'layer1.*' keys; is it a torchvision ResNet?"
        )
    kernel = state["conv1.weight"].shape
    return {
        "stage_sizes": tuple(stages),
        "block_type": "bottleneck" if "layer1.0.conv3.weight" in state else "basic",
        "stem_type": "imagenet" if kernel[-1] == 7 else "cifar",
        "base_width": int(kernel[0]),
        "conv_padding": "symmetric",
        "bn_inverse_std": "divide",
    }


def _infer_vit(state: Mapping[str, np.ndarray], options: Mapping[str, Any]) -> dict[str, Any]:
    dim, _, patch, _ = state["patch_embed.proj.weight"].shape
    depth = len({m.group(1) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    hidden = state["blocks.0.mlp.fc1.weight"].shape[0] if depth else 4 * dim
    if hidden % dim:
        raise CheckpointError(
            f"ViT MLP width {hidden} is not a multiple of the width {dim}; jaxtl's ViT needs an "
            "integer mlp_ratio"
        )
    num_heads = options.get("num_heads")
    if num_heads is None:
        if dim % _VIT_HEAD_DIM:
            raise CheckpointError(
                f"cannot infer the ViT head count from width {dim} (not a multiple of "
                f"{_VIT_HEAD_DIM}); pass options={{'num_heads': ...}}"
            )
        num_heads = dim // _VIT_HEAD_DIM
    return {
        "patch_size": int(patch),
        "dim": int(dim),
        "depth": depth,
        "num_heads": int(num_heads),
        "mlp_ratio": hidden // dim,
        "gelu_approximate": False,
    }


def _vit_input_shape(state: Mapping[str, np.ndarray], patch: int) -> tuple[int, int, int]:
    positions = state["pos_embed"].shape[1] - 1  # minus the class token
    side = math.isqrt(positions)
    if side * side != positions:
        raise CheckpointError(
            f"ViT pos_embed has {positions} patch positions, not a square grid; jaxtl's ViT "
            "needs square inputs"
        )
    return (side * patch, side * patch, 3)


def _resnet_name(options: Mapping[str, Any]) -> str:
    """The registry name whose defaults match most of the inferred architecture."""
    keys = ("block_type", "stage_sizes", "stem_type")  # depth names a ResNet before its stem

    def score(name: str) -> tuple[int, ...]:
        defaults = registry.default_options(name)
        return tuple(int(_as_tuple(defaults[k]) == _as_tuple(options[k])) for k in keys)

    return max((n for n in registry.names() if n.startswith("resnet")), key=score)


def _as_tuple(value: Any) -> Any:
    # Lists as tuples, so option values compare the same however a config wrote them.
    return tuple(value) if isinstance(value, list | tuple) else value


def _minimal_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    defaults = registry.default_options(name)
    return {k: v for k, v in options.items() if _as_tuple(defaults.get(k)) != _as_tuple(v)}


def infer_architecture(
    state: Mapping[str, np.ndarray],
    arch: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> tuple[str, dict[str, Any], int, tuple[int, int, int]]:
    """The jaxtl model a torchvision/timm state dict belongs to, from its keys and shapes.

    Args:
      state: torch key -> array.
      arch: a registry name ("resnet18_imagenet", "resnet50", "vit", ...) to build instead of
        the inferred one; its options still come from the shapes.
      options: model options that override the inferred ones (e.g. num_heads for a ViT whose
        head width is not 64, dtype).

    Returns:
      ``(model, options, num_classes, input_shape)``.

    Example:
      >>> infer_architecture(state)[0]  # doctest: +SKIP
      'resnet18_imagenet'
    """
    options = dict(options or {})
    if "conv1.weight" in state:
        kind = "resnet"
    elif "patch_embed.proj.weight" in state:
        kind = "vit"
    else:
        first = next(iter(state), "-")
        raise CheckpointError(
            f"not a torchvision ResNet ('conv1.weight') nor a timm ViT ('patch_embed.proj.weight')"
            f" state dict; its first key is {first!r}"
        )
    if arch is not None:
        if arch not in registry.names():
            raise choice_error("unknown model", arch, registry.names())
        if _arch_of_name(arch) != kind:
            raise CheckpointError(f"checkpoint holds a {kind} but arch={arch!r} was given")
    if kind == "resnet":
        inferred = _infer_resnet(state)
        name = arch or _resnet_name({**inferred, **options})
        input_shape = RESNET_INPUT
        head = state.get("fc.weight")
    else:
        inferred = _infer_vit(state, options)
        name = arch or "vit"
        input_shape = _vit_input_shape(state, options.get("patch_size", inferred["patch_size"]))
        head = state.get("head.weight")
    num_classes = int(head.shape[0]) if head is not None else 0
    options = {**inferred, **options}
    # A ResNet reads best as its registry name plus what differs; a ViT's sizes are all explicit
    # (the registry's defaults are a tiny CPU model, no checkpoint's).
    if kind == "resnet":
        options = _minimal_options(name, options)
    return name, options, num_classes, input_shape


def table_for(model: GroupedModel, with_head: bool = True) -> tuple[Rule, ...]:
    """The name table of a built jaxtl ResNet or ViT.

    Example:
      >>> len(table_for(jaxtl.models.create("resnet18_imagenet", 10)))
      122
    """
    options = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)}
    if "stage_sizes" in options:
        return resnet_table(
            options["stage_sizes"], options["block_type"] == "bottleneck", with_head
        )
    if "patch_size" in options:
        return vit_table(options["depth"], with_head)
    raise choice_error(
        "pretrained checkpoints load into ResNets and ViTs only, not", type(model).__name__, ARCHS
    )


def leaf_shapes(model: GroupedModel, input_shape: Sequence[int]) -> dict[tuple[str, str], tuple]:
    """``(collection, path) -> shape`` of every leaf of ``model``'s variables (nothing computed)."""
    init = lambda x: model.init(jax.random.key(0), x, train=False)
    tree = jax.eval_shape(init, jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {(str(p[0].key), "/".join(str(k.key) for k in p[1:])): leaf.shape for p, leaf in flat}


def state_dict_shapes(
    model: str,
    num_classes: int = 1000,
    options: Mapping[str, Any] | None = None,
    input_shape: Sequence[int] = RESNET_INPUT,
) -> dict[str, tuple[int, ...]]:
    """The torchvision/timm state dict (key -> shape, in torch's order) of a jaxtl model.

    Args:
      model: a registry name ("resnet18_imagenet", "resnet50", "vit", ...).
      num_classes: classes of the head.
      options: model options.
      input_shape: (H, W, C); it fixes a ViT's position embedding.

    Returns:
      Torch key -> shape, including BatchNorm's scalar ``num_batches_tracked``.

    Example:
      >>> state_dict_shapes("resnet18_imagenet")["layer1.0.conv1.weight"]
      (64, 64, 3, 3)
    """
    built = registry.create(model, num_classes, **dict(options or {}))
    shapes = leaf_shapes(built, input_shape)
    return {
        r.torch_key: torch_shape(r.kind, [shapes[t] for t in r.targets]) for r in table_for(built)
    }
