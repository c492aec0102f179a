"""Vision Transformer (Dosovitskiy et al. 2021), tiny by default."""

from __future__ import annotations

import numbers
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtl.models.base import ClassifierHead, GroupedModel, check_positive


class PatchEmbedding(nn.Module):
    """Non-overlapping patches -> tokens, prepends a learned cls token, adds learned positions.

    The number of positions is fixed at init by the input size.
    """

    patch_size: int
    dim: int
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        p = self.patch_size
        x = nn.Conv(self.dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype)(x)
        x = x.reshape(x.shape[0], -1, self.dim)
        cls = self.param("cls", nn.initializers.zeros, (1, 1, self.dim))
        x = jnp.concatenate(
            [jnp.broadcast_to(cls, (x.shape[0], 1, self.dim)).astype(x.dtype), x], axis=1
        )
        pos = self.param("pos_embedding", nn.initializers.normal(stddev=0.02), (1,) + x.shape[1:])
        x = x + pos.astype(x.dtype)
        return nn.Dropout(self.dropout, deterministic=not train)(x)


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + MHA(LN(x)), then x + MLP(LN(x))."""

    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    gelu_approximate: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        y = nn.LayerNorm(dtype=self.dtype)(x)
        y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dtype=self.dtype)(y, y)
        x = x + nn.Dropout(self.dropout, deterministic=not train)(y)
        y = nn.LayerNorm(dtype=self.dtype)(x)
        y = nn.gelu(nn.Dense(self.mlp_dim, dtype=self.dtype)(y), approximate=self.gelu_approximate)
        y = nn.Dropout(self.dropout, deterministic=not train)(y)
        y = nn.Dense(x.shape[-1], dtype=self.dtype)(y)
        return x + nn.Dropout(self.dropout, deterministic=not train)(y)


class ViT(GroupedModel):
    """ViT with groups "stem" (patch embedding), "block0", ..., "block{depth-1}", "head".

    The head is LayerNorm + the cls token + Dense. ViT always uses LayerNorm.

    Attributes:
      patch_size: side of the square patches.
      dim: token width.
      depth: number of transformer blocks (one group each).
      num_heads: attention heads; must divide dim.
      mlp_ratio: MLP hidden width = mlp_ratio * dim.
      gelu_approximate: tanh approximation of GELU (flax's default); False is the exact erf
        GELU of timm/PyTorch, needed to reproduce a timm checkpoint's outputs.

    Example:
      >>> ViT(num_classes=10, depth=2).layer_groups
      ('stem', 'block0', 'block1', 'head')
    """

    norm: str = "layernorm"
    patch_size: int = 4
    dim: int = 64
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: int = 4
    gelu_approximate: bool = True

    supported_norms: ClassVar[tuple[str, ...]] = ("layernorm",)

    def __post_init__(self) -> None:
        check_positive(
            "ViT patch_size/dim/num_heads/mlp_ratio",
            (self.patch_size, self.dim, self.num_heads, self.mlp_ratio),
        )
        if not isinstance(self.depth, numbers.Integral) or self.depth < 0:
            raise ValueError(f"ViT depth must be a non-negative integer, got {self.depth!r}")
        if self.dim % self.num_heads:
            raise ValueError(f"ViT num_heads ({self.num_heads}) must divide dim ({self.dim})")
        super().__post_init__()

    @property
    def layer_groups(self) -> tuple[str, ...]:
        return ("stem",) + tuple(f"block{i}" for i in range(self.depth)) + ("head",)

    def make_group(self, name: str) -> nn.Module:
        if name == "stem":
            return PatchEmbedding(self.patch_size, self.dim, dropout=self.dropout, dtype=self.dtype)
        if name == "head":
            return ClassifierHead(self.num_classes, pool="cls", layernorm=True, dtype=self.dtype)
        return EncoderBlock(
            self.num_heads,
            self.mlp_ratio * self.dim,
            dropout=self.dropout,
            gelu_approximate=self.gelu_approximate,
            dtype=self.dtype,
        )
