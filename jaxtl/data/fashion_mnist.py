"""Fashion-MNIST from local IDX files (Debian's dataset-fashion-mnist), else a prepared TFDS copy."""

from __future__ import annotations

import os

import numpy as np

from jaxtl.data.dataset import DataError, Dataset, check_finite, check_labels, images_to_float
from jaxtl.data.idx import read_idx
from jaxtl.data.tfds import load_tfds

FASHION_MNIST_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# Where Debian's dataset-fashion-mnist package installs the IDX files.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def find_idx_files(data_dir: str) -> dict[str, str] | None:
    """The four IDX files (``.gz`` or not) in ``data_dir`` by split key, or None if any is missing."""
    found = {}
    for key, stem in _IDX_FILES.items():
        for candidate in (stem, stem + ".gz"):
            path = os.path.join(data_dir, candidate)
            if os.path.exists(path):
                found[key] = path
                break
    return found if len(found) == len(_IDX_FILES) else None


def load_fashion_mnist(
    *,
    data_dir: str | None = None,
    tfds_data_dir: str | None = None,
    max_examples: int | None = None,
    download: bool = False,
) -> Dataset:
    """Fashion-MNIST (28x28x1, 10 classes) from local IDX files, else from a prepared TFDS copy.

    Args:
      data_dir: directory with ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
        ``t10k-images-idx3-ubyte[.gz]`` and ``t10k-labels-idx1-ubyte[.gz]``. Defaults to
        /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist); only when the default
        holds no files does the loader fall back to TFDS.
      tfds_data_dir: TFDS data directory for the fallback.
      max_examples: keep at most this many examples of each split (the first ones).
      download: passed to the TFDS fallback; False never touches the network.

    Returns:
      The Dataset "fashion_mnist" with the official 60,000/10,000 split.

    Example:
      >>> ds = load_fashion_mnist(data_dir="/path/to/idx")  # doctest: +SKIP
    """
    files = find_idx_files(data_dir or FASHION_MNIST_DIR)
    if files is None and data_dir is not None:
        raise DataError(
            f"fashion_mnist: no IDX files in {data_dir}; expected "
            f"{', '.join(s + '[.gz]' for s in _IDX_FILES.values())}"
        )
    if files is None:
        try:
            ds = load_tfds(
                "fashion_mnist",
                data_dir=tfds_data_dir,
                max_examples=max_examples,
                download=download,
            )
        except DataError as e:
            raise DataError(
                f"fashion_mnist: no IDX files in {FASHION_MNIST_DIR} (install Debian's "
                f"dataset-fashion-mnist or pass data_dir=...), and {e}"
            ) from e
        return Dataset(
            "fashion_mnist", ds.x_train, ds.y_train, ds.x_test, ds.y_test, 10, FASHION_MNIST_NAMES
        )
    arrays = {key: read_idx(path)[:max_examples] for key, path in files.items()}
    for key, path in files.items():
        if key.startswith("y"):
            check_labels(arrays[key], 10, f"fashion_mnist {path}")
        else:
            check_finite(arrays[key], f"fashion_mnist {path}")
    x = {key: images_to_float(arrays[key], "fashion_mnist") for key in ("x_train", "x_test")}
    return Dataset(
        "fashion_mnist",
        x["x_train"],
        arrays["y_train"].astype(np.int32),
        x["x_test"],
        arrays["y_test"].astype(np.int32),
        10,
        FASHION_MNIST_NAMES,
    )
