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
        match="Could not download the 'fashion_mnist' dataset: the network is unreachable",
    ) as info:
        tfopt.data.load("fashion_mnist")
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
