"""IDX files (the MNIST / Fashion-MNIST format) and where Fashion-MNIST's files are found offline.

An IDX file is a 4-byte magic number (two zero bytes, a dtype code, the number of dimensions), one
big-endian uint32 per dimension, then the values in C order; the published files are gzipped.
Fashion-MNIST is searched, without the network, in Debian's ``dataset-fashion-mnist`` package
(`DEBIAN_FASHION_MNIST`) and in Keras's download cache (``$KERAS_HOME`` or ``~/.keras``, under
``datasets/fashion-mnist``). The environment variable ``TFOPT_FASHION_MNIST_DIRS`` (directories
separated by ``os.pathsep``) replaces that search path.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from tfopt.errors import DataError, OfflineError

# IDX dtype codes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT")
_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
SEARCH_ENV = "TFOPT_FASHION_MNIST_DIRS"


def read_idx(path) -> np.ndarray:
    """Reads an IDX file (gzipped when its name ends in ``.gz``) into a numpy array.

    Args:
        path: the file.

    Returns:
        The array, with the file's shape and dtype (native byte order).

    Raises:
        DataError: not an IDX file (bad magic number or dtype code), or its size does not match
            the dimensions its header states (a truncated or corrupt file).
    """
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; a cut gzip is an EOFError
        raise DataError(f"cannot read {str(path)!r} as a gzipped IDX file: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataError(
            f"{str(path)!r} is not an IDX file: its magic number must be 00 00 <dtype code "
            f"{sorted(_DTYPES)}> <ndim>. Received bytes {raw[:4].hex(' ') or '(empty)'}"
        )
    dtype, ndim = _DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(
            f"{str(path)!r} is truncated: its header needs {header} bytes for {ndim} dimensions. "
            f"Received {len(raw)} bytes"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise DataError(
            f"{str(path)!r} is {what}: dimensions {list(dims)} of {dtype.name} need {expected} "
            f"bytes. Received {len(raw)} bytes"
        )
    data = np.frombuffer(raw, dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))


def fashion_mnist_dirs() -> list[Path]:
    """The directories searched for Fashion-MNIST's four files, in order."""
    override = os.environ.get(SEARCH_ENV)
    if override is not None:
        return [Path(p) for p in override.split(os.pathsep) if p]
    keras_home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")
    return [DEBIAN_FASHION_MNIST, keras_home / "datasets" / "fashion-mnist"]


def find_fashion_mnist() -> Path:
    """The first searched directory that holds all four Fashion-MNIST files.

    Raises:
        OfflineError: no directory holds them; the message says how to get them.
    """
    dirs = fashion_mnist_dirs()
    for d in dirs:
        if all((d / f).is_file() for f in FASHION_MNIST_FILES.values()):
            return d
    raise OfflineError(
        f"Fashion-MNIST's files ({', '.join(FASHION_MNIST_FILES.values())}) are in none of "
        f"{[str(d) for d in dirs]} and tfopt does not download: install them with "
        "`apt-get install dataset-fashion-mnist`, or run "
        "`keras.datasets.fashion_mnist.load_data()` once on a machine with network (it caches "
        "them under ~/.keras/datasets/fashion-mnist)"
    )


def read_fashion_mnist() -> tuple[dict[str, np.ndarray], Path]:
    """Fashion-MNIST's arrays (``x_train``: uint8 (60000, 28, 28), ...) and their directory.

    Raises:
        OfflineError: the files are not found (see `find_fashion_mnist`).
        DataError: a file is corrupt, or images and labels disagree in number.
    """
    where = find_fashion_mnist()
    arrays = {key: read_idx(where / name) for key, name in FASHION_MNIST_FILES.items()}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(
                f"Fashion-MNIST's {split} files in {str(where)!r} must hold images (n, h, w) and "
                f"n labels. Received images {x.shape} and labels {y.shape}"
            )
    return arrays, where
