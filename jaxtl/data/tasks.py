"""A -> B transfer tasks built from Datasets: class splits, few-shot subsets, label
permutations, cross-dataset pairs and OOD evaluation sets. Pure functions of (Dataset, seed)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxtl.data.dataset import DataError, Dataset
from jaxtl.data.datasets import load
from jaxtl.data.shifts import resize, shift_array

OOD_SHIFT = "gaussian_noise"  # valid for images and signals alike; its default std is 0.2


def _subset_classes(ds: Dataset, classes: Sequence[int]) -> Dataset:
    """Keeps only ``classes`` and relabels them 0..k-1 in the given order."""
    lookup = np.full(ds.num_classes, -1, np.int32)
    lookup[list(classes)] = np.arange(len(classes), dtype=np.int32)
    keep_train, keep_test = lookup[ds.y_train] >= 0, lookup[ds.y_test] >= 0
    return Dataset(
        f"{ds.name}[{','.join(map(str, classes))}]",
        ds.x_train[keep_train],
        lookup[ds.y_train[keep_train]],
        ds.x_test[keep_test],
        lookup[ds.y_test[keep_test]],
        len(classes),
        tuple(ds.class_names[c] for c in classes),
    )


def class_split(
    ds: Dataset,
    classes_a: Sequence[int] | None = None,
    classes_b: Sequence[int] | None = None,
    seed: int | None = None,
) -> tuple[Dataset, Dataset]:
    """Splits the classes into two tasks A and B (Yosinski et al. 2014), each relabelled 0..k-1.

    Give ``classes_a`` (B gets the rest), ``classes_b`` (A gets the rest), both (disjoint; classes
    in neither are dropped), or neither with a ``seed`` for a random half split (A gets
    num_classes // 2 classes; each task's classes are sorted).

    Args:
      ds: the dataset.
      classes_a: class ids of task A, in the order that defines A's labels.
      classes_b: class ids of task B.
      seed: seed of the random half split when no classes are given.

    Returns:
      (task_a, task_b).

    Example:
      >>> from jaxtl.data import load
      >>> a, b = class_split(load("digits"), classes_a=range(5))
      >>> b.class_names
      ('5', '6', '7', '8', '9')
    """
    all_classes = list(range(ds.num_classes))
    if classes_a is None and classes_b is None:
        if seed is None:
            raise DataError(
                "class_split needs classes_a, classes_b or a seed for a random half split"
            )
        order = np.random.default_rng(seed).permutation(ds.num_classes)
        classes_a = sorted(order[: ds.num_classes // 2].tolist())
    given = [list(c) for c in (classes_a, classes_b) if c is not None]
    for classes in given:
        bad = [
            c for c in classes if not (isinstance(c, (int, np.integer)) and 0 <= c < ds.num_classes)
        ]
        if bad:
            raise DataError(
                f"class_split: unknown class id(s) {bad}; valid ids are 0..{ds.num_classes - 1}"
            )
        if len(set(classes)) != len(classes):
            raise DataError(f"class_split: repeated class id(s) in {classes}")
    classes_a = [int(c) for c in classes_a] if classes_a is not None else None
    classes_b = [int(c) for c in classes_b] if classes_b is not None else None
    if classes_a is None:
        classes_a = [c for c in all_classes if c not in classes_b]
    if classes_b is None:
        classes_b = [c for c in all_classes if c not in classes_a]
    overlap = sorted(set(classes_a) & set(classes_b))
    if overlap:
        raise DataError(
            f"class_split: classes {overlap} are in both tasks; A and B must be disjoint"
        )
    if not classes_a or not classes_b:
        raise DataError(
            f"class_split: both tasks need at least one class, got A={classes_a}, B={classes_b}"
        )
    return _subset_classes(ds, classes_a), _subset_classes(ds, classes_b)


def few_shot(ds: Dataset, n_per_class: int | None, seed: int) -> Dataset:
    """Keeps exactly ``n_per_class`` training examples of every class; the test split is unchanged.

    Each class is shuffled with its own seeded stream and its first n examples kept, so for one
    seed the subsets are nested: the 5-shot set is contained in the 10-shot set.

    Args:
      ds: the dataset.
      n_per_class: examples per class, or None for all of them.
      seed: seed of the subsample.

    Returns:
      The subsampled Dataset (examples in their original order).

    Example:
      >>> from jaxtl.data import load
      >>> len(few_shot(load("digits"), 5, seed=0).y_train)
      50
    """
    if n_per_class is None:
        return ds
    if n_per_class < 1:
        raise DataError(f"few_shot needs n_per_class >= 1 (or None for all), got {n_per_class}")
    keep = []
    for c in range(ds.num_classes):
        idx = np.flatnonzero(ds.y_train == c)
        if len(idx) < n_per_class:
            raise DataError(
                f"few_shot: class {c} ({ds.class_names[c]!r}) has {len(idx)} training "
                f"examples, fewer than n_per_class={n_per_class}"
            )
        keep.append(np.random.default_rng([seed, c]).permutation(idx)[:n_per_class])
    keep = np.sort(np.concatenate(keep))
    return dataclasses.replace(
        ds, name=f"{ds.name}@{n_per_class}shot", x_train=ds.x_train[keep], y_train=ds.y_train[keep]
    )


def permute_labels(ds: Dataset, seed: int) -> Dataset:
    """Output-level shift: relabels class c as perm[c] with a fixed seeded permutation.

    The permutation has no fixed points when there are at least two classes, so every class
    changes label. Applied to train and test; class_names follow their examples.

    Args:
      ds: the dataset.
      seed: seed of the permutation.

    Returns:
      The relabelled Dataset (inputs unchanged).

    Example:
      >>> from jaxtl.data import load
      >>> ds = load("digits")
      >>> bool((permute_labels(ds, 0).y_train != ds.y_train).all())
      True
    """
    rng = np.random.default_rng(seed)
    perm = rng.permutation(ds.num_classes)
    while ds.num_classes > 1 and (perm == np.arange(ds.num_classes)).any():
        perm = rng.permutation(ds.num_classes)  # rejection sampling: ~e draws on average
    perm = perm.astype(np.int32)
    names = [""] * ds.num_classes
    for old, new in enumerate(perm):
        names[new] = ds.class_names[old]
    return dataclasses.replace(
        ds,
        name=f"{ds.name}+permute_labels",
        y_train=perm[ds.y_train],
        y_test=perm[ds.y_test],
        class_names=tuple(names),
    )


def cross_dataset_pair(
    a: str | Dataset,
    b: str | Dataset,
    size: int | tuple[int, int] = 16,
    options_a: dict[str, Any] | None = None,
    options_b: dict[str, Any] | None = None,
) -> tuple[Dataset, Dataset]:
    """Two image datasets with one label space at one resolution (e.g. mnist5k -> digits).

    Args:
      a: source dataset or its name for `load`.
      b: target dataset or its name.
      size: common (H, W) (an int means square), e.g. 16, or 28 to upsample digits.
      options_a: `load` options for ``a`` (e.g. {"seed": 1}).
      options_b: `load` options for ``b``.

    Returns:
      (ds_a, ds_b), both (N, H, W, C) images with identical class_names.

    Example:
      >>> a, b = cross_dataset_pair("mnist5k", "digits", size=16)
      >>> a.input_shape == b.input_shape == (16, 16, 1)
      True
    """
    ds_a = a if isinstance(a, Dataset) else load(a, **(options_a or {}))
    ds_b = b if isinstance(b, Dataset) else load(b, **(options_b or {}))
    for ds in (ds_a, ds_b):
        if not ds.is_image:
            raise DataError(
                f"cross_dataset_pair needs image datasets; {ds.name} has inputs {ds.input_shape}"
            )
    if ds_a.class_names != ds_b.class_names:
        raise DataError(
            f"cross_dataset_pair needs aligned label spaces; {ds_a.name} has classes "
            f"{ds_a.class_names} but {ds_b.name} has {ds_b.class_names}"
        )
    if ds_a.input_shape[-1] != ds_b.input_shape[-1]:
        raise DataError(
            f"cross_dataset_pair needs equal channel counts; {ds_a.name} has "
            f"{ds_a.input_shape[-1]}, {ds_b.name} has {ds_b.input_shape[-1]}"
        )
    hw = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)

    def at_size(ds: Dataset) -> Dataset:
        if ds.input_shape[:2] == hw:
            return ds
        return dataclasses.replace(
            ds,
            name=f"{ds.name}@{hw[0]}x{hw[1]}",
            x_train=resize(ds.x_train, hw),
            x_test=resize(ds.x_test, hw),
        )

    return at_size(ds_a), at_size(ds_b)


def ood_split(
    ds: Dataset, shift: str = OOD_SHIFT, seed: int = 0, **params: Any
) -> tuple[np.ndarray, np.ndarray]:
    """The OOD evaluation set of a task: its own test split under a fixed input shift.

    The default is Gaussian noise (std 0.2), which applies to images and signals alike; for
    images, "rotate" (e.g. degrees=30) is the other common choice. The inputs equal
    ``apply_shift(ds, shift, seed, **params).x_test``, so a model trained on the shifted task
    and one evaluated OOD see the same test inputs.

    Args:
      ds: the task.
      shift: a name in `SHIFTS`.
      seed: seed of the shift.
      **params: the shift's parameters.

    Returns:
      (x_ood, y_ood): shifted test inputs and the unchanged test labels.

    Example:
      >>> from jaxtl.data import load
      >>> x, y = ood_split(load("digits"), "rotate", degrees=30)
      >>> x.shape[1:]
      (8, 8, 1)
    """
    x = shift_array(ds.x_test, shift, seed=seed, **params)
    return x, ds.y_test.copy()
