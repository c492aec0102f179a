"""Pretrained checkpoints from torchvision and timm, loaded into jaxtl's ResNets and ViT.

A checkpoint is a flat state dict (torch key -> array) in a ``.safetensors`` file (read with the
``safetensors`` numpy API; no torch needed) or a torch ``.pth`` file (needs torch). An explicit
name table maps every torch key to jaxtl leaves, ``(collection, "/"-path)``, with the layout
change it needs: conv kernels OIHW -> HWIO, linear weights (out, in) -> (in, out), timm's fused
``qkv`` projection -> flax's per-head query/key/value kernels. BatchNorm ``running_mean`` and
``running_var`` become ``batch_stats`` ``mean``/``var``; ``num_batches_tracked`` is dropped on
load and written back as 0 on export. torchvision's BatchNorm (eps 1e-5, momentum 0.1) is flax's
(epsilon 1e-5, momentum 0.9: flax weighs the old statistics, torch the new batch), which is what
jaxtl's ResNet uses; its explicit paddings are jaxtl's ImageNet stem (7x7/2 pad 3, max-pool 3/2
pad 1) plus ``conv_padding="symmetric"`` for the blocks, and ``bn_inverse_std="divide"`` computes
BatchNorm's 1 / sqrt(var + eps) in torch's two correctly rounded steps (XLA's rsqrt can be an ulp
off, the same ulp in every layer of a random-init ResNet). timm's ViT uses the exact (erf) GELU, so
its models get ``gelu_approximate=False``.

Example:
  >>> from jaxtl.models import pretrained
  >>> ckpt = pretrained.load("resnet18.safetensors")  # doctest: +SKIP
  >>> model = ckpt.create_model()  # doctest: +SKIP
  >>> logits = model.apply(ckpt.variables, images)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxtl.models import registry
from jaxtl.models.base import GroupedModel, choice_error

SOURCE_PREFIX = "pretrained:"
FORMATS: tuple[str, ...] = ("safetensors", "pth")
ARCHS: tuple[str, ...] = ("resnet", "vit")
_EXTENSIONS = {".safetensors": "safetensors", ".pth": "pth", ".pt": "pth", ".bin": "pth"}
# timm's standard ViTs (tiny/small/base/large) all use 64-dim heads; the head count is not in the
# state dict's shapes, so it is inferred from this unless options give num_heads.
_VIT_HEAD_DIM = 64
# What torchvision's models are trained on; the side is nominal (any size runs).
_RESNET_INPUT = (224, 224, 3)
# Wrappers training scripts put around a state dict.
_STATE_DICT_WRAPPERS = ("state_dict", "model_state_dict", "model")


class CheckpointError(ValueError):
    """A checkpoint file does not fit a jaxtl model; the message names the key and the fix."""


class Rule(NamedTuple):
    """One row of a name table: a torch key, how its layout changes, the jaxtl leaves it fills.

    ``kind`` is one of "conv", "linear", "copy", "qkv", "qkv_bias", "attn_out" or "ignore" (a
    torch buffer with no jaxtl counterpart); ``targets`` are ``(collection, path)`` pairs.
    """

    torch_key: str
    kind: str
    targets: tuple[tuple[str, str], ...]


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A checkpoint converted to jaxtl.

    Attributes:
      model: the registry name to build it with (`jaxtl.models.create`).
      options: the model options (e.g. ``{"conv_padding": "symmetric", "bn_inverse_std": "divide"}``).
      num_classes: classes of the checkpoint's own head.
      input_shape: (H, W, C) the checkpoint expects (nominal for ResNets, fixed for a ViT,
        whose position embedding has one entry per patch).
      variables: ``{"params": ..., "batch_stats": ...}``; without the classifier when
        ``head_loaded`` is False.
      loaded: torch keys converted into ``variables``.
      skipped: torch keys left out, each with the reason.
      format: "safetensors" or "pth".
      path: the file read.
      normalization: the input normalisation the weights expect ("imagenet").
    """

    model: str
    options: dict[str, Any]
    num_classes: int
    input_shape: tuple[int, int, int]
    variables: dict[str, Any]
    loaded: tuple[str, ...]
    skipped: tuple[str, ...]
    format: str
    path: str
    normalization: str = "imagenet"

    @property
    def head_loaded(self) -> bool:
        """True when the checkpoint's classifier is in ``variables``."""
        return "Dense_0" in self.variables["params"].get("head", {})

    def create_model(self, num_classes: int | None = None) -> GroupedModel:
        """The jaxtl model these variables belong to, with a ``num_classes``-way head.

        Example:
          >>> model = ckpt.create_model(num_classes=2)  # doctest: +SKIP
        """
        return registry.create(self.model, num_classes or self.num_classes, **self.options)

    def summary(self) -> str:
        """A few lines for a report: file, model, what was loaded and left out.

        Example:
          >>> print(ckpt.summary())  # doctest: +SKIP
        """
        options = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        lines = [
            (
                f"pretrained source {self.path} ({self.format}): {self.model}({options}), "
                f"{self.num_classes}-class head, input {self.input_shape}, "
                f"{self.normalization} normalisation"
            ),
            f"loaded {len(self.loaded)} of {len(self.loaded) + len(self.skipped)} checkpoint keys",
        ]
        by_reason: dict[str, list[str]] = {}
        for entry in self.skipped:
            key, reason = entry.split(" ", 1)
            by_reason.setdefault(reason, []).append(key)
        for reason, keys in by_reason.items():
            buffers = {k.rsplit(".", 1)[-1] for k in keys}
            # Per-layer buffers (num_batches_tracked) read better counted than listed.
            counted = len(keys) > 2 and len(buffers) == 1
            shown = f"{len(keys)} x {buffers.pop()}" if counted else ", ".join(keys)
            lines.append(f"left out: {shown} {reason}")
        return "\n".join(lines)


# ---- name tables ---------------------------------------------------------------------------------


def _conv(torch_name: str, path: str, bias: bool = False) -> list[Rule]:
    rules = [Rule(f"{torch_name}.weight", "conv", (("params", f"{path}/kernel"),))]
    if bias:
        rules.append(Rule(f"{torch_name}.bias", "copy", (("params", f"{path}/bias"),)))
    return rules


def _linear(torch_name: str, path: str) -> list[Rule]:
    return [
        Rule(f"{torch_name}.weight", "linear", (("params", f"{path}/kernel"),)),
        Rule(f"{torch_name}.bias", "copy", (("params", f"{path}/bias"),)),
    ]


def _layernorm(torch_name: str, path: str) -> list[Rule]:
    return [
        Rule(f"{torch_name}.weight", "copy", (("params", f"{path}/scale"),)),
        Rule(f"{torch_name}.bias", "copy", (("params", f"{path}/bias"),)),
    ]


def _batchnorm(torch_name: str, path: str) -> list[Rule]:
    return _layernorm(torch_name, path) + [
        Rule(f"{torch_name}.running_mean", "copy", (("batch_stats", f"{path}/mean"),)),
        Rule(f"{torch_name}.running_var", "copy", (("batch_stats", f"{path}/var"),)),
        Rule(f"{torch_name}.num_batches_tracked", "ignore", ()),
    ]


def resnet_table(
    stage_sizes: Sequence[int], bottleneck: bool, with_head: bool = True
) -> tuple[Rule, ...]:
    """torchvision ResNet's state-dict keys, in its order, mapped to jaxtl's ResNet leaves.

    The table does not depend on widths: shapes are checked against the built model.

    Args:
      stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
      bottleneck: Bottleneck blocks (ResNet-50 and up) instead of BasicBlocks.
      with_head: include the classifier ``fc``.

    Returns:
      The rules, one per torch key.

    Example:
      >>> resnet_table((2, 2, 2, 2), bottleneck=False)[0]
      Rule(torch_key='conv1.weight', kind='conv', targets=(('params', 'stem/Conv_0/kernel'),))
    """
    rules = _conv("conv1", "stem/Conv_0") + _batchnorm("bn1", "stem/BatchNorm_0")
    convs = 3 if bottleneck else 2
    for i, num_blocks in enumerate(stage_sizes):
        for j in range(num_blocks):
            torch_block, block = f"layer{i + 1}.{j}", f"stage{i + 1}/block{j}"
            for k in range(convs):
                rules += _conv(f"{torch_block}.conv{k + 1}", f"{block}/Conv_{k}")
                rules += _batchnorm(f"{torch_block}.bn{k + 1}", f"{block}/BatchNorm_{k}")
            # A shortcut projection where the shape changes: every first block but a basic
            # stage 1 (same width, stride 1), as in both torchvision and jaxtl.
            if j == 0 and (i > 0 or bottleneck):
                rules += _conv(f"{torch_block}.downsample.0", f"{block}/shortcut_conv")
                rules += _batchnorm(f"{torch_block}.downsample.1", f"{block}/shortcut_norm")
    if with_head:
        rules += _linear("fc", "head/Dense_0")
    return tuple(rules)


def vit_table(depth: int, with_head: bool = True) -> tuple[Rule, ...]:
    """timm VisionTransformer's state-dict keys (class token, no registers) mapped to jaxtl's ViT.

    Args:
      depth: number of transformer blocks.
      with_head: include the classifier ``head`` (the final ``norm`` is always included).

    Returns:
      The rules, one per torch key, in timm's order.

    Example:
      >>> vit_table(1)[0]
      Rule(torch_key='cls_token', kind='copy', targets=(('params', 'stem/cls'),))
    """
    rules = [
        Rule("cls_token", "copy", (("params", "stem/cls"),)),
        Rule("pos_embed", "copy", (("params", "stem/pos_embedding"),)),
        *_conv("patch_embed.proj", "stem/Conv_0", bias=True),
    ]
    for i in range(depth):
        torch_block, block = f"blocks.{i}", f"block{i}"
        attention = f"{block}/MultiHeadDotProductAttention_0"
        rules += _layernorm(f"{torch_block}.norm1", f"{block}/LayerNorm_0")
        for suffix, kind, leaf in (("weight", "qkv", "kernel"), ("bias", "qkv_bias", "bias")):
            targets = tuple(
                ("params", f"{attention}/{p}/{leaf}") for p in ("query", "key", "value")
            )
            rules.append(Rule(f"{torch_block}.attn.qkv.{suffix}", kind, targets))
        rules += [
            Rule(
                f"{torch_block}.attn.proj.weight",
                "attn_out",
                (("params", f"{attention}/out/kernel"),),
            ),
            Rule(f"{torch_block}.attn.proj.bias", "copy", (("params", f"{attention}/out/bias"),)),
        ]
        rules += _layernorm(f"{torch_block}.norm2", f"{block}/LayerNorm_1")
        rules += _linear(f"{torch_block}.mlp.fc1", f"{block}/Dense_0")
        rules += _linear(f"{torch_block}.mlp.fc2", f"{block}/Dense_1")
    rules += _layernorm("norm", "head/LayerNorm_0")
    if with_head:
        rules += _linear("head", "head/Dense_0")
    return tuple(rules)


def _is_classifier(rule: Rule) -> bool:
    return any(path.startswith("head/Dense_0/") for _, path in rule.targets)


# ---- layout changes ------------------------------------------------------------------------------


def _to_jax(kind: str, value: np.ndarray, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """A torch array as the jaxtl leaves of ``shapes`` (already checked to fit)."""
    if kind == "conv":  # OIHW -> HWIO
        return [value.transpose(2, 3, 1, 0)]
    if kind == "linear":  # (out, in) -> (in, out)
        return [value.T]
    if kind == "qkv":  # (3 * H * d, D) -> 3 x (D, H, d)
        return [w.T.reshape(s) for w, s in zip(np.split(value, 3), shapes)]
    if kind == "qkv_bias":  # (3 * H * d,) -> 3 x (H, d)
        return [b.reshape(s) for b, s in zip(np.split(value, 3), shapes)]
    if kind == "attn_out":  # (D, H * d) -> (H, d, D)
        return [value.T.reshape(shapes[0])]
    return [value]


def _to_torch(kind: str, leaves: Sequence[np.ndarray]) -> np.ndarray:
    """The inverse of `_to_jax`."""
    if kind == "conv":
        return leaves[0].transpose(3, 2, 0, 1)
    if kind == "linear":
        return leaves[0].T
    if kind == "qkv":
        return np.concatenate([w.reshape(w.shape[0], -1).T for w in leaves])
    if kind == "qkv_bias":
        return np.concatenate([b.reshape(-1) for b in leaves])
    if kind == "attn_out":
        return leaves[0].reshape(-1, leaves[0].shape[-1]).T
    if kind == "ignore":  # num_batches_tracked: torch's BatchNorm only uses it without momentum
        return np.zeros((), np.int64)
    return leaves[0]


def _torch_shape(kind: str, shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    """The torch shape a rule expects, given its jaxtl leaves' shapes."""
    s = shapes[0] if shapes else ()
    if kind == "conv":
        return (s[3], s[2], s[0], s[1])
    if kind == "linear":
        return (s[1], s[0])
    if kind == "qkv":
        return (3 * s[1] * s[2], s[0])
    if kind == "qkv_bias":
        return (3 * s[0] * s[1],)
    if kind == "attn_out":
        return (s[2], s[0] * s[1])
    return tuple(s)


# ---- reading and writing files -------------------------------------------------------------------


def _format_of(path: str, format: str | None) -> str:
    if format is not None:
        if format not in FORMATS:
            raise choice_error("unknown checkpoint format", format, FORMATS)
        return format
    ext = os.path.splitext(path)[1].lower()
    if ext in _EXTENSIONS:
        return _EXTENSIONS[ext]
    if os.path.exists(path):
        with open(path, "rb") as f:
            head = f.read(9)
        if head[:2] == b"PK":  # torch.save writes a zip archive
            return "pth"
        if head[8:9] == b"{":  # safetensors: 8-byte header length, then the JSON header
            return "safetensors"
    raise CheckpointError(
        f"cannot tell the format of {path}: name it .safetensors or .pth, or pass format= one "
        f"of {', '.join(FORMATS)}"
    )


def _import_torch(why: str) -> Any:
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{why} needs torch, which is not installed; install it (pip install torch) or use "
            ".safetensors"
        ) from None
    return torch


def read_state_dict(
    path: str | os.PathLike, format: str | None = None
) -> tuple[dict[str, np.ndarray], str]:
    """Reads a flat state dict as numpy arrays.

    Args:
      path: a ``.safetensors`` file, or a torch ``.pth``/``.pt`` file (needs torch; loaded with
        ``weights_only=True``, unwrapped from a ``{"state_dict": ...}``/``{"model": ...}``
        wrapper and a DataParallel ``module.`` prefix).
      format: "safetensors" or "pth"; None: from the extension, else from the file's first bytes.

    Returns:
      ``(state, format)``: torch key -> numpy array (floats as float32), in the file's order.

    Raises:
      CheckpointError: a missing or unreadable file, or .pth without torch.

    Example:
      >>> state, fmt = read_state_dict("resnet18.safetensors")  # doctest: +SKIP
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file {path} does not exist")
    fmt = _format_of(path, format)
    if fmt == "safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            state = load_file(path)
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"cannot read {path} as safetensors: {err}") from None
    else:
        torch = _import_torch(f"reading {path}")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise CheckpointError(f"cannot read {path} as a torch state dict: {first}") from None
        while isinstance(obj, Mapping) and not any(torch.is_tensor(v) for v in obj.values()):
            inner = next((obj[k] for k in _STATE_DICT_WRAPPERS if k in obj), None)
            if not isinstance(inner, Mapping):
                break
            obj = inner
        if not isinstance(obj, Mapping):
            raise CheckpointError(
                f"{path} holds a {type(obj).__name__}, not a state dict; save model.state_dict()"
            )
        state = {
            k: (v.float() if v.is_floating_point() else v).detach().cpu().numpy()
            for k, v in obj.items()
            if torch.is_tensor(v)
        }
        if state and all(k.startswith("module.") for k in state):
            state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {
        k: v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v
        for k, v in state.items()
    }
    return state, fmt


def _write(state: dict[str, np.ndarray], path: str, fmt: str) -> None:
    if fmt == "safetensors":
        from safetensors.numpy import save_file

        # "format": "pt" is the metadata Hugging Face's torch loaders look for.
        save_file(state, path, metadata={"format": "pt"})
    else:
        torch = _import_torch(f"writing {path}")
        torch.save({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, path)


# ---- architectures -------------------------------------------------------------------------------


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
        input_shape = _RESNET_INPUT
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


def _leaf_shapes(model: GroupedModel, input_shape: Sequence[int]) -> dict[tuple[str, str], tuple]:
    init = lambda x: model.init(jax.random.key(0), x, train=False)
    tree = jax.eval_shape(init, jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {(str(p[0].key), "/".join(str(k.key) for k in p[1:])): leaf.shape for p, leaf in flat}


def state_dict_shapes(
    model: str,
    num_classes: int = 1000,
    options: Mapping[str, Any] | None = None,
    input_shape: Sequence[int] = _RESNET_INPUT,
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
    shapes = _leaf_shapes(built, input_shape)
    return {
        r.torch_key: _torch_shape(r.kind, [shapes[t] for t in r.targets]) for r in table_for(built)
    }


# ---- load and export -----------------------------------------------------------------------------


def _nest(flat: Mapping[tuple[str, str], Any], groups: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for (collection, path), value in flat.items():
        node = out.setdefault(collection, {})
        *parents, leaf = path.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    # Model order (stem ... head), as init_variables returns it.
    return {
        c: {g: out[c][g] for g in groups if g in out[c]}
        for c in ("params", "batch_stats")
        if c in out
    }


def _mismatch(path: str, model: str, what: str, counts: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path} does not fit {model}: {what} ({counts})")


def convert(
    state: Mapping[str, np.ndarray],
    model: str,
    options: Mapping[str, Any] | None = None,
    num_classes: int | None = None,
    input_shape: Sequence[int] = _RESNET_INPUT,
    where: str = "state dict",
) -> tuple[dict[str, Any], tuple[str, ...], tuple[str, ...]]:
    """Converts a torch state dict into the variables of the jaxtl model ``model(**options)``.

    Args:
      state: torch key -> numpy array.
      model: registry name.
      options: model options.
      num_classes: the head's classes; None or the checkpoint's own count loads the classifier,
        another count leaves it out (so a transfer re-creates it).
      input_shape: (H, W, C) the model is built for.
      where: names the checkpoint in errors.

    Returns:
      ``(variables, loaded, skipped)``: variables as ``init_variables`` returns them (jax
      arrays), the torch keys loaded, and the keys left out, each with its reason.

    Raises:
      CheckpointError: one line naming the first key that is missing, unexpected or of another
        shape, with the counts of each.

    Example:
      >>> variables, loaded, skipped = convert(state, "resnet18_imagenet")  # doctest: +SKIP
    """
    options = dict(options or {})
    table = table_for(registry.create(model, 1, **options))
    head_rules = [r for r in table if _is_classifier(r)]
    own_classes = (
        int(state[head_rules[0].torch_key].shape[0]) if head_rules[0].torch_key in state else None
    )
    with_head = own_classes is not None and num_classes in (None, own_classes)
    built = registry.create(model, num_classes or own_classes or 1, **options)
    shapes = _leaf_shapes(built, input_shape)

    known = {r.torch_key for r in table}
    missing = [r.torch_key for r in table if r.torch_key not in state and r.kind != "ignore"]
    missing = [k for k in missing if with_head or k not in {r.torch_key for r in head_rules}]
    unexpected = [k for k in state if k not in known]
    wrong = []
    for rule in table:
        if (
            rule.torch_key in state
            and rule.kind != "ignore"
            and (with_head or rule not in head_rules)
        ):
            expected = _torch_shape(rule.kind, [shapes[t] for t in rule.targets])
            got = tuple(state[rule.torch_key].shape)
            if got != expected:
                wrong.append(f"{rule.torch_key!r} has shape {got}, the model needs {expected}")
    counts = f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} of another shape"
    if missing:
        raise _mismatch(where, model, f"key {missing[0]!r} is missing", counts)
    if unexpected:
        raise _mismatch(where, model, f"key {unexpected[0]!r} is unexpected", counts)
    if wrong:
        raise _mismatch(where, model, wrong[0], counts)

    flat: dict[tuple[str, str], Any] = {}
    loaded, skipped = [], []
    for rule in table:
        if rule.torch_key not in state:
            continue
        if rule.kind == "ignore":
            skipped.append(f"{rule.torch_key} (no jaxtl counterpart)")
            continue
        if rule in head_rules and not with_head:
            skipped.append(f"{rule.torch_key} (classifier: other class count)")
            continue
        value = np.asarray(state[rule.torch_key])
        leaves = _to_jax(rule.kind, value, [shapes[t] for t in rule.targets])
        for target, leaf in zip(rule.targets, leaves):
            flat[target] = jnp.asarray(np.ascontiguousarray(leaf, dtype=np.float32))
        loaded.append(rule.torch_key)
    expected_leaves = {t for t in shapes if with_head or not t[1].startswith("head/Dense_0/")}
    if set(flat) != expected_leaves:  # the table is wrong for this model: a bug, not user error
        raise AssertionError(f"name table misses {sorted(expected_leaves ^ set(flat))[:3]}")
    return _nest(flat, built.layer_groups), tuple(loaded), tuple(skipped)


def load(
    path: str | os.PathLike,
    arch: str | None = None,
    num_classes: int | None = None,
    *,
    options: Mapping[str, Any] | None = None,
    format: str | None = None,
) -> Pretrained:
    """Loads a torchvision ResNet or timm ViT checkpoint into jaxtl.

    Args:
      path: a ``.safetensors`` file or a torch ``.pth`` file (the latter needs torch).
      arch: registry name to build; None infers it from the keys and shapes (ResNet-18/34 ->
        "resnet18_imagenet"/"resnet34" with stem_type="imagenet", ResNet-50 -> "resnet50",
        timm ViT -> "vit").
      num_classes: classes of the model it will be used in; when it differs from the
        checkpoint's head the classifier is left out (listed in ``skipped``) so that a
        transfer re-creates it.
      options: model options that override the inferred ones (e.g. ``{"num_heads": 3}``).
      format: "safetensors" or "pth"; None: from the extension or the file's first bytes.

    Returns:
      A :class:`Pretrained` with the model name, its options and the variables.

    Raises:
      CheckpointError: a one-line error naming the first missing, unexpected or mis-shaped key.

    Example:
      >>> ckpt = load("resnet18.safetensors", num_classes=2)  # doctest: +SKIP
      >>> ckpt.model, ckpt.head_loaded  # doctest: +SKIP
      ('resnet18_imagenet', False)
    """
    path = os.fspath(path)
    state, fmt = read_state_dict(path, format)
    model, model_options, own_classes, input_shape = infer_architecture(state, arch, options)
    variables, loaded, skipped = convert(
        state, model, model_options, num_classes, input_shape, where=path
    )
    return Pretrained(
        model=model,
        options=model_options,
        num_classes=own_classes,
        input_shape=input_shape,
        variables=variables,
        loaded=loaded,
        skipped=skipped,
        format=fmt,
        path=path,
    )


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
        r.torch_key: np.ascontiguousarray(_to_torch(r.kind, [flat[t] for t in r.targets]))
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
    fmt = _format_of(path, format)
    state = to_state_dict(variables)
    _write(state, path, fmt)
    return tuple(state)


# ---- the runner's source hook --------------------------------------------------------------------


def is_file_source(spec: str | None) -> bool:
    """True for a source spec "pretrained:PATH".

    Example:
      >>> is_file_source("pretrained:/ckpt/resnet18.safetensors"), is_file_source("a")
      (True, False)
    """
    return isinstance(spec, str) and spec.startswith(SOURCE_PREFIX)


def source_from_file(
    spec: str,
    num_classes_b: int | None = None,
    arch: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> Pretrained:
    """The source model of a transfer from a checkpoint file instead of training on task A.

    The head is kept when the checkpoint's class count equals B's, else left out (listed in
    ``skipped``), so ``transfer_variables(source.variables, init_b)`` re-creates it. Retention
    of A cannot be measured: A's data is not known.

    Args:
      spec: "pretrained:PATH".
      num_classes_b: classes of task B; None keeps the checkpoint's head whatever B's class
        count (``transfer_variables`` then re-creates it when its shape differs).
      arch: registry name to build (None: inferred from the file).
      options: model options overriding the inferred ones.

    Returns:
      The :class:`Pretrained`; build B's model with ``source.create_model(num_classes_b)``.

    Raises:
      CheckpointError: not a "pretrained:" spec, or a file that does not fit.

    Example:
      >>> source = source_from_file("pretrained:r18.safetensors", num_classes_b=2)  # doctest: +SKIP
      >>> model_b = source.create_model(2)  # doctest: +SKIP
    """
    if not is_file_source(spec):
        raise CheckpointError(f"source {spec!r} is not a file source; write {SOURCE_PREFIX}PATH")
    path = spec[len(SOURCE_PREFIX) :]
    if not path:
        raise CheckpointError(f"source {spec!r} names no file; write {SOURCE_PREFIX}PATH")
    return load(path, arch, num_classes_b, options=options)


__all__: list[str] = [
    "ARCHS",
    "FORMATS",
    "SOURCE_PREFIX",
    "CheckpointError",
    "Pretrained",
    "Rule",
    "convert",
    "export",
    "infer_architecture",
    "is_file_source",
    "load",
    "read_state_dict",
    "resnet_table",
    "source_from_file",
    "state_dict_shapes",
    "table_for",
    "to_state_dict",
    "vit_table",
]
