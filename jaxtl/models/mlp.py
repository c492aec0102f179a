"""Multi-layer perceptron on flattened inputs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtl.models.base import ClassifierHead, GroupedModel, check_positive, norm_layer


class DenseBlock(nn.Module):
    """Flatten -> Dense -> norm -> ReLU -> dropout."""

    features: int
    norm: str = "none"
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        x = nn.Dense(self.features, use_bias=self.norm == "none", dtype=self.dtype)(x)
        x = nn.relu(norm_layer(self.norm, train, self.dtype)(x))
        return nn.Dropout(self.dropout, deterministic=not train)(x)


class MLP(GroupedModel):
    """MLP with groups "layer0", "layer1", ..., "head" (one per hidden width).

    Attributes:
      widths: hidden layer widths, one group each.
      norm: defaults to "none" (plain MLP).
      dropout: applied after every hidden activation.

    Example:
      >>> model = MLP(num_classes=10, widths=(64,))
      >>> model.layer_groups
      ('layer0', 'head')
    """

    widths: Sequence[int] = (256, 128)
    norm: str = "none"

    def __post_init__(self) -> None:
        check_positive("MLP widths", self.widths, allow_empty=True)
        super().__post_init__()

    @property
    def layer_groups(self) -> tuple[str, ...]:
        return tuple(f"layer{i}" for i in range(len(self.widths))) + ("head",)

    def make_group(self, name: str) -> nn.Module:
        if name == "head":
            return ClassifierHead(self.num_classes, pool="flatten", dtype=self.dtype)
        width = self.widths[int(name.removeprefix("layer"))]
        return DenseBlock(width, norm=self.norm, dropout=self.dropout, dtype=self.dtype)
