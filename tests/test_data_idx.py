"""Fashion-MNIST read offline from IDX files: the parser, the search path and its one error."""

import gzip
import struct

import numpy as np
import pytest

import tfopt
from tfopt.data._idx import FASHION_MNIST_FILES, SEARCH_ENV, fashion_mnist_dirs, read_idx
from tfopt.errors import DataError, OfflineError


def _idx_bytes(array: np.ndarray) -> bytes:
    code = {np.dtype("u1"): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}[array.dtype]
    head = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return head + array.tobytes()


def _write(path, array):
    raw = _idx_bytes(array)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def _fake_fashion(directory, n_train=40, n_test=20):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype="u1"),
        "y_train": (np.arange(n_train) % 10).astype("u1"),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype="u1"),
        "y_test": (np.arange(n_test) % 10).astype("u1"),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for key, name in FASHION_MNIST_FILES.items():
        _write(directory / name, arrays[key])
    return arrays


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_read_idx_plain_and_gzipped(tmp_path, name):
    images = np.arange(2 * 3 * 4, dtype="u1").reshape(2, 3, 4)
    np.testing.assert_array_equal(read_idx(_write(tmp_path / name, images)), images)
    floats = np.array([[1.5, -2.0]], dtype=">f4")  # big-endian on disk, native in memory
    got = read_idx(_write(tmp_path / "floats-idx2", floats))
    assert got.dtype == np.dtype("float32") and got.tolist() == [[1.5, -2.0]]


def test_read_idx_rejects_bad_magic_truncated_and_corrupt_files(tmp_path):
    raw = _idx_bytes(np.zeros((5, 2, 2), "u1"))
    (tmp_path / "magic").write_bytes(b"\x12\x34" + raw[2:])
    with pytest.raises(
        DataError, match=r"'.*magic' is not an IDX file.*Received bytes 12 34 08 03"
    ):
        read_idx(tmp_path / "magic")
    (tmp_path / "short").write_bytes(raw[:-3])
    with pytest.raises(
        DataError, match=r"is truncated: dimensions \[5, 2, 2\] of uint8 need 36 bytes. Received 33"
    ):
        read_idx(tmp_path / "short")
    (tmp_path / "header").write_bytes(raw[:9])
    with pytest.raises(DataError, match="its header needs 16 bytes for 3 dimensions. Received 9"):
        read_idx(tmp_path / "header")
    (tmp_path / "cut.gz").write_bytes(gzip.compress(raw)[:-10])
    with pytest.raises(DataError, match="cannot read .*cut.gz' as a gzipped IDX file"):
        read_idx(tmp_path / "cut.gz")


def test_fashion_mnist_loads_from_the_first_directory_holding_the_files(tmp_path, monkeypatch):
    arrays = _fake_fashion(tmp_path / "second")
    monkeypatch.setenv(SEARCH_ENV, f"{tmp_path / 'empty'}:{tmp_path / 'second'}")
    ds = tfopt.data.load("fashion_mnist", val_fraction=0.25)
    assert ds.input_shape == (28, 28, 1) and ds.num_classes == 10
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (30, 10, 20)
    np.testing.assert_array_equal(ds.x_test[..., 0], arrays["x_test"] / np.float32(255.0))
    np.testing.assert_array_equal(ds.y_test, arrays["y_test"])
    assert str(tmp_path / "second") in ds.info["source"]


def test_fashion_mnist_default_search_is_debian_then_keras_cache(tmp_path, monkeypatch):
    monkeypatch.delenv(SEARCH_ENV, raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert [str(d) for d in fashion_mnist_dirs()] == [
        "/usr/share/datasets/fashion-mnist",
        str(tmp_path / "datasets" / "fashion-mnist"),
    ]


def test_fashion_mnist_not_found_is_one_line_naming_both_fixes(tmp_path, monkeypatch):
    monkeypatch.setenv(SEARCH_ENV, str(tmp_path))
    with pytest.raises(OfflineError) as info:
        tfopt.data.load("fashion_mnist")
    text = str(info.value)
    assert "\n" not in text and f"are in none of ['{tmp_path}']" in text
    assert "apt-get install dataset-fashion-mnist" in text
    assert "keras.datasets.fashion_mnist.load_data()" in text


def test_fashion_mnist_images_and_labels_must_agree(tmp_path, monkeypatch):
    _fake_fashion(tmp_path)
    _write(tmp_path / FASHION_MNIST_FILES["y_test"], np.zeros(7, "u1"))
    monkeypatch.setenv(SEARCH_ENV, str(tmp_path))
    with pytest.raises(DataError, match=r"Received images \(20, 28, 28\) and labels \(7,\)"):
        tfopt.data.load("fashion_mnist")
