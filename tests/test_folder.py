"""Image-folder datasets on folders of small PNGs written here."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from jaxtl import data
from jaxtl.data.folder import IMAGENET_STATS, load_folder

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
