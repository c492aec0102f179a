"""Small plain convolutional networks for images (CNN) and 1-D signals (CNN1D)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtl.models.base import ClassifierHead, GroupedModel, check_positive, choice_error, norm_layer

CONV_IMPLS: tuple[str, ...] = ("auto", "xla", "xla_vjp", "im2col")


def _resolve_impl(impl: str) -> str:
    if impl not in CONV_IMPLS:
        raise choice_error("unknown conv", impl, CONV_IMPLS)
    if impl != "auto":
        return impl
    # Inside a loop (the engine's compiled chunk of steps) XLA:CPU gives the kernel gradient
    # of a native convolution a layout its fast convolution path does not take, and that one
    # convolution runs ~10x slower than the same program called once per step; the gradient
    # written out as a convolution in the canonical layout (`xla_vjp`) keeps the whole step on
    # the fast path, and beats the im2col form (shifted slices + a matmul, memory-bound at
    # batch 64) at every study shape (`jaxtl bench` measures all three). Accelerators have fast
    # native convolutions and gradients.
    return "xla_vjp" if jax.default_backend() == "cpu" else "xla"


def _same_padding(window: Sequence[int]) -> list[tuple[int, int]]:
    return [((k - 1) // 2, k // 2) for k in window]


def _conv(x: jax.Array, kernel: jax.Array, padding: Sequence[tuple[int, int]]) -> jax.Array:
    numbers = nn.linear._conv_dimension_numbers(x.shape)  # channels last: NHWC, HWIO
    return jax.lax.conv_general_dilated(
        x, kernel, (1,) * (x.ndim - 2), padding, dimension_numbers=numbers
    )


@jax.custom_vjp
def xla_vjp_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """A stride-1 "SAME" convolution (channels last) whose gradients are convolutions too.

    Equal to ``lax.conv_general_dilated(x, kernel, 1, "SAME")`` in value and gradients; the
    gradients are written out so that XLA:CPU runs all three convolutions on its fast path,
    inside a compiled loop as well (see :func:`_resolve_impl`).

    Example:
      >>> xla_vjp_conv(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 5))).shape
      (1, 4, 4, 5)
    """
    return _conv(x, kernel, _same_padding(kernel.shape[:-2]))


def _xla_vjp_forward(x, kernel):
    return xla_vjp_conv(x, kernel), (x, kernel)


def _xla_vjp_backward(residuals, dy):
    x, kernel = residuals
    window = kernel.shape[:-2]
    n = len(window)
    # d/dx: the kernel flipped in space with in/out swapped, padded the other way round.
    flipped = jnp.swapaxes(jnp.flip(kernel, tuple(range(n))), -1, -2)
    dx = _conv(dy, flipped, [(hi, lo) for lo, hi in _same_padding(window)])
    # d/dkernel: x's channels as the batch, its batch as the features, dy as a window the size
    # of the image. The barrier keeps XLA from folding these transposes back into the
    # convolution's dimension numbers, which is the layout the slow path gets.
    xt = jnp.moveaxis(x, (0, -1), (-1, 0))  # (in, *spatial, batch)
    dyt = jnp.moveaxis(dy, 0, -2)  # (*spatial, batch, out)
    xt, dyt = jax.lax.optimization_barrier((xt, dyt))
    dk = _conv(xt, dyt, _same_padding(window))  # (in, *window, out)
    return dx, jnp.moveaxis(dk, 0, -2).astype(kernel.dtype)


xla_vjp_conv.defvjp(_xla_vjp_forward, _xla_vjp_backward)


def im2col_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """A stride-1 "SAME" convolution as shifted slices and one matmul (channels last).

    ``x``: ``(batch, *spatial, in)``; ``kernel``: ``(*window, in, out)``. Equals
    ``lax.conv_general_dilated(x, kernel, 1, "SAME")`` up to float rounding.

    Example:
      >>> im2col_conv(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 5))).shape
      (1, 4, 4, 5)
    """
    window = kernel.shape[:-2]
    spatial = x.shape[1:-1]
    pads = [(0, 0)] + [((k - 1) // 2, k // 2) for k in window] + [(0, 0)]
    padded = jnp.pad(x, pads)
    patches = []
    for offset in itertools.product(*(range(k) for k in window)):
        index = (slice(None),) + tuple(slice(o, o + n) for o, n in zip(offset, spatial))
        patches.append(padded[index])
    columns = jnp.concatenate(patches, axis=-1)  # (batch, *spatial, window * in), offset-major
    return columns @ kernel.reshape(-1, kernel.shape[-1])


@jax.custom_vjp
def max_pool_2x(x: jax.Array) -> jax.Array:
    """2x max-pooling with stride 2 and "SAME" padding over every spatial axis (channels last).

    Equal to ``nn.max_pool(x, (2,) * d, strides=(2,) * d, padding="SAME")`` in value and
    gradient (the gradient goes to the first maximum of each window, in row-major order, as
    XLA's ``select_and_scatter`` sends it). Written as a reshape and a max, with the gradient as
    a mask, because XLA:CPU lowers the native pooling gradient to a scatter with index arrays,
    which took ~15% of the study CNN's training step (batch 64, measured 2026-12-03).

    Example:
      >>> max_pool_2x(jnp.arange(16.0).reshape(1, 4, 4, 1))[0, ..., 0]
      Array([[ 5.,  7.],
             [13., 15.]], dtype=float32)
    """
    return _max_pool_2x_forward(x)[0]


def _pool_windows(x: jax.Array) -> jax.Array:
    """``x`` padded with -inf to even sides, as ``(batch, *out_spatial, 2 ** d, channels)``."""
    d = x.ndim - 2
    pads = [(0, 0)] + [(0, n % 2) for n in x.shape[1:-1]] + [(0, 0)]
    x = jnp.pad(x, pads, constant_values=-jnp.inf)
    out = [n // 2 for n in x.shape[1:-1]]
    split = x.reshape(x.shape[0], *itertools.chain(*((n, 2) for n in out)), x.shape[-1])
    # (batch, o1, 2, o2, 2, ..., channels) -> (batch, o1, o2, ..., 2, 2, ..., channels)
    order = [0, *range(1, 2 * d, 2), *range(2, 2 * d + 1, 2), 2 * d + 1]
    return split.transpose(order).reshape(x.shape[0], *out, 2**d, x.shape[-1])


def _max_pool_2x_forward(x):
    windows = _pool_windows(x)
    pooled = windows.max(axis=-2)
    return pooled, (x.shape, windows, pooled)


def _max_pool_2x_backward(residuals, dy):
    shape, windows, pooled = residuals
    d = len(shape) - 2
    hits = windows == pooled[..., None, :]
    first = hits & (jnp.cumsum(hits, axis=-2) == 1)
    dwindows = jnp.where(first, dy[..., None, :], jnp.zeros((), dy.dtype))
    out = list(pooled.shape[1:-1])
    split = dwindows.reshape(shape[0], *out, *(2,) * d, shape[-1])
    order = [0, *itertools.chain(*((1 + i, 1 + d + i) for i in range(d))), 2 * d + 1]
    dx = split.transpose(order).reshape(shape[0], *(2 * n for n in out), shape[-1])
    return (dx[(slice(None), *(slice(0, n) for n in shape[1:-1]))],)


max_pool_2x.defvjp(_max_pool_2x_forward, _max_pool_2x_backward)


class Conv(nn.Module):
    """A stride-1 "SAME" convolution with ``nn.Conv``'s parameters (names, shapes, init).

    ``conv="auto"`` computes it with :func:`xla_vjp_conv` on CPU and XLA's native convolution
    elsewhere; the parameters, and so checkpoints and transfer, are the same either way.
    """

    features: int
    kernel_size: tuple[int, ...]
    use_bias: bool = True
    dtype: Any = jnp.float32
    conv: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel",
            nn.linear.default_kernel_init,
            (*self.kernel_size, x.shape[-1], self.features),
            jnp.float32,
        )
        bias = (
            self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
            if self.use_bias
            else None
        )
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        impl = _resolve_impl(self.conv)
        if impl == "im2col":
            y = im2col_conv(x, kernel)
        elif impl == "xla_vjp":
            y = xla_vjp_conv(x, kernel)
        else:
            y = _conv(x, kernel, _same_padding(self.kernel_size))
        return y if bias is None else y + bias


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
    conv: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.ndim == len(self.kernel_size) + 1:
            x = x[..., None]
        for _ in range(self.num_convs):
            x = Conv(
                self.features,
                self.kernel_size,
                use_bias=self.norm == "none",
                dtype=self.dtype,
                conv=self.conv,
            )(x)
            x = nn.relu(norm_layer(self.norm, train, self.dtype)(x))
        if self.pool:
            # SAME padding keeps tiny inputs (a 1-pixel map) valid after many pools.
            x = max_pool_2x(x)
        return x


class CNN(GroupedModel):
    """Small CNN for 8x8..32x32 images: groups "stem", "block1", ..., "head".

    The stem is one conv at widths[0]; block i has two convs at widths[i-1] and halves the
    resolution; the head is global average pooling + dropout + Dense.

    Attributes:
      widths: channels per block (one block each).
      kernel_size: convolution window; its length is the number of spatial dimensions.
      conv: "auto" (xla_vjp on CPU, XLA's convolution elsewhere), "xla", "xla_vjp" (XLA's
        convolution with its gradients written out, fast inside XLA:CPU loops) or "im2col";
        the parameters are the same for all.

    Example:
      >>> CNN(num_classes=10, widths=(16, 32)).layer_groups
      ('stem', 'block1', 'block2', 'head')
    """

    widths: Sequence[int] = (32, 64)
    kernel_size: tuple[int, ...] = (3, 3)
    conv: str = "auto"

    def __post_init__(self) -> None:
        if self.conv not in CONV_IMPLS:
            raise choice_error("unknown conv", self.conv, CONV_IMPLS)
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
            conv=self.conv,
        )


class CNN1D(CNN):
    """1-D CNN for signals of shape (N, L, 1) or (N, L), e.g. MNIST-1D; same groups as CNN.

    Example:
      >>> CNN1D(num_classes=10).layer_groups
      ('stem', 'block1', 'block2', 'head')
    """

    kernel_size: tuple[int, ...] = (5,)
