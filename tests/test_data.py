"""Tests for jaxtl.data: loaders, task construction, shifts and the input pipeline."""

import gzip
import random
import socket
import textwrap

import jax
import numpy as np
import pytest
from conftest import run_on_cpu_devices

from jaxtl import data
from jaxtl.data import datasets


def toy(num_classes=4, n_train=6, n_test=3, shape=(5, 5, 1), seed=0, name="toy"):
    """A tiny Dataset with n_train / n_test examples of every class, values in [0, 1]."""
    rng = np.random.default_rng(seed)
    y_train = np.repeat(np.arange(num_classes, dtype=np.int32), n_train)
    y_test = np.repeat(np.arange(num_classes, dtype=np.int32), n_test)
    return data.Dataset(
        name,
        rng.random((len(y_train),) + shape, dtype=np.float32),
        y_train,
        rng.random((len(y_test),) + shape, dtype=np.float32),
        y_test,
        num_classes,
        tuple(f"c{i}" for i in range(num_classes)),
    )


@pytest.fixture(scope="module")
def mnist5k():
    return data.load("mnist5k")


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


# --- loaders -----------------------------------------------------------------------------------


def test_embedded_sets_load_with_network_unavailable(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    datasets._mnist5k_raw.cache_clear()  # force a real read of the packaged file
    assert len(data.load("mnist5k").y_train) == 4000
    assert len(data.load("digits").y_train) > 0
    assert data.load("mnist1d", num_samples=100).x_train.shape == (80, 40, 1)


def test_mnist5k_is_5000_real_digits_500_per_class(mnist5k):
    y = np.concatenate([mnist5k.y_train, mnist5k.y_test])
    assert len(y) == 5000
    assert np.bincount(y).tolist() == [500] * 10
    assert np.bincount(mnist5k.y_test).tolist() == [100] * 10
    assert mnist5k.x_train.shape[1:] == (28, 28, 1) and mnist5k.x_train.dtype == np.float32
    assert mnist5k.y_train.dtype == np.int32
    assert mnist5k.x_train.min() == 0.0 and mnist5k.x_train.max() == 1.0
    assert mnist5k.class_names == tuple("0123456789")


def test_split_is_seeded(mnist5k):
    again, other = data.load("mnist5k", seed=0), data.load("mnist5k", seed=1)
    np.testing.assert_array_equal(again.x_test, mnist5k.x_test)
    assert not np.array_equal(other.x_test, mnist5k.x_test)


def test_digits(digits):
    assert len(digits.y_train) + len(digits.y_test) == 1797
    assert digits.input_shape == (8, 8, 1)
    assert digits.x_train.min() >= 0.0 and digits.x_train.max() == 1.0


def test_mnist1d_shapes_options_and_global_rng_untouched():
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    ds = data.load("mnist1d", num_samples=200, final_seq_length=24)
    assert (np.random.rand(), random.random()) == (expected_np, expected_py)
    assert ds.x_train.shape == (160, 24, 1) and ds.x_test.shape == (40, 24, 1)
    assert ds.x_train.dtype == np.float32 and ds.num_classes == 10
    same = data.load("mnist1d", num_samples=200, final_seq_length=24)
    sheared = data.load("mnist1d", num_samples=200, final_seq_length=24, shear_scale=3.0)
    np.testing.assert_array_equal(same.x_train, ds.x_train)
    assert not np.allclose(sheared.x_train, ds.x_train)


def test_tfds_through_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        mnist = data.load("mnist")
        cifar = data.load("tfds:cifar10", max_examples=4)
    assert mnist.x_train.shape == (6, 28, 28, 1) and mnist.x_train.dtype == np.float32
    assert cifar.x_train.shape == (4, 32, 32, 3) and cifar.x_test.shape == (4, 32, 32, 3)
    assert 0.0 <= cifar.x_train.min() and cifar.x_train.max() <= 1.0
    assert cifar.num_classes == 10 and cifar.y_train.dtype == np.int32


def test_tfds_never_downloads_and_says_how_to_prepare(tmp_path):
    with pytest.raises(data.DataError, match=r"not prepared .*tfds build cifar10"):
        data.load("cifar10", data_dir=str(tmp_path))
    unknown = r"unknown TFDS dataset 'cifar11' \(did you mean .*'cifar10'"
    with pytest.raises(data.DataError, match=unknown):
        data.load("tfds:cifar11")


def test_npz_with_and_without_test_split(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (20, 4, 4), dtype=np.uint8)
    y = np.arange(20) % 2
    np.savez(tmp_path / "pool.npz", x=x, y=y)
    ds = data.load(f"npz:{tmp_path / 'pool.npz'}", seed=3)
    assert ds.name == "pool" and ds.input_shape == (4, 4, 1)
    assert len(ds.y_train) == 16 and np.bincount(ds.y_test).tolist() == [2, 2]
    np.savez(
        tmp_path / "split.npz",
        x=np.zeros((4, 10)),
        y=[0, 1, 2, 0],
        x_test=np.ones((2, 10)),
        y_test=[2, 1],
    )
    ds = data.load("npz", path=str(tmp_path / "split.npz"))
    assert ds.x_train.shape == (4, 10, 1) and ds.num_classes == 3 and ds.y_test.tolist() == [2, 1]


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": np.zeros((3, 2, 2))}, r"needs arrays 'x' and 'y'.*found \['x'\]"),
        ({"x": np.zeros((3, 2, 2)), "y": [0, 1]}, r"'x' has 3 examples but 'y' has shape \(2,\)"),
        (
            {"x": np.zeros((2, 2, 2)), "y": [0.5, 1.0]},
            r"labels 'y' must have an integer dtype, got float64",
        ),
        ({"x": np.zeros((2, 2, 2)), "y": [0, -1]}, r"'y': label -1 at index 1 is negative"),
        ({"x": np.full((2, 2, 2), 3.0), "y": [0, 1]}, r"float images must lie in \[0, 1\]"),
        (
            {"x": np.zeros((2, 2, 2)), "y": [0, 1], "x_test": np.zeros((1, 2, 2))},
            r"both 'x_test' and 'y_test'",
        ),
    ],
)
def test_npz_errors(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(data.DataError, match=message):
        data.load(f"npz:{tmp_path / 'bad.npz'}")


def write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_reader_and_fashion_mnist_from_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3, 1], np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images[:2])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels[:2])
    np.testing.assert_array_equal(data.read_idx(tmp_path / "train-images-idx3-ubyte.gz"), images)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "train-labels-idx1-ubyte"), labels)
    ds = data.load("fashion_mnist", data_dir=str(tmp_path))
    np.testing.assert_allclose(ds.x_train[..., 0] * 255, images, atol=1e-4)
    assert ds.y_test.tolist() == [0, 9] and ds.class_names[9] == "Ankle boot"


def test_idx_errors(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(data.DataError, match="not an IDX file"):
        data.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))
    with pytest.raises(data.DataError, match=r"promises shape \(5,\)"):
        data.read_idx(tmp_path / "short")
    with pytest.raises(data.DataError, match="no IDX files in .*train-images-idx3-ubyte"):
        data.load("fashion_mnist", data_dir=str(tmp_path))


def test_unknown_names_and_options_are_clear():
    message = (
        r"unknown dataset 'mnist5' \(did you mean 'mnist5k'.*"
        r"choices: digits, fashion_mnist, mnist1d, mnist5k, npz:<path>.*"
        r"'tfds:<name>' or by its bare name"
    )
    with pytest.raises(data.DataError, match=message):
        data.load("mnist5")
    with pytest.raises(data.DataError, match="option.*sed; valid options: seed, test_fraction"):
        data.load("digits", sed=1)
    assert set(data.names()) == {"digits", "fashion_mnist", "mnist1d", "mnist5k", "npz"}


def test_dataset_invariants_are_checked():
    ds = toy()
    message = r"bad: y_train: label 4 at index 18 is outside the 4 classes 0\.\.3"
    with pytest.raises(data.DataError, match=message):
        data.Dataset("bad", ds.x_train, ds.y_train + 1, ds.x_test, ds.y_test, 4, ds.class_names)
    with pytest.raises(data.DataError, match="x_train must be a float32"):
        data.Dataset(
            "bad",
            ds.x_train.astype(np.float64),
            ds.y_train,
            ds.x_test,
            ds.y_test,
            4,
            ds.class_names,
        )


# --- tasks -------------------------------------------------------------------------------------


def test_yosinski_halves_are_disjoint_covering_and_remapped(digits):
    a, b = data.class_split(digits, classes_a=range(5))
    assert a.class_names == tuple("01234") and b.class_names == tuple("56789")
    assert len(a.y_train) + len(b.y_train) == len(digits.y_train)
    assert len(a.y_test) + len(b.y_test) == len(digits.y_test)
    assert set(a.y_train.tolist()) == set(b.y_train.tolist()) == set(range(5))
    np.testing.assert_array_equal(b.x_train, digits.x_train[digits.y_train >= 5])
    np.testing.assert_array_equal(b.y_train, digits.y_train[digits.y_train >= 5] - 5)


def test_random_half_split_is_seeded_and_covering():
    ds = toy(num_classes=10, n_train=2, n_test=1)
    a1, b1 = data.class_split(ds, seed=7)
    a2, _ = data.class_split(ds, seed=7)
    a3, _ = data.class_split(ds, seed=8)
    assert a1.class_names == a2.class_names != a3.class_names
    assert sorted(a1.class_names + b1.class_names) == sorted(ds.class_names)
    assert a1.num_classes == b1.num_classes == 5


def test_class_split_errors():
    ds = toy()
    with pytest.raises(data.DataError, match=r"classes \[1\] are in both tasks"):
        data.class_split(ds, classes_a=[0, 1], classes_b=[1, 2])
    with pytest.raises(data.DataError, match=r"unknown class id\(s\) \[7\]; valid ids are 0..3"):
        data.class_split(ds, classes_a=[0, 7])
    with pytest.raises(data.DataError, match="or a seed"):
        data.class_split(ds)


def test_few_shot_counts_seed_and_nesting():
    ds = toy(num_classes=3, n_train=10)
    five = data.few_shot(ds, 5, seed=0)
    assert np.bincount(five.y_train).tolist() == [5, 5, 5]
    np.testing.assert_array_equal(data.few_shot(ds, 5, seed=0).x_train, five.x_train)
    assert not np.array_equal(data.few_shot(ds, 5, seed=1).x_train, five.x_train)
    two = data.few_shot(ds, 2, seed=0)
    assert set(map(bytes, two.x_train)) <= set(map(bytes, five.x_train))
    np.testing.assert_array_equal(five.x_test, ds.x_test)
    assert data.few_shot(ds, None, seed=0) is ds
    message = r"class 0 \('c0'\) has 10 training examples, fewer than n_per_class=11"
    with pytest.raises(data.DataError, match=message):
        data.few_shot(ds, 11, seed=0)


def test_permute_labels_moves_every_class_consistently():
    ds = toy(num_classes=5, n_train=3)
    shifted = data.permute_labels(ds, seed=0)
    mapping = dict(zip(ds.y_train.tolist(), shifted.y_train.tolist(), strict=True))
    assert len(set(mapping.values())) == 5 and all(old != new for old, new in mapping.items())
    assert [mapping[c] for c in ds.y_test.tolist()] == shifted.y_test.tolist()
    assert all(shifted.class_names[new] == ds.class_names[old] for old, new in mapping.items())
    np.testing.assert_array_equal(shifted.x_train, ds.x_train)


def test_cross_dataset_pair_aligns_resolution_and_labels(mnist5k, digits):
    a, b = data.cross_dataset_pair(mnist5k, digits, size=16)
    assert a.input_shape == b.input_shape == (16, 16, 1)
    assert a.class_names == b.class_names and a.num_classes == b.num_classes == 10
    _, up = data.cross_dataset_pair(mnist5k, digits, size=28)
    assert up.input_shape == (28, 28, 1)
    with pytest.raises(data.DataError, match="aligned label spaces"):
        data.cross_dataset_pair(mnist5k, toy(num_classes=10))


def test_ood_split_is_the_shifted_test_set(digits):
    x, y = data.ood_split(digits, "rotate", seed=3, degrees=30)
    np.testing.assert_array_equal(x, data.apply_shift(digits, "rotate", seed=3, degrees=30).x_test)
    np.testing.assert_array_equal(y, digits.y_test)
    x_noise, _ = data.ood_split(digits)
    assert x_noise.shape == digits.x_test.shape and not np.array_equal(x_noise, digits.x_test)


# --- shifts ------------------------------------------------------------------------------------


def test_invert_is_exactly_one_minus_x():
    ds = toy()
    np.testing.assert_array_equal(data.apply_shift(ds, "invert").x_train, 1.0 - ds.x_train)
    signals = toy(shape=(7, 1))
    np.testing.assert_array_equal(data.apply_shift(signals, "invert").x_test, -signals.x_test)


def test_permute_pixels_is_one_fixed_permutation():
    ds = toy()
    shifted = data.apply_shift(ds, "permute_pixels", seed=1)
    np.testing.assert_array_equal(
        np.sort(shifted.x_train.reshape(len(ds.x_train), -1), axis=1),
        np.sort(ds.x_train.reshape(len(ds.x_train), -1), axis=1),
    )
    assert not np.array_equal(shifted.x_train, ds.x_train)
    # the same positions move in train and test: a one-hot image reveals the permutation
    probe = np.zeros((1, 5, 5, 1), np.float32)
    probe[0, 0, 0, 0] = 1.0
    moved = data.shift_array(probe, "permute_pixels", seed=1, stream=0)
    np.testing.assert_array_equal(
        moved, data.shift_array(probe, "permute_pixels", seed=1, stream=1)
    )


def test_resize_shapes_and_identity(mnist5k, digits):
    assert data.apply_shift(mnist5k, "resize", size=8).input_shape == (8, 8, 1)
    assert data.apply_shift(digits, "resize", size=28).input_shape == (28, 28, 1)
    assert data.resize(digits.x_test, (4, 6)).shape[1:] == (4, 6, 1)
    np.testing.assert_allclose(data.resize(digits.x_test, 8), digits.x_test, atol=1e-6)
    np.testing.assert_allclose(
        data.resize(np.full((1, 9, 9, 1), 0.3, np.float32), 4), 0.3, atol=1e-6
    )
    assert data.resize(np.zeros((2, 40, 1), np.float32), 20).shape == (2, 20, 1)


def test_gaussian_noise_std_and_clipping():
    gray = data.Dataset(
        "gray",
        np.full((50, 8, 8, 1), 0.5, np.float32),
        np.zeros(50, np.int32),
        np.full((50, 8, 8, 1), 0.5, np.float32),
        np.zeros(50, np.int32),
        1,
        ("g",),
    )
    shifted = data.apply_shift(gray, "gaussian_noise", std=0.1)
    assert abs(shifted.x_train.std() - 0.1) < 0.005
    assert not np.array_equal(shifted.x_train, shifted.x_test)  # independent draws per split
    loud = data.apply_shift(gray, "gaussian_noise", std=5.0)
    assert loud.x_train.min() == 0.0 and loud.x_train.max() == 1.0


def test_rotate_blur_contrast(digits):
    unrotated = data.apply_shift(digits, "rotate", degrees=0).x_train
    np.testing.assert_array_equal(unrotated, digits.x_train)
    np.testing.assert_allclose(
        data.apply_shift(digits, "rotate", degrees=90).x_train,
        np.rot90(digits.x_train, k=1, axes=(1, 2)),
        atol=1e-5,
    )
    assert not np.allclose(data.apply_shift(digits, "rotate", degrees=30).x_train, digits.x_train)
    blurred = data.apply_shift(digits, "blur", sigma=1.0).x_train
    assert blurred.std() < digits.x_train.std()
    np.testing.assert_allclose(blurred.mean(), digits.x_train.mean(), atol=0.01)
    same_contrast = data.apply_shift(digits, "contrast", factor=1.0).x_train
    np.testing.assert_allclose(same_contrast, digits.x_train, atol=1e-6)
    flat = data.apply_shift(digits, "contrast", factor=0.0).x_train
    np.testing.assert_allclose(
        flat, digits.x_train.mean(axis=(1, 2, 3), keepdims=True) + 0 * flat, atol=1e-6
    )
    with pytest.raises(data.DataError, match="rotate applies to images"):
        data.apply_shift(toy(shape=(7, 1)), "rotate")


def test_unknown_shift_and_parameter_are_clear():
    message = (
        r"unknown shift 'rotat' \(did you mean 'rotate'.*choices: "
        r"gaussian_noise, blur, contrast, invert, rotate, permute_pixels, resize"
    )
    with pytest.raises(data.DataError, match=message):
        data.apply_shift(toy(), "rotat")
    with pytest.raises(data.DataError, match="unknown parameter.*degree; valid: degrees"):
        data.apply_shift(toy(), "rotate", degree=3)


# --- pipeline ----------------------------------------------------------------------------------


def test_batches_are_a_function_of_seed_and_epoch():
    batches = data.batch_indices(50, 8, seed=0, epoch=0)
    assert len(batches) == 6 and all(len(b) == 8 for b in batches)
    assert len(set(np.concatenate(batches).tolist())) == 48
    same = data.batch_indices(50, 8, seed=0, epoch=0)
    assert all(np.array_equal(a, b) for a, b in zip(batches, same, strict=True))
    other_seed = np.concatenate(data.batch_indices(50, 8, seed=1, epoch=0))
    other_epoch = np.concatenate(data.batch_indices(50, 8, seed=0, epoch=1))
    assert not np.array_equal(np.concatenate(batches), other_seed)
    assert not np.array_equal(np.concatenate(batches), other_epoch)
    ordered = data.batch_indices(10, 4, seed=0, epoch=0, shuffle=False, drop_remainder=False)
    assert [b.tolist() for b in ordered] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(data.DataError, match="batch_size 64 is larger than the 10 examples"):
        data.batch_indices(10, 64, seed=0, epoch=0)


def test_normalization_stats_come_from_train_only():
    ds = toy(shape=(4, 4, 2))
    stats = data.normalization_stats(ds.x_train)
    with_test = data.normalization_stats(np.concatenate([ds.x_train, ds.x_test + 5.0]))
    assert not np.allclose(stats.mean, with_test.mean)
    np.testing.assert_allclose(stats.mean, ds.x_train.mean(axis=(0, 1, 2)), rtol=1e-5)
    z = data.normalize(ds.x_train, stats)
    np.testing.assert_allclose(z.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=(0, 1, 2)), 1.0, atol=1e-4)
    assert stats.mean.shape == (2,)


def test_device_batches_and_gather_single_process():
    x = np.arange(12, dtype=np.float32).reshape(6, 2, 1)
    y = np.arange(6, dtype=np.int32)
    batch = data.device_put_sharded_batch({"x": x[:2], "y": y[:2]})
    assert isinstance(batch["x"], jax.Array) and batch["x"].sharding == data.data_sharding()
    stats = data.NormStats(np.array([1.0], np.float32), np.array([2.0], np.float32))
    x_dev, y_dev = data.device_dataset(x, y, stats=stats)
    xb, yb = data.batch_gather()(x_dev, y_dev, np.array([4, 1]))
    np.testing.assert_allclose(np.asarray(xb), (x[[4, 1]] - 1.0) / 2.0)
    assert np.asarray(yb).tolist() == [4, 1]
    assert data.process_slice(12, process_index=2, process_count=3) == slice(8, 12)
    with pytest.raises(data.DataError, match="not divisible by the 5 processes"):
        data.process_slice(12, process_index=0, process_count=5)


def test_data_parallel_sharding_over_four_devices():
    code = textwrap.dedent("""
      import numpy as np
      from jaxtl import data
      batch = data.device_put_sharded_batch(np.arange(8.0))
      print(sorted(len(s.data) for s in batch.addressable_shards))
      try:
        data.device_put_sharded_batch(np.arange(6.0))
      except data.DataError as e:
        print(e)
  """)
    stdout = run_on_cpu_devices(code, devices=4)
    assert stdout.splitlines() == [
        "[2, 2, 2, 2]",
        "batch size 6 is not divisible by the 4 local devices; use a multiple of 4",
    ]
