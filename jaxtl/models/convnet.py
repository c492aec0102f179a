"""Small plain convolutional networks for images (CNN) and 1-D signals (CNN1D)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtl.models.base import ClassifierHead, GroupedModel, check_positive, norm_layer


class ConvBlock(nn.Module):
    """`num_convs` x (conv -> norm -> ReLU), then an optional 2x max-pool.

    Works for any number of spatial dimensions (given by `kernel_size`); an input without a
    channel axis (e.g. signals of shape (N, L)) gets one.
    """

    features: int
    kernel_size: tuple[int, ...]
    num_convs: int = 2
    pool: bool = True
    norm: str = "batchnorm"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.ndim == len(self.kernel_size) + 1:
            x = x[..., None]
        for _ in range(self.num_convs):
            x = nn.Conv(
                self.features, self.kernel_size, use_bias=self.norm == "none", dtype=self.dtype
            )(x)
            x = nn.relu(norm_layer(self.norm, train, self.dtype)(x))
        if self.pool:
            window = (2,) * len(self.kernel_size)
            # SAME padding keeps tiny inputs (a 1-pixel map) valid after many pools.
            x = nn.max_pool(x, window, strides=window, padding="SAME")
        return x


class CNN(GroupedModel):
    """Small CNN for 8x8..32x32 images: groups "stem", "block1", ..., "head".

    The stem is one conv at widths[0]; block i has two convs at widths[i-1] and halves the
    resolution; the head is global average pooling + dropout + Dense.

    Attributes:
      widths: channels per block (one block each).
      kernel_size: convolution window; its length is the number of spatial dimensions.

    Example:
      >>> CNN(num_classes=10, widths=(16, 32)).layer_groups
      ('stem', 'block1', 'block2', 'head')
    """

    widths: Sequence[int] = (32, 64)
    kernel_size: tuple[int, ...] = (3, 3)

    def __post_init__(self) -> None:
        check_positive(f"{type(self).__name__} widths", self.widths)
        check_positive(f"{type(self).__name__} kernel_size", self.kernel_size)
        super().__post_init__()

    @property
    def layer_groups(self) -> tuple[str, ...]:
        return ("stem",) + tuple(f"block{i}" for i in range(1, len(self.widths) + 1)) + ("head",)

    def make_group(self, name: str) -> nn.Module:
        if name == "head":
            return ClassifierHead(
                self.num_classes, pool="mean", dropout=self.dropout, dtype=self.dtype
            )
        if name == "stem":
            features, num_convs, pool = self.widths[0], 1, False
        else:
            features, num_convs, pool = self.widths[int(name.removeprefix("block")) - 1], 2, True
        return ConvBlock(
            features,
            tuple(self.kernel_size),
            num_convs=num_convs,
            pool=pool,
            norm=self.norm,
            dtype=self.dtype,
        )


class CNN1D(CNN):
    """1-D CNN for signals of shape (N, L, 1) or (N, L), e.g. MNIST-1D; same groups as CNN.

    Example:
      >>> CNN1D(num_classes=10).layer_groups
      ('stem', 'block1', 'block2', 'head')
    """

    kernel_size: tuple[int, ...] = (5,)
