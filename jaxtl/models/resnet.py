"""ResNets (He et al. 2016) with a CIFAR stem (3x3, stride 1) or an ImageNet stem (7x7/2 + pool)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtl.models.base import (
    INVERSE_STDS,
    ClassifierHead,
    GroupedModel,
    check_positive,
    choice_error,
    norm_layer,
)

BLOCKS: tuple[str, ...] = ("basic", "bottleneck")
STEMS: tuple[str, ...] = ("cifar", "imagenet")
# "same": XLA's SAME padding, which pads a stride-2 3x3 conv of an even-sized input only at the
# bottom/right; "symmetric": k // 2 on every side, as torchvision does (needed to reproduce a
# torchvision checkpoint's activations exactly; the two agree for stride-1 convs).
PADDINGS: tuple[str, ...] = ("same", "symmetric")


class ResNetStem(nn.Module):
    """CIFAR stem: 3x3 conv, stride 1. ImageNet stem: 7x7 conv, stride 2, then 3x3/2 max-pool."""

    features: int
    kind: str = "cifar"
    norm: str = "batchnorm"
    bn_inverse_std: str = "rsqrt"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        use_bias = self.norm == "none"
        if self.kind == "cifar":
            x = nn.Conv(self.features, (3, 3), use_bias=use_bias, dtype=self.dtype)(x)
        else:
            x = nn.Conv(
                self.features,
                (7, 7),
                strides=(2, 2),
                padding=((3, 3), (3, 3)),
                use_bias=use_bias,
                dtype=self.dtype,
            )(x)
        x = nn.relu(norm_layer(self.norm, train, self.dtype, inverse_std=self.bn_inverse_std)(x))
        if self.kind == "imagenet":
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        return x


class ResidualBlock(nn.Module):
    """Basic (two 3x3 convs) or bottleneck (1x1, 3x3, 1x1 with 4x expansion) residual block.

    The shortcut is a strided 1x1 conv + norm whenever the shape changes.
    """

    features: int
    strides: int = 1
    bottleneck: bool = False
    norm: str = "batchnorm"
    padding: str = "same"
    bn_inverse_std: str = "rsqrt"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        use_bias = self.norm == "none"

        def conv(features: int, window: int, strides: int = 1, name: str | None = None) -> nn.Conv:
            return nn.Conv(
                features,
                (window, window),
                strides=(strides, strides),
                padding="SAME" if self.padding == "same" else [(window // 2, window // 2)] * 2,
                use_bias=use_bias,
                dtype=self.dtype,
                name=name,
            )

        def norm(name: str | None = None):
            return norm_layer(
                self.norm, train, self.dtype, name=name, inverse_std=self.bn_inverse_std
            )

        if self.bottleneck:
            out_features = 4 * self.features
            y = nn.relu(norm()(conv(self.features, 1)(x)))
            y = nn.relu(norm()(conv(self.features, 3, self.strides)(y)))
            y = norm()(conv(out_features, 1)(y))
        else:
            out_features = self.features
            y = nn.relu(norm()(conv(self.features, 3, self.strides)(x)))
            y = norm()(conv(self.features, 3)(y))
        shortcut = x
        if x.shape[-1] != out_features or self.strides != 1:
            shortcut = conv(out_features, 1, self.strides, name="shortcut_conv")(x)
            shortcut = norm(name="shortcut_norm")(shortcut)
        return nn.relu(shortcut + y)


class ResNetStage(nn.Module):
    """`num_blocks` residual blocks named "block0", ...; the first one applies `strides`."""

    features: int
    num_blocks: int
    strides: int = 1
    bottleneck: bool = False
    norm: str = "batchnorm"
    padding: str = "same"
    bn_inverse_std: str = "rsqrt"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for j in range(self.num_blocks):
            x = ResidualBlock(
                self.features,
                strides=self.strides if j == 0 else 1,
                bottleneck=self.bottleneck,
                norm=self.norm,
                padding=self.padding,
                bn_inverse_std=self.bn_inverse_std,
                dtype=self.dtype,
                name=f"block{j}",
            )(x, train=train)
        return x


class ResNet(GroupedModel):
    """ResNet with groups "stem", "stage1", ..., "stageK", "head".

    Stage i has width base_width * 2**(i-1) (times 4 at the output of bottleneck blocks);
    every stage after the first halves the resolution. The head is global average pooling +
    dropout + Dense.

    Attributes:
      stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
      block_type: "basic" or "bottleneck".
      stem_type: "cifar" (3x3 conv, stride 1, no pool) or "imagenet" (7x7/2 conv + 3x3/2 max-pool).
      base_width: channels of the stem and the first stage (64 in the paper).
      conv_padding: padding of the blocks' convs, "same" (XLA's SAME) or "symmetric" (k // 2 on
        each side, torchvision's; what `jaxtl.models.pretrained` uses for its checkpoints).
      bn_inverse_std: how BatchNorms using running statistics compute 1 / sqrt(var + eps):
        "rsqrt" (flax's) or "divide" (torch's; what `jaxtl.models.pretrained` uses). Training
        steps are the same either way.

    Example:
      >>> ResNet(num_classes=10, base_width=8).layer_groups
      ('stem', 'stage1', 'stage2', 'stage3', 'stage4', 'head')
    """

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    block_type: str = "basic"
    stem_type: str = "cifar"
    base_width: int = 64
    conv_padding: str = "same"
    bn_inverse_std: str = "rsqrt"

    def __post_init__(self) -> None:
        check_positive("ResNet stage_sizes", self.stage_sizes)
        check_positive("ResNet base_width", self.base_width)
        if self.block_type not in BLOCKS:
            raise choice_error("unknown ResNet block", self.block_type, BLOCKS)
        if self.stem_type not in STEMS:
            raise choice_error("unknown ResNet stem", self.stem_type, STEMS)
        if self.conv_padding not in PADDINGS:
            raise choice_error("unknown ResNet conv_padding", self.conv_padding, PADDINGS)
        if self.bn_inverse_std not in INVERSE_STDS:
            raise choice_error("unknown ResNet bn_inverse_std", self.bn_inverse_std, INVERSE_STDS)
        super().__post_init__()

    @property
    def layer_groups(self) -> tuple[str, ...]:
        stages = tuple(f"stage{i}" for i in range(1, len(self.stage_sizes) + 1))
        return ("stem",) + stages + ("head",)

    def make_group(self, name: str) -> nn.Module:
        if name == "head":
            return ClassifierHead(
                self.num_classes, pool="mean", dropout=self.dropout, dtype=self.dtype
            )
        if name == "stem":
            return ResNetStem(
                self.base_width,
                kind=self.stem_type,
                norm=self.norm,
                bn_inverse_std=self.bn_inverse_std,
                dtype=self.dtype,
            )
        i = int(name.removeprefix("stage")) - 1
        return ResNetStage(
            self.base_width * 2**i,
            self.stage_sizes[i],
            strides=1 if i == 0 else 2,
            bottleneck=self.block_type == "bottleneck",
            norm=self.norm,
            padding=self.conv_padding,
            bn_inverse_std=self.bn_inverse_std,
            dtype=self.dtype,
        )
