"""torchvision/timm state-dict names mapped to jaxtl leaves, and the layout change of each.

A :class:`Rule` ties one torch key to the ``(collection, "/"-path)`` leaves it fills: conv
kernels OIHW -> HWIO, linear weights (out, in) -> (in, out), timm's fused ``qkv`` projection ->
flax's per-head query/key/value kernels, BatchNorm buffers -> ``batch_stats``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


class Rule(NamedTuple):
    """One row of a name table: a torch key, how its layout changes, the jaxtl leaves it fills.

    ``kind`` is one of "conv", "linear", "copy", "qkv", "qkv_bias", "attn_out" or "ignore" (a
    torch buffer with no jaxtl counterpart); ``targets`` are ``(collection, path)`` pairs.
    """

    torch_key: str
    kind: str
    targets: tuple[tuple[str, str], ...]


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


def is_classifier(rule: Rule) -> bool:
    """Whether ``rule`` fills the classifier (``head/Dense_0``), which a transfer may leave out."""
    return any(path.startswith("head/Dense_0/") for _, path in rule.targets)


# ---- layout changes ------------------------------------------------------------------------------


def to_jax(kind: str, value: np.ndarray, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
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


def to_torch(kind: str, leaves: Sequence[np.ndarray]) -> np.ndarray:
    """The inverse of `to_jax`."""
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


def torch_shape(kind: str, shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
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
