"""Image-folder datasets: ``PATH/<class>/<image>``, as torchvision's ImageFolder and TFDS's
``ImageFolder`` read them, with ``PATH/train`` and ``PATH/val`` (or ``test``) when present.

Every image is converted to RGB, its shorter side resized to ``resize`` (bilinear) and the centre
``size`` x ``size`` cropped, as torchvision's ``Resize(256)`` + ``CenterCrop(224)`` evaluation
transform does. Classes are the sorted subfolder names; files are read in sorted order, so the
arrays are a function of the folder alone (and of ``seed`` for a split made here).

Hidden files and folders (names starting with ".") are skipped, as Keras's and most other image
folder readers do: ``.DS_Store``, macOS's ``._photo.png`` resource forks, ``.ipynb_checkpoints/``
or a ``.trash/`` are never examples or classes. :func:`image_files` lists exactly what is read, and
the data fingerprint (:mod:`jaxtl.data.fingerprints`) hashes that list, so an image that trains
is an image that keys the caches. Only regular files are read (a FIFO or a device named
``x.png`` is refused, never waited on), and an image larger than :data:`MAX_PIXELS` is refused
before it is decoded (a decompression bomb).
"""

from __future__ import annotations

import os
import stat
import warnings

import numpy as np

from jaxtl.data.dataset import DataError, Dataset, check_fits_in_memory, from_arrays
from jaxtl.data.pipeline import NormStats

# torchvision.datasets.folder.IMG_EXTENSIONS: other files (README, .DS_Store) are not examples.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
TEST_SPLITS = ("val", "validation", "test")
# Pillow's own default limit (a quarter GiB of RGBA pixels); larger images are refused unread.
MAX_PIXELS = 89_478_485
NORMALIZATIONS = ("none", "imagenet")
# The statistics torchvision's and timm's ImageNet models are trained with.
IMAGENET_STATS = NormStats(
    np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
)


def is_hidden(name: str) -> bool:
    """Whether a file or folder name is hidden (starts with "."): never an example or a class.

    Example:
      >>> is_hidden(".DS_Store"), is_hidden("ant.png")
      (True, False)
    """
    return name.startswith(".")


def list_images(root: str) -> tuple[tuple[str, ...], list[tuple[str, int]]]:
    """Class names and ``(file, label)`` pairs of an ImageFolder directory, sorted.

    Args:
      root: a directory with one subfolder per class; images may sit in nested folders.
        Hidden files and folders are skipped (see :func:`is_hidden`).

    Returns:
      ``(class_names, samples)``.

    Raises:
      DataError: no class subfolders, or a class without images.

    Example:
      >>> classes, samples = list_images("hymenoptera_data/train")  # doctest: +SKIP
      >>> classes
      ('ants', 'bees')
    """
    classes = tuple(
        sorted(e.name for e in os.scandir(root) if e.is_dir() and not is_hidden(e.name))
    )
    if not classes:
        raise DataError(
            f"folder {root}: no class subfolders; expected {root}/<class>/<image>, optionally "
            f"under train/ and val/"
        )
    samples = []
    for label, name in enumerate(classes):
        files = []
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, name), followlinks=True):
            # os.walk visits subfolders in this list's order, and only those left in it.
            dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
            files += [
                os.path.join(dirpath, f)
                for f in sorted(filenames)
                if f.lower().endswith(IMAGE_EXTENSIONS) and not is_hidden(f)
            ]
        if not files:
            raise DataError(
                f"folder {root}: class {name!r} has no images ({', '.join(IMAGE_EXTENSIONS)})"
            )
        samples += [(f, label) for f in files]
    return classes, samples


def _splits(root: str) -> tuple[str, str | None]:
    """(the folder of the training classes, the test split's folder or None for a split
    made here): ``root/train`` with ``root/val`` (or validation, test), else ``root/train``
    alone, else ``root``."""
    train = os.path.join(root, "train")
    test = next((s for s in TEST_SPLITS if os.path.isdir(os.path.join(root, s))), None)
    if os.path.isdir(train):
        return train, None if test is None else os.path.join(root, test)
    return root, None


def image_files(path: str | os.PathLike) -> list[str]:
    """Every file :func:`load_folder` reads for ``path``, in the order it reads them.

    Example:
      >>> image_files("hymenoptera_data")[:1]  # doctest: +SKIP
      ['hymenoptera_data/train/ants/0013035.jpg']
    """
    root = os.fspath(path).rstrip(os.sep) or os.sep
    if not os.path.isdir(root):
        raise DataError(f"folder: directory {root} does not exist")
    return [f for split in _splits(root) if split for f, _ in list_images(split)[1]]


def read_image(path: str, size: int, resize: int) -> np.ndarray:
    """One image as uint8 RGB (size, size, 3): shorter side to ``resize``, centre crop ``size``.

    Example:
      >>> read_image("ants/0013035.jpg", size=224, resize=256).shape  # doctest: +SKIP
      (224, 224, 3)
    """
    from PIL import Image, UnidentifiedImageError

    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise DataError(f"folder: cannot read image {path}: {err.strerror}") from None
    if not stat.S_ISREG(mode):
        # Opening a FIFO waits for a writer that may never come.
        raise DataError(
            f"folder: {path} is not a regular file (a {_file_kind(mode)}); an image folder holds"
            " image files only: remove it or give it another extension"
        )
    try:
        with warnings.catch_warnings():
            # Pillow warns between its limit and twice it; jaxtl refuses those below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                _check_pixels(path, *image.size)  # from the header, before decoding
                image = image.convert("RGB")
    except Image.DecompressionBombError:  # Pillow's own refusal, far above MAX_PIXELS
        raise DataError(
            f"folder: image {path} has more than the {MAX_PIXELS:,} pixels jaxtl decodes (a"
            " decompression bomb?); shrink or remove it"
        ) from None
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise DataError(f"folder: cannot read image {path}: {err}") from None
    w, h = image.size
    # torchvision's Resize(int): the shorter side becomes `resize`, the other keeps the ratio.
    if w <= h:
        new_w, new_h = resize, int(resize * h / w)
    else:
        new_w, new_h = int(resize * w / h), resize
    check_fits_in_memory(
        new_w * new_h * 3,
        f"folder: image {path} resized to {new_w}x{new_h}",
        "choose a smaller resize",
    )
    image = image.resize((new_w, new_h), Image.BILINEAR)
    top, left = round((new_h - size) / 2.0), round((new_w - size) / 2.0)
    return np.asarray(image.crop((left, top, left + size, top + size)), np.uint8)


def _file_kind(mode: int) -> str:
    kinds = {
        stat.S_ISFIFO: "FIFO",
        stat.S_ISSOCK: "socket",
        stat.S_ISCHR: "character device",
        stat.S_ISBLK: "block device",
        stat.S_ISDIR: "directory",
    }
    return next((kind for test, kind in kinds.items() if test(mode)), "special file")


def _check_pixels(path: str, width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise DataError(
            f"folder: image {path} is {width}x{height} pixels, more than the {MAX_PIXELS:,}"
            " jaxtl decodes (a decompression bomb?); shrink or remove it"
        )


def _read_split(root: str, classes: tuple[str, ...], size: int, resize: int):
    found, samples = list_images(root)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(
            f"folder {root}: class {unknown[0]!r} is not a training class; classes: "
            f"{', '.join(classes)}"
        )
    labels = {name: classes.index(name) for name in found}
    # As float32 (what _to_float makes of it) the arrays are four times this.
    check_fits_in_memory(
        len(samples) * size * size * 3 * 5,
        f"folder {root}: {len(samples)} images of {size}x{size}x3 (uint8, then float32)",
        "choose a smaller size (data.options.size or data.resize)",
    )
    x = np.empty((len(samples), size, size, 3), np.uint8)
    for i, (path, _) in enumerate(samples):
        x[i] = read_image(path, size, resize)
    y = np.array([labels[found[label]] for _, label in samples], np.int32)
    return x, y


def load_folder(
    path: str | os.PathLike,
    *,
    size: int = 224,
    resize: int | None = None,
    normalize: str = "none",
    seed: int = 0,
    test_fraction: float = 0.2,
    name: str | None = None,
) -> Dataset:
    """A dataset from a folder of class subfolders of images.

    With ``PATH/train`` and one of ``PATH/val``, ``PATH/validation``, ``PATH/test``, those are
    the splits (classes from train/); otherwise the subfolders of ``PATH/train`` (if present)
    or of ``PATH`` are the classes and a seeded stratified split is made.

    Args:
      path: the folder.
      size: side of the square centre crop.
      resize: the shorter side before cropping; default ``round(size * 256 / 224)``
        (torchvision's 256 for 224).
      normalize: "none" (pixels in [0, 1]; jaxtl's runner normalises) or "imagenet"
        ((x - mean) / std with ImageNet's statistics, `IMAGENET_STATS`), what torchvision/timm
        weights expect when the images are fed to them directly.
      seed: seed of the split when the folder has none.
      test_fraction: fraction of each class held out in that case.
      name: dataset name; defaults to the folder's name.

    Returns:
      The Dataset, x float32 (N, size, size, 3).

    Raises:
      DataError: one line for a missing folder, no classes, a class without images, an
        unreadable image (named), or a val/test class that train/ lacks.

    Example:
      >>> ds = load_folder("hymenoptera_data", size=224)  # doctest: +SKIP
      >>> ds.class_names
      ('ants', 'bees')
    """
    root = os.fspath(path).rstrip(os.sep) or os.sep
    if not os.path.isdir(root):
        raise DataError(f"folder: directory {root} does not exist")
    if normalize not in NORMALIZATIONS:
        raise DataError(
            f"folder: normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}"
        )
    if size < 1 or (resize is not None and resize < size):
        raise DataError(
            f"folder: need size >= 1 and resize >= size, got size={size}, resize={resize}"
        )
    resize = resize or round(size * 256 / 224)
    name = name or os.path.basename(root)
    pool, test_dir = _splits(root)
    classes, _ = list_images(pool)
    x, y = _read_split(pool, classes, size, resize)
    if test_dir is not None:
        x_test, y_test = _read_split(test_dir, classes, size, resize)
        ds = Dataset(
            name,
            _to_float(x, normalize),
            y,
            _to_float(x_test, normalize),
            y_test,
            len(classes),
            classes,
        )
    else:
        # train/ alone, or classes at the top: split here.
        ds = from_arrays(
            name, _to_float(x, normalize), y, classes, test_fraction=test_fraction, seed=seed
        )
    return ds


def _to_float(x: np.ndarray, normalize: str) -> np.ndarray:
    x = x.astype(np.float32) / np.float32(255.0)
    if normalize == "imagenet":
        x = (x - IMAGENET_STATS.mean) / IMAGENET_STATS.std
    return x
