"""The `Dataset` container shared by every loader, task builder and pipeline."""

from __future__ import annotations

import dataclasses

import numpy as np


class DataError(ValueError):
    """A dataset, option or file did not meet jaxtl's data contract."""


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
            if y.size and (y.min() < 0 or y.max() >= self.num_classes):
                raise DataError(
                    f"{self.name}: y_{split} must lie in 0..{self.num_classes - 1}, "
                    f"got range {y.min()}..{y.max()}"
                )
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
    train, test = stratified_split(y, test_fraction, seed)
    return Dataset(name, x[train], y[train], x[test], y[test], len(class_names), tuple(class_names))
