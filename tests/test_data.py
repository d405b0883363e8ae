import urllib.error
import urllib.request

import numpy as np
import pytest

import tfopt
from tfopt.errors import OfflineError


def test_mnist1d_is_generated_offline_with_fixed_split(mnist1d):
    assert mnist1d.input_shape == (40, 1)
    assert (len(mnist1d.x_train), len(mnist1d.x_val), len(mnist1d.x_test)) == (3600, 400, 1000)
    assert mnist1d.num_classes == 10
    assert mnist1d.x_train.dtype == np.float32 and mnist1d.y_train.dtype == np.int32
    again = tfopt.data.load("mnist1d")
    np.testing.assert_array_equal(again.x_test, mnist1d.x_test)
    np.testing.assert_array_equal(again.y_train, mnist1d.y_train)
    assert abs(float(mnist1d.x_train.mean())) < 0.05  # normalized with train statistics


def test_digits():
    ds = tfopt.data.load("digits")
    assert ds.input_shape == (8, 8, 1)
    assert len(ds.x_train) + len(ds.x_val) + len(ds.x_test) == 1797
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    assert set(np.unique(ds.y_test)) == set(range(10))


def test_unknown_dataset_suggests_the_close_name():
    with pytest.raises(ValueError, match="Unknown dataset 'mnist1e'. Did you mean 'mnist1d'?"):
        tfopt.data.load("mnist1e")


def test_bad_val_fraction_echoes_value():
    with pytest.raises(
        ValueError, match=r"val_fraction must be in \(0, 1\). Received: val_fraction=1.5"
    ):
        tfopt.data.load("digits", val_fraction=1.5)


def test_keras_dataset_offline_gives_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # nothing cached

    def unreachable(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlretrieve", unreachable)
    monkeypatch.setattr(urllib.request, "urlopen", unreachable)
    with pytest.raises(
        OfflineError,
        match="Could not download the 'mnist' dataset: the network is unreachable",
    ) as info:
        tfopt.data.load("mnist")
    assert "'mnist1d' or 'digits'" in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_from_arrays_splits_and_converts_one_hot():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)).astype("float64")
    y = np.eye(4)[rng.integers(0, 4, 200)]
    ds = tfopt.data.from_arrays(x, y, test_fraction=0.25, val_fraction=0.2)
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (120, 30, 50)
    assert ds.num_classes == 4 and ds.x_train.dtype == np.float32


def test_from_arrays_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match=r"Received: len\(x\)=3, len\(y\)=2"):
        tfopt.data.from_arrays(np.zeros((3, 2)), np.zeros(2))


def test_from_npz(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "mine.npz"
    np.savez(
        path,
        x_train=rng.normal(size=(50, 3)),
        y_train=np.arange(50) % 2,
        x_test=rng.normal(size=(10, 3)),
        y_test=np.arange(10) % 2,
    )
    ds = tfopt.data.load(str(path))
    assert ds.name == "mine" and len(ds.x_test) == 10 and len(ds.x_train) + len(ds.x_val) == 50
    bad = tmp_path / "bad.npz"
    np.savez(bad, a=np.zeros(3))
    with pytest.raises(
        ValueError,
        match=r"must contain arrays x_train, y_train, x_test, y_test \(or x, y\). Found: \['a'\]",
    ):
        tfopt.data.from_npz(bad)


def test_from_tf_dataset():
    import tensorflow as tf

    x = np.arange(100, dtype="float32").reshape(50, 2)
    y = (np.arange(50) % 3).astype("int64")
    ds = tfopt.data.from_tf_dataset(
        tf.data.Dataset.from_tensor_slices((x, y)).batch(8), test_fraction=0.2
    )
    assert len(ds.x_train) + len(ds.x_val) + len(ds.x_test) == 50
    assert ds.num_classes == 3
    assert (
        sorted(np.concatenate([ds.x_train, ds.x_val, ds.x_test])[:, 0].tolist()) == x[:, 0].tolist()
    )


def test_digits32_is_digits_resized_to_32x32_rgb():
    ds = tfopt.data.load("digits32")
    assert ds.input_shape == (32, 32, 3) and ds.num_classes == 10
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (1293, 144, 360)
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    np.testing.assert_array_equal(ds.x_train[..., 0], ds.x_train[..., 2])  # gray as RGB
    small = tfopt.data.load("digits")  # the same split, so the same labels in the same order
    np.testing.assert_array_equal(small.y_test, ds.y_test)
    # bilinear resizing keeps each 4x4 block's mean close to the 8x8 pixel
    blocks = ds.x_test[..., 0].reshape(-1, 8, 4, 8, 4).mean((2, 4))
    assert np.abs(blocks - small.x_test[..., 0]).mean() < 0.08


def test_make_shapes_is_deterministic_balanced_and_varied():
    x, y = tfopt.data.make_shapes(400, seed=3)
    x2, y2 = tfopt.data.make_shapes(400, seed=3)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(tfopt.data.make_shapes(400, seed=4)[0], x)
    assert x.shape == (400, 32, 32, 3) and x.dtype == np.float32 and y.dtype == np.int32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert set(np.unique(y)) == set(range(10)) and np.bincount(y).min() >= 20
    # colours vary across images, and every image has a visible foreground
    assert x.mean(axis=(1, 2)).std(axis=0).min() > 0.1
    assert (x.std(axis=(1, 2, 3)) > 0.1).all()
    with pytest.raises(ValueError, match="n must be >= 1. Received: n=0"):
        tfopt.data.make_shapes(0)


def test_shapes32_split_is_fixed_and_not_solvable_from_mean_pixels():
    ds = tfopt.data.load("shapes32")
    assert ds.input_shape == (32, 32, 3) and ds.num_classes == 10
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (5400, 600, 1500)
    assert ds.info["classes"][0] == "disk"
    np.testing.assert_array_equal(tfopt.data.load("shapes32").x_test, ds.x_test)
    # shapes vary in position, scale and colour: the nearest class-mean image is near chance
    flat_train, flat_test = ds.x_train.reshape(5400, -1), ds.x_test.reshape(1500, -1)
    means = np.stack([flat_train[ds.y_train == k].mean(0) for k in range(10)])
    nearest = ((flat_test[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert (nearest == ds.y_test).mean() < 0.2
