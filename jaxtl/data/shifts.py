"""Input-level distribution shifts, applied identically to a dataset's train and test splits.

Each shift is a pure function of (inputs, seed, params). Random parts that define *the* shift
(the pixel permutation) depend on the seed alone, so train and test see the same shift; random
parts that are per-example noise use an independent stream per split. Images are clipped to
[0, 1] afterwards; signals are left unclipped.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.ndimage

from jaxtl.data.dataset import DataError, Dataset, check_fits_in_memory
from jaxtl.suggest import did_you_mean

_TRAIN_STREAM, _TEST_STREAM = 0, 1


def _interpolation_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) linear-interpolation weights with half-pixel centres.

    When shrinking, the triangle kernel is widened by n_in / n_out so every input pixel
    contributes (antialiasing, as in jax.image.resize); when growing it is plain bilinear.
    """
    scale = n_in / n_out
    width = max(1.0, scale)
    centres = (np.arange(n_out) + 0.5) * scale - 0.5
    weights = np.maximum(0.0, 1.0 - np.abs(np.arange(n_in)[None, :] - centres[:, None]) / width)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def resize(x: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinear (antialiased when shrinking) resize of images or signals.

    Args:
      x: images (N, H, W, C) or signals (N, L, C).
      size: output (H, W) for images (an int means square), output length L for signals.

    Returns:
      float32 array (N, H', W', C) or (N, L', C); equal sizes return the input values exactly.

    Example:
      >>> resize(np.ones((2, 28, 28, 1), np.float32), 8).shape
      (2, 8, 8, 1)
    """
    if x.ndim == 3:
        if not isinstance(size, (int, np.integer)) or size < 1:
            raise DataError(f"resize of signals needs an int length >= 1, got size={size!r}")
        _check_resized_memory(x, (int(size),))
        weights = _interpolation_matrix(x.shape[1], int(size))
        return np.einsum("ol,nlc->noc", weights, x).astype(np.float32)
    height, width = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if height < 1 or width < 1:
        raise DataError(f"resize needs sizes >= 1, got size={size!r}")
    _check_resized_memory(x, (int(height), int(width)))
    rows = _interpolation_matrix(x.shape[1], int(height))
    cols = _interpolation_matrix(x.shape[2], int(width))
    x = np.einsum("oh,nhwc->nowc", rows, x)
    return np.einsum("pw,nowc->nopc", cols, x).astype(np.float32)


def _check_resized_memory(x: np.ndarray, shape: tuple[int, ...]) -> None:
    """A resize whose result cannot fit in memory fails in one line instead of a MemoryError."""
    example = (*shape, x.shape[-1])
    # The result, and the half-resized array on the way (rows first, then columns).
    nbytes = 4 * len(x) * (math.prod(example) + shape[0] * math.prod(x.shape[2:]))
    check_fits_in_memory(
        nbytes,
        f"resizing to {'x'.join(map(str, shape))}: {len(x)} examples of"
        f" {'x'.join(map(str, example))} as float32",
        "choose a smaller size (data.resize)",
    )


def _spatial_axes(x: np.ndarray) -> tuple[int, ...]:
    return tuple(range(1, x.ndim - 1))


def gaussian_noise(x: np.ndarray, seed: int, stream: int, *, std: float = 0.2) -> np.ndarray:
    """Adds i.i.d. N(0, std^2) noise, drawn independently for each split."""
    if std < 0:
        raise DataError(f"gaussian_noise needs std >= 0, got {std}")
    noise = np.random.default_rng([seed, stream]).standard_normal(x.shape, dtype=np.float32)
    return x + np.float32(std) * noise


def blur(x: np.ndarray, seed: int, stream: int, *, sigma: float = 1.0) -> np.ndarray:
    """Separable Gaussian blur over the spatial axes (edges replicate the border pixel)."""
    if sigma < 0:
        raise DataError(f"blur needs sigma >= 0, got {sigma}")
    sigmas = [0.0] * x.ndim
    for axis in _spatial_axes(x):
        sigmas[axis] = sigma
    return scipy.ndimage.gaussian_filter(x, sigma=sigmas, mode="nearest")


def contrast(x: np.ndarray, seed: int, stream: int, *, factor: float = 0.5) -> np.ndarray:
    """Scales each example's deviation from its own mean by factor (< 1 lowers contrast)."""
    if factor < 0:
        raise DataError(f"contrast needs factor >= 0, got {factor}")
    mean = x.mean(axis=tuple(range(1, x.ndim)), keepdims=True)
    return mean + np.float32(factor) * (x - mean)


def invert(x: np.ndarray, seed: int, stream: int) -> np.ndarray:
    """Images: x -> 1 - x; signals: x -> -x."""
    return 1.0 - x if x.ndim == 4 else -x


def rotate(x: np.ndarray, seed: int, stream: int, *, degrees: float = 30.0) -> np.ndarray:
    """Rotates every image by a fixed angle, counter-clockwise as displayed, bilinear, zero fill."""
    if x.ndim != 4:
        raise DataError(f"rotate applies to images (N, H, W, C), got shape {x.shape}")
    if degrees % 360 == 0:
        return x.copy()
    return scipy.ndimage.rotate(
        x, degrees, axes=(1, 2), reshape=False, order=1, mode="constant", cval=0.0
    )


def permute_pixels(x: np.ndarray, seed: int, stream: int) -> np.ndarray:
    """Applies one fixed, seeded permutation of the spatial positions (channels move together)."""
    n, channels = x.shape[0], x.shape[-1]
    flat = x.reshape(n, -1, channels)
    order = np.random.default_rng(seed).permutation(flat.shape[1])
    return flat[:, order].reshape(x.shape)


def resize_shift(
    x: np.ndarray, seed: int, stream: int, *, size: int | tuple[int, int] = 16
) -> np.ndarray:
    """Resizes images to size x size (or (H, W)), signals to length size; see `resize`."""
    return resize(x, size)


SHIFTS: dict[str, Callable[..., np.ndarray]] = {
    "gaussian_noise": gaussian_noise,
    "blur": blur,
    "contrast": contrast,
    "invert": invert,
    "rotate": rotate,
    "permute_pixels": permute_pixels,
    "resize": resize_shift,
}


def shift_array(
    x: np.ndarray, name: str, *, seed: int = 0, stream: int = _TEST_STREAM, **params: Any
) -> np.ndarray:
    """Applies shift ``name`` to one array of inputs.

    Args:
      x: images (N, H, W, C) or signals (N, L, 1), float32.
      name: a key of `SHIFTS`.
      seed: seed of the shift.
      stream: noise stream; `apply_shift` uses 0 for train and 1 for test.
      **params: the shift's parameters (see each function in `SHIFTS`).

    Returns:
      The shifted float32 array, clipped to [0, 1] for images.

    Example:
      >>> shift_array(np.zeros((1, 2, 2, 1), np.float32), "invert").ravel().tolist()
      [1.0, 1.0, 1.0, 1.0]
    """
    if name not in SHIFTS:
        raise DataError(
            f"unknown shift {name!r}{did_you_mean(name, SHIFTS, n=3)}; choices: {', '.join(SHIFTS)}"
        )
    fn = SHIFTS[name]
    valid = [
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind == inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise DataError(
            f"shift {name!r} got unknown parameter(s) {', '.join(unknown)}; "
            f"valid: {', '.join(valid) or 'none'}"
        )
    out = fn(x, seed, stream, **params).astype(np.float32)
    return np.clip(out, 0.0, 1.0) if out.ndim == 4 else out


def describe_shift(name: str, **params: Any) -> str:
    """A short label such as "rotate(degrees=30)" for names and reports.

    Example:
      >>> describe_shift("blur", sigma=1.5)
      'blur(sigma=1.5)'
    """
    return f"{name}({', '.join(f'{k}={v}' for k, v in sorted(params.items()))})"


def apply_shift(ds: Dataset, name: str, seed: int = 0, **params: Any) -> Dataset:
    """Applies an input-level shift to both splits of a dataset.

    Shifts (defaults in brackets): "gaussian_noise"(std [0.2]), "blur"(sigma [1.0], separable
    Gaussian), "contrast"(factor [0.5]), "invert" (images 1-x), "rotate"(degrees [30], images),
    "permute_pixels" (one fixed seeded permutation of positions), "resize"(size [16]).

    Args:
      ds: the dataset.
      name: the shift.
      seed: seed of the shift's random parts.
      **params: the shift's parameters.

    Returns:
      A new Dataset named "<name>+<shift>(<params>)" with the same labels.

    Example:
      >>> from jaxtl.data import load
      >>> apply_shift(load("digits"), "resize", size=28).input_shape
      (28, 28, 1)
    """
    return dataclasses.replace(
        ds,
        name=f"{ds.name}+{describe_shift(name, **params)}",
        x_train=shift_array(ds.x_train, name, seed=seed, stream=_TRAIN_STREAM, **params),
        x_test=shift_array(ds.x_test, name, seed=seed, stream=_TEST_STREAM, **params),
    )
