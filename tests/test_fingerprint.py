"""Data fingerprints: a changed file changes the fingerprint, a touched one does not, an
unchanged file is never read again (size + mtime + inode fast path) unless the strict mode asks,
and a folder's fingerprint covers exactly the images its loader reads."""

import json
import os
import re
import time

import numpy as np
import pytest
from PIL import Image

from jaxtl import data
from jaxtl.data import fingerprints as fingerprint_lib
from jaxtl.data.folder import image_files

DAY_NS = 86_400 * 10**9


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("JAXTL_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def hash_calls(monkeypatch):
    """Records every file whose bytes are hashed."""
    calls = []
    real = fingerprint_lib.content_hash

    def counting(path):
        calls.append(os.fspath(path))
        return real(path)

    monkeypatch.setattr(fingerprint_lib, "content_hash", counting)
    return calls


def write_npz(path, labels, mtime_ns):
    """An .npz of ten 4x4 images; always the same size, so only content and mtime differ."""
    np.savez(path, x=np.zeros((10, 4, 4), np.uint8), y=np.asarray(labels, np.int64))
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_editing_an_npz_in_place_changes_the_fingerprint_touching_it_does_not(tmp_path, hash_calls):
    path = tmp_path / "train.npz"
    old = time.time_ns() - DAY_NS
    write_npz(path, np.arange(10) % 2, old)
    first = data.fingerprint(f"npz:{path}")
    assert first == data.fingerprint(f"npz:{path}") and len(hash_calls) == 1
    size, inode = path.stat().st_size, path.stat().st_ino
    write_npz(path, np.arange(10) % 3, old + 10**9)  # fixed labels, same file, same size
    assert (path.stat().st_size, path.stat().st_ino) == (size, inode)
    edited = data.fingerprint(f"npz:{path}")
    assert edited != first and len(hash_calls) == 2
    os.utime(path, ns=(old + 2 * 10**9,) * 2)  # touched: one re-hash, same content
    assert data.fingerprint(f"npz:{path}") == edited and len(hash_calls) == 3
    assert data.fingerprint("npz", path=str(path)) == edited and len(hash_calls) == 3
    assert re.fullmatch(r"[0-9a-f]{16}", first) and re.fullmatch(r"[0-9a-f]{16}", edited)


def test_fast_path_does_not_read_an_unchanged_file(tmp_path, monkeypatch, cache_dir):
    path = tmp_path / "train.npz"
    write_npz(path, np.arange(10) % 2, time.time_ns() - DAY_NS)
    first = data.fingerprint(f"npz:{path}")
    entry = json.loads((cache_dir / "fingerprints.json").read_text())["files"][str(path)]
    assert entry[:2] == [path.stat().st_size, path.stat().st_mtime_ns]

    def never(path):
        raise AssertionError(f"{path} was read although its size and mtime are unchanged")

    monkeypatch.setattr(fingerprint_lib, "content_hash", never)
    assert data.fingerprint(f"npz:{path}") == first


def test_the_fast_paths_blind_spot_and_the_strict_mode_that_closes_it(
    tmp_path, monkeypatch, hash_calls
):
    path = tmp_path / "train.npz"
    old = time.time_ns() - DAY_NS
    write_npz(path, np.arange(10) % 2, old)
    first = data.fingerprint(f"npz:{path}")
    write_npz(path, np.arange(10) % 3, old)  # other bytes, same size, mtime set back
    assert data.fingerprint(f"npz:{path}") == first  # the documented trade-off
    monkeypatch.setenv("JAXTL_FINGERPRINT", "strict")
    strict = data.fingerprint(f"npz:{path}")
    assert strict != first and len(hash_calls) == 2
    assert data.fingerprint(f"npz:{path}") == strict and len(hash_calls) == 3  # read every time
    monkeypatch.setenv("JAXTL_FINGERPRINT", "paranoid")
    with pytest.raises(
        data.DataError, match="JAXTL_FINGERPRINT='paranoid' .* choices: fast, strict"
    ):
        data.fingerprint(f"npz:{path}")


def test_a_just_written_file_is_hashed_every_time(tmp_path, hash_calls, cache_dir):
    # Within the same mtime tick a same-size rewrite would look unchanged, so recent files are
    # never served from the cache.
    path = tmp_path / "fresh.npz"
    np.savez(path, x=np.zeros((10, 4, 4), np.uint8), y=np.arange(10) % 2)
    assert data.fingerprint(f"npz:{path}") == data.fingerprint(f"npz:{path}")
    assert len(hash_calls) == 2 and not (cache_dir / "fingerprints.json").exists()


def test_a_damaged_cache_file_is_ignored_and_deleted_files_are_pruned(tmp_path, cache_dir):
    old = time.time_ns() - DAY_NS
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    write_npz(a, np.arange(10) % 2, old)
    write_npz(b, np.arange(10) % 2, old)
    cache_dir.mkdir()
    (cache_dir / "fingerprints.json").write_text("{not json")
    assert data.fingerprint(f"npz:{a}") == data.fingerprint(f"npz:{b}")  # same content
    b.unlink()
    write_npz(tmp_path / "c.npz", np.arange(10) % 2, old)
    data.fingerprint(f"npz:{tmp_path / 'c.npz'}")
    cached = json.loads((cache_dir / "fingerprints.json").read_text())["files"]
    assert sorted(cached) == [str(a), str(tmp_path / "c.npz")]


def test_folder_fingerprint_follows_files_and_their_names(tmp_path):
    root = tmp_path / "images"
    for cls, name in [("ants", "1.png"), ("ants", "2.png"), ("bees", "1.png")]:
        (root / cls).mkdir(parents=True, exist_ok=True)
        (root / cls / name).write_bytes(f"{cls}/{name}".encode())
    first = data.fingerprint(f"folder:{root}")
    (root / "ants" / ".DS_Store").write_bytes(b"finder")  # hidden files are not data
    assert data.fingerprint(f"folder:{root}") == first
    (root / "bees" / "2.png").write_bytes(b"new image")
    added = data.fingerprint(f"folder:{root}")
    assert added != first
    (root / "bees" / "2.png").rename(root / "ants" / "3.png")  # same bytes, other class
    assert data.fingerprint(f"folder:{root}") not in (first, added)
    assert data.data_files(f"folder:{root}")[0] == str(root / "ants" / "1.png")


def test_folder_fingerprint_covers_exactly_what_the_loader_reads(tmp_path):
    root = tmp_path / "images"
    for cls in ("ants", "bees"):
        (root / cls).mkdir(parents=True)
        Image.new("RGB", (4, 4), (200, 0, 0)).save(root / cls / "0.png")
    (root / "ants" / ".sub").mkdir()
    hidden = [root / "ants" / ".x.png", root / "ants" / ".sub" / "1.png"]
    for path in hidden:
        Image.new("RGB", (4, 4), (0, 200, 0)).save(path)
    assert data.data_files(f"folder:{root}") == image_files(root)
    first = data.fingerprint(f"folder:{root}")
    for path in hidden:  # edited, and never read by the loader: the same data
        Image.new("RGB", (4, 4), (0, 0, 200)).save(path)
        assert data.fingerprint(f"folder:{root}") == first
    Image.new("RGB", (4, 4), (0, 0, 200)).save(root / "bees" / "0.png")
    assert data.fingerprint(f"folder:{root}") != first


def test_fashion_mnist_idx_files_are_fingerprinted(tmp_path):
    def write_idx(name, array):
        header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
        (tmp_path / name).write_bytes(header + array.astype(np.uint8).tobytes())

    images = np.zeros((3, 28, 28), np.uint8)
    for prefix in ("train", "t10k"):
        write_idx(f"{prefix}-images-idx3-ubyte", images)
        write_idx(f"{prefix}-labels-idx1-ubyte", np.array([0, 1, 2]))
    assert len(data.data_files("fashion_mnist", data_dir=str(tmp_path))) == 4
    first = data.fingerprint("fashion_mnist", data_dir=str(tmp_path))
    write_idx("t10k-labels-idx1-ubyte", np.array([0, 1, 3]))
    assert data.fingerprint("fashion_mnist", data_dir=str(tmp_path)) != first


def test_prepared_tfds_directory_is_fingerprinted(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    tfds.testing.DummyDataset(data_dir=str(tmp_path)).download_and_prepare(
        file_format="array_record"
    )
    files = data.data_files("tfds:dummy_dataset", data_dir=str(tmp_path))
    assert {os.path.basename(f) for f in files} >= {"dataset_info.json", "features.json"}
    first = data.fingerprint("tfds:dummy_dataset", data_dir=str(tmp_path))
    shard = next(f for f in files if ".array_record" in f)
    with open(shard, "ab") as f:
        f.write(b"\0")
    assert data.fingerprint("tfds:dummy_dataset", data_dir=str(tmp_path)) != first


def test_tfds_unprepared_is_the_load_error_and_mock_data_hashes_the_arrays(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with pytest.raises(data.DataError, match=r"'cifar10' is not prepared in .*tfds build cifar10"):
        data.fingerprint("cifar10", data_dir=str(tmp_path))
    with tfds.testing.mock_data(num_examples=4):
        assert data.data_files("cifar10") is None
        assert data.fingerprint("cifar10") == data.fingerprint("cifar10")


def test_generated_sets_hash_package_version_and_options(monkeypatch, hash_calls):
    base = data.fingerprint("mnist1d", num_samples=200)
    assert base == data.fingerprint("mnist1d", num_samples=200)
    assert base != data.fingerprint("mnist1d", num_samples=300)
    assert data.fingerprint("digits") != data.fingerprint("mnist5k")
    monkeypatch.setattr(fingerprint_lib, "_package_version", lambda package: "99.0")
    assert data.fingerprint("mnist1d", num_samples=200) != base
    assert hash_calls == [] and data.data_files("mnist5k") is None


def test_unknown_and_missing_specs_raise_the_load_errors(tmp_path):
    with pytest.raises(data.DataError, match=r"unknown dataset 'mnist5' \(did you mean 'mnist5k'"):
        data.fingerprint("mnist5")
    with pytest.raises(data.DataError, match=r"npz: file .*missing.npz does not exist"):
        data.fingerprint(f"npz:{tmp_path / 'missing.npz'}")
    with pytest.raises(data.DataError, match=r"folder: directory .*nowhere does not exist"):
        data.fingerprint(f"folder:{tmp_path / 'nowhere'}")
