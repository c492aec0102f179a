"""Datasets saved as ``.npz`` archives of arrays (``x``/``y`` or ``x_train``/``y_train``/...)."""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Sequence

import numpy as np

from jaxtl.data.dataset import (
    DataError,
    Dataset,
    check_finite,
    check_labels,
    from_arrays,
    images_to_float,
)


def load_npz(
    path: str | os.PathLike,
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    num_classes: int | None = None,
    class_names: tuple[str, ...] | None = None,
    name: str | None = None,
) -> Dataset:
    """A dataset from an .npz file with ``x``, ``y`` and optionally ``x_test``, ``y_test``.

    ``x`` may be uint8 (scaled by 1/255) or float in [0, 1] for images: (N, H, W, C), or (N, H, W)
    for grayscale. Signals are (N, L) or (N, L, 1) float. Labels must have an integer dtype with
    values 0..C-1. Without a test split, a seeded stratified one is made. A file that is empty,
    truncated or not an .npz, non-finite inputs, labels outside the classes and classes without
    examples are each one DataError naming the file, the array and the first bad index.

    Args:
      path: the .npz file.
      seed: seed of the split when the file has no test split.
      test_fraction: fraction of each class held out in that case.
      num_classes: number of classes; defaults to len(class_names), else max label + 1.
        Labels outside 0..num_classes-1 and classes without a training example are errors.
      class_names: one name per class; defaults to "0", "1", ...
      name: dataset name; defaults to the file's stem.

    Returns:
      The Dataset.

    Example:
      >>> np.savez("/tmp/toy.npz", x=np.zeros((10, 4, 4), np.uint8), y=np.arange(10) % 2)
      >>> load_npz("/tmp/toy.npz").x_train.shape
      (8, 4, 4, 1)
    """
    path = os.fspath(path)
    name = name or os.path.splitext(os.path.basename(path))[0]
    arrays = _read_npz(path)
    if "x" not in arrays or "y" not in arrays:
        raise DataError(
            f"npz {path}: needs arrays 'x' and 'y' (optional 'x_test', 'y_test'); "
            f"found {sorted(arrays)}"
        )
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(
            f"npz {path}: give both 'x_test' and 'y_test' or neither; found {sorted(arrays)}"
        )
    splits = ["", "_test"] if "x_test" in arrays else [""]
    for split in splits:
        x, y = arrays["x" + split], arrays["y" + split]
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(
                f"npz {path}: labels 'y{split}' must have an integer dtype, got {y.dtype}"
            )
        if y.ndim != 1 or x.ndim == 0 or len(x) != len(y):
            raise DataError(
                f"npz {path}: 'x{split}' has {len(x) if x.ndim else 0} examples but 'y{split}' "
                f"has shape {y.shape}"
            )
        if not len(y):
            raise DataError(f"npz {path}: 'x{split}' and 'y{split}' hold no examples")
        if x.ndim not in (2, 3, 4):
            raise DataError(
                f"npz {path}: 'x{split}' must be (N, H, W, C), (N, H, W), (N, L, 1) "
                f"or (N, L); got shape {x.shape}"
            )
        check_finite(x, f"npz {path}: 'x{split}'")
    declared = _npz_declared_classes(path, num_classes, class_names)
    for split in splits:
        _check_label_range(path, split, arrays["y" + split], declared, len(arrays["y"]))
    # In range, so the cast to the Dataset's int32 keeps every value.
    ys = {split: arrays["y" + split].astype(np.int32) for split in splits}
    num_classes = _npz_num_classes(path, ys, declared)
    xs = {split: _npz_inputs(arrays["x" + split], f"npz {path}: 'x{split}'") for split in splits}
    class_names = tuple(class_names) if class_names else tuple(str(c) for c in range(num_classes))
    if len(splits) == 1:
        return from_arrays(
            name, xs[""], ys[""], class_names, test_fraction=test_fraction, seed=seed
        )
    return Dataset(name, xs[""], ys[""], xs["_test"], ys["_test"], num_classes, class_names)


def _read_npz(path: str) -> dict[str, np.ndarray]:
    """Every array of an .npz file; a missing, empty, truncated or foreign file is a DataError."""
    if not os.path.exists(path):
        raise DataError(f"npz: file {path} does not exist")
    size = os.path.getsize(path)
    if size == 0:
        raise DataError(f"npz {path}: the file is empty (0 bytes); rewrite it with np.savez")
    # np.load would fall back to unpickling (or hand back a bare .npy array) for non-zip files.
    if not zipfile.is_zipfile(path):
        raise DataError(
            f"npz {path}: not an .npz archive ({size} bytes, truncated or not written by "
            f"np.savez); rewrite it with np.savez(path, x=..., y=...)"
        )
    damaged = (zipfile.BadZipFile, zlib.error, ValueError, EOFError, OSError)
    try:
        archive = np.load(path, allow_pickle=False)
    except damaged as e:
        raise DataError(
            f"npz {path}: the archive cannot be read ({str(e).splitlines()[0]}); rewrite it "
            f"with np.savez"
        ) from e
    arrays = {}
    with archive:
        for key in archive.files:
            try:
                arrays[key] = archive[key]
            except damaged as e:
                raise DataError(
                    f"npz {path}: array {key!r} cannot be read ({str(e).splitlines()[0]}); the "
                    f"file is damaged or holds object arrays; rewrite it with np.savez"
                ) from e
    return arrays


def _npz_declared_classes(
    path: str, num_classes: int | None, class_names: Sequence[str] | None
) -> int | None:
    """The declared class count (num_classes, else len(class_names)), or None to infer it."""
    declared = num_classes if num_classes is not None else len(class_names or ()) or None
    if declared is not None and (
        isinstance(declared, bool) or not isinstance(declared, (int, np.integer)) or declared < 1
    ):
        raise DataError(f"npz {path}: num_classes must be a positive int, got {declared!r}")
    return None if declared is None else int(declared)


def _check_label_range(
    path: str, split: str, y: np.ndarray, declared: int | None, n_train: int
) -> None:
    """The one range check of npz labels, in the file's own integer type (before any cast).

    Valid labels are 0..C-1 with C the declared class count; undeclared, C is at most the
    number of training examples (every class needs one), so a stray 2**32+1 is named here
    instead of wrapping to a small class id or asking for billions of empty classes.
    """
    where = f"npz {path}: 'y{split}'"
    if y.size and y.min() < 0:
        i = int(np.argmax(y < 0))
        raise DataError(
            f"{where}: label {int(y[i])} at index {i} is negative; labels are class ids 0, 1, ..."
        )
    if declared is not None:
        check_labels(y, declared, where)
        return
    bad = y >= n_train
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            f"{where}: label {int(y[i])} at index {i} is outside the valid range 0..{n_train - 1}"
            f" (classes are inferred from the labels and each needs one of the {n_train}"
            f" examples of 'y'; pass num_classes=... to declare them); {int(bad.sum())} of"
            f" {len(y)} labels are out of range"
        )


def _npz_num_classes(path: str, ys: dict[str, np.ndarray], declared: int | None) -> int:
    """The declared class count, else max label + 1; a class without a training example is an
    error: a typo such as a 12 among ten digit classes must not silently add classes 10..12.
    """
    if declared is not None:
        count = declared
        source = f"{count} classes declared"
    else:
        count = int(max(y.max() for y in ys.values())) + 1
        top = next(split for split, y in ys.items() if y.max() == count - 1)
        source = (
            f"classes inferred as 0..{count - 1} from label {count - 1} at index "
            f"{int(np.argmax(ys[top] == count - 1))} of 'y{top}'; pass num_classes=... to declare "
            f"them"
        )
    empty = np.flatnonzero(np.bincount(ys[""], minlength=count) == 0).tolist()
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (", ..." if len(empty) > 10 else "")
        raise DataError(
            f"npz {path}: class(es) {shown} have no examples in 'y' ({source}); fix the labels "
            f"or drop the empty classes"
        )
    return count


def _npz_inputs(x: np.ndarray, where: str) -> np.ndarray:
    """Brings npz inputs to the Dataset layout: images NHWC, signals (N, L, 1)."""
    if x.ndim == 2:
        return x.astype(np.float32)[..., None]
    if x.ndim == 3 and x.shape[-1] == 1:
        return x.astype(np.float32)
    images = images_to_float(x, where)
    if images.size and (images.min() < 0 or images.max() > 1):
        raise DataError(
            f"{where}: float images must lie in [0, 1], got range "
            f"{images.min():.3g}..{images.max():.3g}"
        )
    return images
