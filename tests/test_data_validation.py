"""Data validation at load: bad files, non-finite inputs, labels outside the declared classes,
empty classes and unprepared TFDS data each give one DataError naming the file and the array."""

import zipfile

import numpy as np
import pytest

from jaxtl import data

tfds = pytest.importorskip("tensorflow_datasets")


# --- TFDS -----------------------------------------------------------------------------------------


def test_tfds_unprepared_in_the_default_data_dir_says_how_to_prepare(tmp_path, monkeypatch):
    # TFDS reads its default data_dir from TFDS_DATA_DIR once, at import, into this constant.
    monkeypatch.setattr(tfds.core.constants, "DATA_DIR", str(tmp_path))
    with pytest.raises(data.DataError) as info:
        data.load("cifar10")
    message = str(info.value)
    assert f"'cifar10' is not prepared in the default TFDS data_dir ({tmp_path})" in message
    assert "tfds build cifar10 --file_format=array_record`" in message
    assert "\n" not in message


def test_tfds_unprepared_in_an_explicit_data_dir_says_how_to_prepare(tmp_path):
    with pytest.raises(
        data.DataError, match=rf"not prepared in {tmp_path} .*--data_dir={tmp_path}"
    ):
        data.load("tfds:mnist", data_dir=str(tmp_path))


# --- .npz files -----------------------------------------------------------------------------------


def digits_like(n=40, shape=(4, 4)):
    """n uint8 images with labels 0..9 (every class present), as a user's .npz would hold them."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n,) + shape, dtype=np.uint8), np.arange(n) % 10


def load_error(path, **options):
    with pytest.raises(data.DataError) as info:
        data.load(f"npz:{path}", **options)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert isinstance(info.value, ValueError)  # what the CLI prints as one `jaxtl: error:` line
    return message


def test_nan_and_inf_inputs_name_the_array_and_first_example(tmp_path):
    x, y = digits_like()
    x = x.astype(np.float32) / 255
    x[[3, 9]] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=y)
    message = load_error(tmp_path / "nan.npz")
    assert "'x' holds non-finite values: example 3 has nan (2 of 40 examples affected)" in message
    x_test = np.zeros((2, 4, 4), np.float32)
    x_test[1, 0, 2] = -np.inf
    np.savez(
        tmp_path / "inf.npz", x=np.zeros((10, 4, 4)), y=np.arange(10), x_test=x_test, y_test=[0, 1]
    )
    assert "'x_test' holds non-finite values: example 1 has -inf" in load_error(
        tmp_path / "inf.npz"
    )


def test_nan_signals_are_caught_too(tmp_path):
    x = np.zeros((20, 12), np.float32)  # signals have no [0, 1] check that might catch NaN
    x[5, 3] = np.nan
    np.savez(tmp_path / "signals.npz", x=x, y=np.arange(20) % 2)
    assert "'x' holds non-finite values: example 5 has nan" in load_error(tmp_path / "signals.npz")


def test_labels_outside_declared_classes_name_the_first_index(tmp_path):
    x, y = digits_like()
    y[7], y[21] = 12, 15
    np.savez(tmp_path / "typo.npz", x=x, y=y)
    message = load_error(tmp_path / "typo.npz", num_classes=10)
    assert "'y': label 12 at index 7 is outside the 10 classes 0..9; 2 of 40 labels" in message
    names = tuple("abcdefghij")
    message = load_error(tmp_path / "typo.npz", class_names=names)
    assert "label 12 at index 7 is outside the 10 classes 0..9" in message


def test_a_label_typo_never_grows_the_class_count(tmp_path):
    x, y = digits_like()
    y[7] = 12  # ten digit classes and one typo: inferring 13 classes would leave 10, 11 empty
    np.savez(tmp_path / "typo.npz", x=x, y=y)
    message = load_error(tmp_path / "typo.npz")
    assert "class(es) 10, 11 have no examples in 'y'" in message
    assert "inferred as 0..12 from label 12 at index 7 of 'y'; pass num_classes=" in message
    np.savez(tmp_path / "test_typo.npz", x=x, y=np.arange(40) % 10, x_test=x[:3], y_test=[1, 15, 2])
    message = load_error(tmp_path / "test_typo.npz")
    assert "class(es) 10, 11, 12, 13, 14, 15 have no examples in 'y'" in message
    assert "label 15 at index 1 of 'y_test'" in message
    message = load_error(tmp_path / "test_typo.npz", num_classes=10)
    assert "'y_test': label 15 at index 1 is outside the 10 classes 0..9" in message


@pytest.mark.parametrize("dtype", [np.int64, np.uint64])
@pytest.mark.parametrize("label", [2**32 + 1, 2**31, 2**31 - 1])
def test_a_huge_label_is_named_never_wrapped_or_allocated(tmp_path, dtype, label):
    x, y = digits_like()
    y = y.astype(dtype)
    y[7] = label
    np.savez(tmp_path / "huge.npz", x=x, y=y)
    message = load_error(tmp_path / "huge.npz")
    assert message == (
        f"npz {tmp_path / 'huge.npz'}: 'y': label {label} at index 7 is outside the valid range"
        " 0..39 (classes are inferred from the labels and each needs one of the 40 examples of"
        " 'y'; pass num_classes=... to declare them); 1 of 40 labels are out of range"
    )
    declared = load_error(tmp_path / "huge.npz", num_classes=10)
    assert f"'y': label {label} at index 7 is outside the 10 classes 0..9" in declared


def test_empty_declared_class_and_negative_labels(tmp_path):
    x, y = digits_like()
    np.savez(tmp_path / "ten.npz", x=x, y=y)
    message = load_error(tmp_path / "ten.npz", num_classes=11)
    assert "class(es) 10 have no examples in 'y' (11 classes declared)" in message
    y[4] = -3
    np.savez(tmp_path / "negative.npz", x=x, y=y)
    assert "'y': label -3 at index 4 is negative" in load_error(tmp_path / "negative.npz")


def test_empty_truncated_and_foreign_files(tmp_path):
    x, y = digits_like()
    np.savez(tmp_path / "good.npz", x=x, y=y)
    good = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "empty.npz").write_bytes(b"")
    assert "the file is empty (0 bytes)" in load_error(tmp_path / "empty.npz")
    (tmp_path / "truncated.npz").write_bytes(good[: len(good) // 2])
    assert "not an .npz archive" in load_error(tmp_path / "truncated.npz")
    (tmp_path / "notes.npz").write_text("x,y\n1,2\n")
    assert "not an .npz archive (8 bytes" in load_error(tmp_path / "notes.npz")
    with open(tmp_path / "array.npz", "wb") as f:
        np.save(f, x)  # a bare .npy under an .npz name
    assert "not an .npz archive" in load_error(tmp_path / "array.npz")
    np.savez(tmp_path / "no_examples.npz", x=np.zeros((0, 4, 4)), y=np.zeros(0, int))
    assert "'x' and 'y' hold no examples" in load_error(tmp_path / "no_examples.npz")


def test_damaged_member_names_the_array(tmp_path):
    x, y = digits_like(n=400, shape=(8, 8))
    np.savez_compressed(tmp_path / "damaged.npz", x=x, y=y)
    raw = bytearray((tmp_path / "damaged.npz").read_bytes())
    with zipfile.ZipFile(tmp_path / "damaged.npz") as archive:
        info = archive.getinfo("x.npy")
    middle = info.header_offset + 30 + len(info.filename) + info.compress_size // 2
    raw[middle : middle + 8] = bytes(8)  # the central directory stays intact
    (tmp_path / "damaged.npz").write_bytes(bytes(raw))
    assert "array 'x' cannot be read" in load_error(tmp_path / "damaged.npz")


def test_from_arrays_rejects_non_finite_inputs():
    x = np.zeros((6, 3, 1), np.float32)
    x[2, 1, 0] = np.inf
    y = np.arange(6, dtype=np.int32) % 2
    with pytest.raises(data.DataError, match=r"toy: x holds non-finite values: example 2 has inf"):
        data.from_arrays("toy", x, y, ("a", "b"), test_fraction=0.5, seed=0)
    assert data.first_nonfinite(x) == 2 and data.first_nonfinite(np.zeros((3, 2))) is None


def test_fashion_mnist_idx_labels_out_of_range_name_the_file(tmp_path):
    def write_idx(name, array):
        header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
        (tmp_path / name).write_bytes(header + array.astype(np.uint8).tobytes())

    images = np.zeros((3, 28, 28), np.uint8)
    write_idx("train-images-idx3-ubyte", images)
    write_idx("train-labels-idx1-ubyte", np.array([0, 12, 3]))
    write_idx("t10k-images-idx3-ubyte", images)
    write_idx("t10k-labels-idx1-ubyte", np.array([0, 1, 2]))
    labels = tmp_path / "train-labels-idx1-ubyte"
    with pytest.raises(data.DataError, match=rf"{labels}: label 12 at index 1 is outside the 10"):
        data.load("fashion_mnist", data_dir=str(tmp_path))


# --- through the command line ---------------------------------------------------------------------


def bad_npz_files(folder):
    """Files a user could hand to `data.a=npz:...`; each must stop the run with one line."""
    x, y = digits_like(n=100)
    nan_x = x.astype(np.float32) / 255
    nan_x[17, 2, 3] = np.nan
    typo_y = y.copy()
    typo_y[42] = 12
    np.savez(folder / "nan.npz", x=nan_x, y=y)
    np.savez(folder / "typo.npz", x=x, y=typo_y)
    np.savez(folder / "good.npz", x=x, y=y)
    good = (folder / "good.npz").read_bytes()
    (folder / "truncated.npz").write_bytes(good[: len(good) // 3])
    (folder / "empty.npz").write_bytes(b"")
    return {
        "nan.npz": "'x' holds non-finite values: example 17 has nan",
        "typo.npz": "class(es) 10, 11 have no examples in 'y'",
        "truncated.npz": "not an .npz archive",
        "empty.npz": "the file is empty (0 bytes)",
    }


def test_cli_stops_on_bad_npz_data_in_one_line_before_training(
    tmp_path, tiny_overrides, capsys, monkeypatch
):
    from jaxtl import cli

    monkeypatch.delenv("JAXTL_DEBUG", raising=False)
    for name, expected in bad_npz_files(tmp_path).items():
        out = tmp_path / f"out_{name}"
        argv = ["run", "strategies", "--out", str(out), "--set", *tiny_overrides]
        assert cli.main([*argv, f"data.a=npz:{tmp_path / name}"]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith(f"jaxtl: error: npz {tmp_path / name}: ") and expected in err, err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert not (out / "sources").exists() and not (out / "runs").exists()


def test_truncated_gzipped_idx_file_names_the_file(tmp_path):
    import gzip

    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 200]) + bytes(200))[:-12])
    with pytest.raises(data.DataError, match=rf"{path} cannot be read .*truncated or damaged"):
        data.read_idx(path)
