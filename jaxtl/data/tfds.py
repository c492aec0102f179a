"""Image-classification datasets from TFDS through ``tfds.data_source``: no TensorFlow, no
implicit downloads."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from jaxtl.data.dataset import DataError, Dataset, images_to_float
from jaxtl.suggest import did_you_mean

_PROGRESS_MIN_EXAMPLES = 10_000  # below this a TFDS conversion is too quick to need a progress bar


@functools.cache
def tfds_names() -> tuple[str, ...]:
    """Names of the TFDS datasets built into the installed tensorflow-datasets (no network).

    Returns:
      Sorted builder names, e.g. ("abstract_reasoning", ..., "cifar10", ...).

    Example:
      >>> "cifar10" in tfds_names()
      True
    """
    import tensorflow_datasets as tfds

    return tuple(sorted(tfds.list_builders(with_community_datasets=False)))


def load_tfds(
    name: str,
    *,
    data_dir: str | None = None,
    train_split: str = "train",
    test_split: str = "test",
    image_key: str = "image",
    label_key: str = "label",
    max_examples: int | None = None,
    download: bool = False,
) -> Dataset:
    """An image-classification dataset from TFDS through ``tfds.data_source`` (no TensorFlow).

    The data must already be prepared in ``data_dir`` in array_record format; with the default
    ``download=False`` nothing is fetched, and a missing dataset is a clear error saying how to
    prepare it on a machine with network.

    Args:
      name: TFDS name, e.g. "cifar10" or "mnist:3.0.1".
      data_dir: TFDS data directory (TFDS's default, ~/tensorflow_datasets, when None).
      train_split: split used for training, any TFDS split string ("train[:90%]").
      test_split: split used for testing.
      image_key: feature holding the image.
      label_key: ClassLabel feature holding the label.
      max_examples: keep at most this many examples of each split (the first ones).
      download: let TFDS download and prepare the dataset; only do this on purpose.

    Returns:
      The Dataset named ``name``, images float32 in [0, 1].

    Example:
      >>> import tensorflow_datasets as tfds
      >>> with tfds.testing.mock_data(num_examples=8):
      ...   load_tfds("mnist").x_train.shape
      (8, 28, 28, 1)
    """
    import tensorflow_datasets as tfds

    sources = {}
    for split in (train_split, test_split):
        try:
            sources[split] = tfds.data_source(
                name, split=split, data_dir=data_dir, download=download
            )
        except tfds.core.registered.DatasetNotFoundError:
            raise DataError(
                f"unknown TFDS dataset {name!r}{did_you_mean(name, tfds_names(), n=3)};"
                " see tfds_names() for the built-in ones"
            ) from None
        except (NotImplementedError, FileNotFoundError, KeyError) as e:
            # An explicit empty data_dir raises FileNotFoundError, the default one a KeyError
            # ("splits is empty"), data in another file format NotImplementedError.
            raise _not_prepared(name, data_dir) from e
        except ValueError as e:
            raise DataError(
                f"TFDS dataset {name!r}, split {split!r}: {str(e).splitlines()[0]}"
            ) from e
    features = sources[train_split].dataset_info.features
    for key in (image_key, label_key):
        if key not in features:
            raise DataError(
                f"TFDS dataset {name!r} has no feature {key!r}; features: {sorted(features.keys())}"
            )
    label = features[label_key]
    if not hasattr(label, "num_classes"):
        raise DataError(
            f"TFDS feature {name}/{label_key} is not a ClassLabel; pick label_key among "
            f"{sorted(features.keys())}"
        )
    (x_train, y_train), (x_test, y_test) = (
        _tfds_arrays(sources[s], image_key, label_key, max_examples, f"{name}[{s}]")
        for s in (train_split, test_split)
    )
    return Dataset(
        name.split(":")[0],
        x_train,
        y_train,
        x_test,
        y_test,
        int(label.num_classes),
        tuple(label.names),
    )


def _not_prepared(name: str, data_dir: str | None) -> DataError:
    """The one "prepare it with `tfds build`" error, naming the data_dir that was searched."""
    import tensorflow_datasets as tfds

    where = data_dir or f"the default TFDS data_dir ({tfds.core.constants.DATA_DIR})"
    return DataError(
        f"TFDS dataset {name!r} is not prepared in {where} (jaxtl never downloads "
        f"implicitly); prepare it once on a machine with network: "
        f"`tfds build {name} --file_format=array_record"
        + (f" --data_dir={data_dir}" if data_dir else "")
        + f"` or tfds.data_source({name!r}, download=True), "
        f"or pass download=True"
    )


def _tfds_arrays(
    source: Any, image_key: str, label_key: str, max_examples: int | None, desc: str
) -> tuple[np.ndarray, np.ndarray]:
    """Reads records one by one into preallocated arrays (with a progress bar for big splits)."""
    from tqdm.auto import tqdm

    n = len(source) if max_examples is None else min(len(source), max_examples)
    if n == 0:
        raise DataError(f"TFDS {desc} is empty")
    first = np.asarray(source[0][image_key])
    x = np.empty((n,) + first.shape, first.dtype)
    y = np.empty(n, np.int32)
    for i in tqdm(range(n), desc=desc, disable=n < _PROGRESS_MIN_EXAMPLES, leave=False):
        record = source[i]
        image = np.asarray(record[image_key])
        if image.shape != first.shape:
            raise DataError(
                f"TFDS {desc}: images have varying shapes ({first.shape} vs {image.shape}); "
                f"jaxtl needs a fixed-size image dataset"
            )
        x[i] = image
        y[i] = record[label_key]
    return images_to_float(x, desc), y
