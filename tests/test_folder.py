"""Image-folder datasets on folders of small PNGs written here."""

from __future__ import annotations

import os
import struct
import threading
import zlib

import numpy as np
import pytest
from PIL import Image

from jaxtl import data
from jaxtl.data import dataset as dataset_lib
from jaxtl.data.folder import IMAGENET_STATS, image_files, load_folder

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def write_png(path, color, size=(20, 12), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_train_val_folders_sorted_and_resized(tmp_path):
    # Within a class, the red level encodes the file's sorted position.
    for split, n in (("train", 3), ("val", 1)):
        for i in range(n):
            write_png(tmp_path / split / "bees" / f"{i}.png", (10 * (i + 1), 255, 0), (30, 50))
            write_png(tmp_path / split / "ants" / "sub" / f"{i}.jpg", (0, 0, 200), (40, 30))
    (tmp_path / "train" / "ants" / "README.txt").write_text("not an image")
    ds = load_folder(tmp_path, size=8)
    assert ds.class_names == ("ants", "bees") and ds.name == tmp_path.name
    assert ds.x_train.shape == (6, 8, 8, 3) and ds.x_test.shape == (2, 8, 8, 3)
    assert ds.x_train.dtype == np.float32
    assert ds.y_train.tolist() == [0, 0, 0, 1, 1, 1] and ds.y_test.tolist() == [0, 1]
    np.testing.assert_array_equal(ds.x_train[3:, 0, 0, 0] * 255, [10, 20, 30])
    assert np.all(ds.x_train[3:, ..., 1] == 1.0)


def test_center_crop_of_the_resized_shorter_side(tmp_path):
    # 64x32: red | green (columns 12..51) | blue. Shorter side 32 -> 16 gives 32x16, and the
    # centre 16x16 crop (columns 8..23, source 16..47) is green only; any other crop is not.
    image = np.zeros((32, 64, 3), np.uint8)
    image[:, :12] = RED
    image[:, 12:52] = GREEN
    image[:, 52:] = BLUE
    (tmp_path / "a").mkdir()
    Image.fromarray(image).save(tmp_path / "a" / "x.png")
    write_png(tmp_path / "b" / "y.png", RED)
    ds = load_folder(tmp_path, size=16, resize=16, test_fraction=0.5)
    [crop] = ds.x_train[ds.y_train == 0]
    assert np.all(crop == np.array([0, 1, 0], np.float32))


def test_seeded_split_imagenet_normalisation_and_modes(tmp_path):
    for i in range(5):
        write_png(tmp_path / "cat" / f"{i}.png", 128, mode="L")  # grayscale -> RGB
        write_png(tmp_path / "dog" / f"{i}.png", (0, 0, 255, 0), mode="RGBA")
    a = load_folder(tmp_path, size=4, seed=3)
    b = data.load(f"folder:{tmp_path}", size=4, seed=3)
    assert (len(a.y_train), len(a.y_test)) == (8, 2)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.x_train[0, 0, 0], [np.float32(128) / np.float32(255)] * 3)
    norm = load_folder(tmp_path, size=4, seed=3, normalize="imagenet")
    expected = (a.x_test - IMAGENET_STATS.mean) / IMAGENET_STATS.std
    np.testing.assert_allclose(norm.x_test, expected, rtol=1e-6)


def test_folder_errors_are_one_line(tmp_path):
    with pytest.raises(data.DataError, match="directory .*nope does not exist"):
        data.load(f"folder:{tmp_path}/nope")
    (tmp_path / "flat").mkdir()
    with pytest.raises(data.DataError, match="no class subfolders"):
        load_folder(tmp_path / "flat")
    write_png(tmp_path / "d" / "cats" / "0.png", RED)
    (tmp_path / "d" / "dogs").mkdir()
    (tmp_path / "d" / "dogs" / "notes.txt").write_text("x")
    with pytest.raises(data.DataError, match="class 'dogs' has no images"):
        load_folder(tmp_path / "d")
    (tmp_path / "d" / "dogs" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(data.DataError, match=r"cannot read image .*dogs/broken\.png") as info:
        load_folder(tmp_path / "d")
    assert "\n" not in str(info.value)
    write_png(tmp_path / "s" / "train" / "cats" / "0.png", RED)
    write_png(tmp_path / "s" / "val" / "owls" / "0.png", RED)
    with pytest.raises(data.DataError, match="class 'owls' is not a training class"):
        load_folder(tmp_path / "s")
    with pytest.raises(data.DataError, match="normalize must be one of none, imagenet"):
        load_folder(tmp_path / "s", normalize="imagnet")
    with pytest.raises(data.DataError, match="got unknown option"):
        data.load(f"folder:{tmp_path}/s", sizes=4)


def test_hidden_files_and_folders_are_never_read(tmp_path):
    for cls in ("ants", "bees"):
        write_png(tmp_path / cls / "0.png", RED)
    write_png(tmp_path / "ants" / ".x.png", GREEN)  # an editor's or a sync tool's copy
    write_png(tmp_path / "bees" / ".sub" / "1.png", GREEN)
    write_png(tmp_path / ".ipynb_checkpoints" / "0.png", BLUE)  # not a class
    ds = load_folder(tmp_path, size=4, test_fraction=0.5)
    assert ds.class_names == ("ants", "bees")
    assert len(ds.y_train) + len(ds.y_test) == 2
    assert not np.any(ds.x_train[..., 1]) and not np.any(ds.x_test[..., 1])  # no green pixel
    assert image_files(tmp_path) == [
        str(tmp_path / "ants" / "0.png"),
        str(tmp_path / "bees" / "0.png"),
    ]


def _finishes(fn, seconds=30):
    """Runs ``fn`` in a thread: (finished within ``seconds``, the exception it raised)."""
    raised = []

    def run():
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - the test inspects it
            raised.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive(), raised[0] if raised else None


def test_a_fifo_named_like_an_image_is_refused_not_waited_on(tmp_path):
    write_png(tmp_path / "ants" / "0.png", RED)
    write_png(tmp_path / "bees" / "0.png", GREEN)
    os.mkfifo(tmp_path / "bees" / "1.png")
    for fn in (
        lambda: load_folder(tmp_path, size=4),
        lambda: data.fingerprint(f"folder:{tmp_path}"),
    ):
        finished, error = _finishes(fn)
        assert finished, "blocked on the FIFO"
        assert isinstance(error, data.DataError) and "\n" not in str(error)
        assert "bees/1.png is not a regular file" in str(error)


def _png_header(width, height):
    """A PNG whose header promises width x height 1-bit pixels (its data is a few bytes)."""
    chunk = lambda kind, body: (
        struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    )
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00"))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("width, height", [(10_000, 9_000), (40_000, 40_000)])
def test_decompression_bombs_are_refused_before_decoding(tmp_path, width, height):
    # 90 MP is above jaxtl's limit and below Pillow's own error; 1.6 GP is above both.
    write_png(tmp_path / "ants" / "0.png", RED)
    (tmp_path / "bees").mkdir()
    (tmp_path / "bees" / "bomb.png").write_bytes(_png_header(width, height))
    with pytest.raises(data.DataError) as info:
        load_folder(tmp_path, size=4)
    message = str(info.value)
    assert "bees/bomb.png" in message and "89,478,485" in message and "\n" not in message
    assert "decompression bomb" in message


def test_sizes_that_cannot_fit_in_memory_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(dataset_lib, "memory_bytes", lambda: 8 * 2**30)
    write_png(tmp_path / "ants" / "0.png", RED)
    write_png(tmp_path / "bees" / "0.png", GREEN)
    with pytest.raises(
        data.DataError, match=r"0.png resized to 66666x40000 need 7\.5 GiB, more than half"
    ):
        load_folder(tmp_path, size=4, resize=40_000)
    with pytest.raises(data.DataError, match=r"resizing to 4096x4096: 5000 examples of"):
        data.resize(np.zeros((5000, 28, 28, 1), np.float32), 4096)
