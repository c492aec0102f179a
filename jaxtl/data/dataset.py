"""The `Dataset` container shared by every loader, task builder and pipeline."""

from __future__ import annotations

import dataclasses
import os

import numpy as np


class DataError(ValueError):
    """A dataset, option or file did not meet jaxtl's data contract."""


def first_nonfinite(x: np.ndarray) -> int | None:
    """Index of the first example of ``x`` holding a NaN or an infinity, or None if all are finite.

    Args:
      x: inputs with the example axis first, any numeric dtype.

    Returns:
      The example index, or None.

    Example:
      >>> first_nonfinite(np.array([[0.0, 1.0], [np.nan, 0.5]]))
      1
    """
    if not np.issubdtype(x.dtype, np.inexact) or x.size == 0:
        return None  # integers cannot hold NaN or inf
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    return int(np.argmax(bad)) if bad.any() else None


def check_finite(x: np.ndarray, where: str) -> None:
    """Raises a DataError naming ``where`` and the first example of ``x`` with NaN or inf.

    Args:
      x: inputs with the example axis first.
      where: the array's name in messages, e.g. "npz data.npz: 'x'".

    Example:
      >>> check_finite(np.zeros((2, 3)), "x")  # finite: returns None
    """
    i = first_nonfinite(x)
    if i is None:
        return
    flat = x.reshape(len(x), -1)
    n_bad = int((~np.isfinite(flat)).any(axis=1).sum())
    value = flat[i][~np.isfinite(flat[i])][0]
    raise DataError(
        f"{where} holds non-finite values: example {i} has {value} ({n_bad} of {len(x)} "
        f"examples affected); clean or drop them before training"
    )


def check_labels(y: np.ndarray, num_classes: int, where: str) -> None:
    """Raises a DataError naming ``where`` and the first label outside 0..num_classes-1.

    Args:
      y: integer labels, shape (N,).
      num_classes: the declared number of classes.
      where: the array's name in messages, e.g. "npz data.npz: 'y'".

    Example:
      >>> check_labels(np.array([0, 2, 1]), 3, "y")  # in range: returns None
    """
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            f"{where}: label {int(y[i])} at index {i} is outside the {num_classes} classes "
            f"0..{num_classes - 1}; {int(bad.sum())} of {len(y)} labels are out of range"
        )


def memory_bytes() -> int | None:
    """This machine's physical memory in bytes, or None where the OS does not say.

    Example:
      >>> memory_bytes() > 0  # doctest: +SKIP
      True
    """
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits_in_memory(nbytes: int, what: str, fix: str) -> None:
    """Raises a DataError before an array of ``nbytes`` is allocated that would take more than
    half of this machine's memory (the data is copied again on its way to the model).

    Args:
      nbytes: the size of the array about to be made.
      what: what it holds, e.g. "5000 images of 4096x4096x1 as float32".
      fix: what to change, e.g. "choose a smaller data.resize".

    Example:
      >>> check_fits_in_memory(1024, "a few pixels", "")  # fits: returns None
    """
    total = memory_bytes()
    if total is None or nbytes <= total // 2:
        return
    gib = lambda n: f"{n / 2**30:.1f} GiB"
    raise DataError(
        f"{what} need {gib(nbytes)}, more than half of this machine's {gib(total)} of memory; {fix}"
    )


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A classification dataset with a fixed train/test split, held in numpy.

    Invariants (checked on construction, so every loader and transform keeps them):
    x arrays are float32, images NHWC in [0, 1] and signals (N, L, 1); y arrays are
    int32 in 0..num_classes-1; train and test share the per-example shape;
    len(class_names) == num_classes.

    Example:
      >>> ds = Dataset("toy", np.zeros((2, 4, 4, 1), np.float32), np.array([0, 1], np.int32),
      ...              np.zeros((1, 4, 4, 1), np.float32), np.array([1], np.int32), 2, ("a", "b"))
      >>> ds.input_shape
      (4, 4, 1)
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]

    def __post_init__(self):
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not isinstance(x, np.ndarray) or x.dtype != np.float32:
                raise DataError(
                    f"{self.name}: x_{split} must be a float32 numpy array, got "
                    f"{type(x).__name__} {getattr(x, 'dtype', '')}"
                )
            if not isinstance(y, np.ndarray) or y.dtype != np.int32 or y.ndim != 1:
                raise DataError(
                    f"{self.name}: y_{split} must be a 1-D int32 numpy array, got "
                    f"{type(y).__name__} {getattr(y, 'dtype', '')} {getattr(y, 'shape', '')}"
                )
            if x.ndim not in (3, 4):
                raise DataError(
                    f"{self.name}: x_{split} must be images (N, H, W, C) or signals (N, L, 1), "
                    f"got shape {x.shape}"
                )
            if len(x) != len(y):
                raise DataError(
                    f"{self.name}: x_{split} has {len(x)} examples but y_{split} has {len(y)}"
                )
            check_labels(y, self.num_classes, f"{self.name}: y_{split}")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataError(
                f"{self.name}: train examples have shape {self.x_train.shape[1:]} but test "
                f"examples have shape {self.x_test.shape[1:]}"
            )
        if len(self.class_names) != self.num_classes:
            raise DataError(
                f"{self.name}: {len(self.class_names)} class_names for "
                f"num_classes={self.num_classes}"
            )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. (28, 28, 1) or (40, 1)."""
        return self.x_train.shape[1:]

    @property
    def is_image(self) -> bool:
        """True for NHWC images, False for (N, L, 1) signals."""
        return self.x_train.ndim == 4

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={self.x_train.shape}, test={self.x_test.shape}, "
            f"num_classes={self.num_classes})"
        )


def stratified_split(
    y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Splits example indices into train/test with the same class proportions.

    Args:
      y: integer labels, shape (N,).
      test_fraction: fraction of each class that goes to the test split, in (0, 1).
      seed: seed of the split; each class is shuffled with its own stream so the split of
        one class does not depend on the others.

    Returns:
      (train_idx, test_idx), each sorted ascending.

    Example:
      >>> train, test = stratified_split(np.repeat(np.arange(2), 5), 0.2, seed=0)
      >>> len(train), len(test)
      (8, 2)
    """
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    train, test = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = np.random.default_rng([seed, int(c)]).permutation(idx)
        n_test = round(test_fraction * len(idx))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def from_arrays(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    class_names: tuple[str, ...],
    *,
    test_fraction: float,
    seed: int,
) -> Dataset:
    """Builds a Dataset from one pool of examples with a seeded stratified split.

    Args:
      name: dataset name.
      x: float32 inputs, (N, H, W, C) or (N, L, 1).
      y: int32 labels.
      class_names: one name per class.
      test_fraction: fraction of each class held out for test.
      seed: split seed.

    Returns:
      The Dataset.

    Example:
      >>> y = np.repeat(np.arange(2, dtype=np.int32), 5)
      >>> ds = from_arrays("toy", np.zeros((10, 2, 1), np.float32), y, ("a", "b"),
      ...                  test_fraction=0.2, seed=0)
      >>> len(ds.y_test)
      2
    """
    check_finite(x, f"{name}: x")
    check_labels(y, len(class_names), f"{name}: y")
    train, test = stratified_split(y, test_fraction, seed)
    return Dataset(name, x[train], y[train], x[test], y[test], len(class_names), tuple(class_names))


def images_to_float(x: np.ndarray, name: str) -> np.ndarray:
    """uint8 -> float32 in [0, 1]; adds the channel axis to (N, H, W) grayscale images.

    Example:
      >>> images_to_float(np.full((1, 2, 2), 255, np.uint8), "demo").shape
      (1, 2, 2, 1)
    """
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    elif np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    else:
        raise DataError(f"{name}: images must be uint8 (0..255) or float in [0, 1], got {x.dtype}")
    return x[..., None] if x.ndim == 3 else x
