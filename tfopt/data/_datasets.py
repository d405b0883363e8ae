from __future__ import annotations

import difflib
import os
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tfopt.data._checks import check_pair, check_splits
from tfopt.errors import DataError, OfflineError


@dataclass(frozen=True)
class Dataset:
    """A classification dataset split into train / validation / test numpy arrays."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    info: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def train(self) -> tuple[np.ndarray, np.ndarray]:
        return self.x_train, self.y_train

    @property
    def val(self) -> tuple[np.ndarray, np.ndarray]:
        return self.x_val, self.y_val

    @property
    def test(self) -> tuple[np.ndarray, np.ndarray]:
        return self.x_test, self.y_test

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, input_shape={self.input_shape}, num_classes={self.num_classes}, "
            f"train={len(self.x_train)}, val={len(self.x_val)}, test={len(self.x_test)})"
        )


def _cache_dir() -> Path:
    root = os.environ.get("TFOPT_CACHE_DIR") or Path.home() / ".cache" / "tfopt"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _split(x, y, fraction: float, seed: int, stratify: bool = True):
    """Splits off ``fraction`` of (x, y), stratified by label; returns (x_a, y_a, x_b, y_b)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"split fractions must be in (0, 1). Received: {fraction}")
    from sklearn.model_selection import train_test_split

    labels = y if stratify and len(np.unique(y)) < len(y) * fraction else None
    xa, xb, ya, yb = train_test_split(x, y, test_size=fraction, random_state=seed, stratify=labels)
    return xa, ya, xb, yb


def _finish(
    name, x_train, y_train, x_test, y_test, *, val_fraction, seed, num_classes=None, info=None
):
    check_pair(x_train, y_train, ("x_train", "y_train"), num_classes)
    if len(x_train) < 2:
        raise DataError(
            f"x_train holds {len(x_train)} sample, too few to hold out {val_fraction:g} of it "
            "for validation; give it at least 2 samples (a few hundred to learn from)"
        )
    x_train, y_train, x_val, y_val = _split(x_train, y_train, val_fraction, seed)
    splits = {
        ("x_train", "y_train"): (x_train, y_train),
        ("x_val", "y_val"): (x_val, y_val),
        ("x_test", "y_test"): (x_test, y_test),
    }
    check_splits(splits, num_classes)
    ys = [np.asarray(a).astype("int32").reshape(-1) for a in (y_train, y_val, y_test)]
    xs = [np.ascontiguousarray(a, dtype="float32") for a in (x_train, x_val, x_test)]
    if num_classes is None:
        num_classes = int(max(int(a.max()) for a in ys if a.size) + 1)
    return Dataset(name, xs[0], ys[0], xs[1], ys[1], xs[2], ys[2], num_classes, info or {})


def _mnist1d(*, val_fraction: float, seed: int) -> Dataset:
    # The mnist1d package generates the data locally (make_dataset); its get_dataset() downloads a
    # pickle, which we never call. The generator's own seed (42) gives the published split.
    cache = _cache_dir() / "mnist1d_seed42_v1.npz"
    if cache.exists():
        raw = dict(np.load(cache))
    else:
        from mnist1d.data import get_dataset_args, make_dataset

        d = make_dataset(get_dataset_args())
        raw = {k: np.asarray(d[k]) for k in ("x", "y", "x_test", "y_test")}
        tmp = cache.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, **raw)
        tmp.replace(cache)
    x, xt = raw["x"].astype("float32"), raw["x_test"].astype("float32")
    mean, std = float(x.mean()), float(x.std())
    x, xt = (x - mean) / std, (xt - mean) / std
    return _finish(
        "mnist1d",
        x[..., None],
        raw["y"],
        xt[..., None],
        raw["y_test"],
        val_fraction=val_fraction,
        seed=seed,
        num_classes=10,
        info={
            "normalization": {"mean": mean, "std": std},
            "source": "mnist1d.make_dataset(seed=42)",
        },
    )


def _digits(*, val_fraction: float, seed: int) -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype("float32") / 16.0)[..., None]
    x_train, y_train, x_test, y_test = _split(x, d.target, 0.2, seed)
    return _finish(
        "digits",
        x_train,
        y_train,
        x_test,
        y_test,
        val_fraction=val_fraction,
        seed=seed,
        num_classes=10,
        info={"source": "sklearn.datasets.load_digits"},
    )


def _digits32(*, val_fraction: float, seed: int) -> Dataset:
    from tfopt.data._images import digits32

    x, y = digits32()
    x_train, y_train, x_test, y_test = _split(x, y, 0.2, seed)
    return _finish(
        "digits32",
        x_train,
        y_train,
        x_test,
        y_test,
        val_fraction=val_fraction,
        seed=seed,
        num_classes=10,
        info={"source": "sklearn.datasets.load_digits, resized bilinearly to 32x32, gray as RGB"},
    )


def _to_uint8(x):
    return np.round(x * 255.0).astype("uint8")


def _shapes32(*, val_fraction: float, seed: int) -> Dataset:
    from tfopt.data._images import SHAPES, make_shapes

    # fixed generator seeds (like mnist1d's): the same images on every machine; cached as uint8
    cache = _cache_dir() / "shapes32_v1.npz"
    if cache.exists():
        raw = dict(np.load(cache))
    else:
        x, y = make_shapes(6000, seed=1234)
        xt, yt = make_shapes(1500, seed=4321)
        raw = {"x": _to_uint8(x), "y": y, "x_test": _to_uint8(xt), "y_test": yt}
        tmp = cache.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, **raw)
        tmp.replace(cache)
    x, xt = raw["x"].astype("float32") / 255.0, raw["x_test"].astype("float32") / 255.0
    y, yt = raw["y"], raw["y_test"]
    return _finish(
        "shapes32",
        x,
        y,
        xt,
        yt,
        val_fraction=val_fraction,
        seed=seed,
        num_classes=10,
        info={
            "source": "tfopt.data.make_shapes(6000, seed=1234), test make_shapes(1500, "
            "seed=4321), stored as uint8 / 255",
            "classes": list(SHAPES),
        },
    )


def _keras_dataset(name: str) -> Callable[..., Dataset]:
    def load_keras(*, val_fraction: float, seed: int) -> Dataset:
        from tfopt._backend import import_keras

        keras = import_keras()
        module = getattr(keras.datasets, name)
        try:
            (x_train, y_train), (x_test, y_test) = module.load_data()
        except Exception as e:  # keras.utils.get_file wraps URLError in a bare Exception
            if _is_network_error(e):
                raise OfflineError(
                    f"Could not download the {name!r} dataset: the network is unreachable "
                    f"({type(e).__name__}: {str(e)[:120]}). Download it once on a connected machine "
                    f"(keras.datasets.{name}.load_data() caches it under ~/.keras/datasets), or use an "
                    "offline dataset: 'mnist1d' or 'digits'."
                ) from None
            raise
        x_train, x_test = x_train.astype("float32") / 255.0, x_test.astype("float32") / 255.0
        if x_train.ndim == 3:
            x_train, x_test = x_train[..., None], x_test[..., None]
        return _finish(
            name,
            x_train,
            y_train,
            x_test,
            y_test,
            val_fraction=val_fraction,
            seed=seed,
            num_classes=10,
            info={"source": f"keras.datasets.{name}"},
        )

    return load_keras


def _fashion_mnist(*, val_fraction: float, seed: int) -> Dataset:
    # read offline from Debian's package or Keras's cache (tfopt/data/_idx.py); never downloads
    from tfopt.data._idx import read_fashion_mnist

    raw, where = read_fashion_mnist()
    x_train, x_test = (raw[k].astype("float32")[..., None] / 255.0 for k in ("x_train", "x_test"))
    return _finish(
        "fashion_mnist",
        x_train,
        raw["y_train"],
        x_test,
        raw["y_test"],
        val_fraction=val_fraction,
        seed=seed,
        num_classes=10,
        info={"source": f"Fashion-MNIST IDX files in {where}, pixels / 255"},
    )


def _is_network_error(e: BaseException) -> bool:
    while e is not None:
        if isinstance(e, (urllib.error.URLError, ConnectionError, TimeoutError)):
            return True
        text = str(e)
        if "URL fetch failure" in text or "Name or service not known" in text:
            return True
        e = e.__cause__ or e.__context__
    return False


DATASETS: dict[str, Callable[..., Dataset]] = {
    "mnist1d": _mnist1d,
    "digits": _digits,
    "digits32": _digits32,
    "shapes32": _shapes32,
    "mnist": _keras_dataset("mnist"),
    "fashion_mnist": _fashion_mnist,
    "cifar10": _keras_dataset("cifar10"),
}


def load(name: str, *, val_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """Loads a named dataset, or a `.npz` file, split into train / val / test.

    Args:
        name: one of `DATASETS` (``"mnist1d"``, ``"digits"``, ``"digits32"``, ``"shapes32"``,
            ``"mnist"``, ``"fashion_mnist"``,
            ``"cifar10"``) or a path to a ``.npz`` file (see `from_npz`).
        val_fraction: fraction of the training split held out for validation. Defaults to 0.1.
        seed: seed of the validation split. Defaults to 0.

    Returns:
        A `Dataset`.

    Raises:
        ValueError: for an unknown name.
        OfflineError: when a downloaded dataset is not cached and the network is unreachable;
            for ``"fashion_mnist"`` (read offline from Debian's ``dataset-fashion-mnist`` or
            Keras's cache, searched as `tfopt.data._idx` says) when its files are not found.

    Example:
        >>> ds = tfopt.data.load("digits")
        >>> ds.input_shape
        (8, 8, 1)
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1). Received: val_fraction={val_fraction}")
    if str(name).endswith(".npz"):
        return from_npz(name, val_fraction=val_fraction, seed=seed)
    if name not in DATASETS:
        hint = difflib.get_close_matches(str(name), DATASETS, n=1)
        did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
        raise ValueError(
            f"Unknown dataset {name!r}.{did_you_mean} Known datasets: {sorted(DATASETS)}, or a "
            "path to a .npz file."
        )
    return DATASETS[name](val_fraction=val_fraction, seed=seed)


def from_arrays(
    x,
    y,
    *,
    x_test=None,
    y_test=None,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    seed: int = 0,
    name: str = "arrays",
) -> Dataset:
    """Builds a `Dataset` from numpy arrays (features ``x``, integer labels ``y``).

    The arrays are checked before anything else (`tfopt.data._checks`): numbers, no NaN/inf, one
    label per sample, every split non-empty and of one sample shape, labels that are class
    indices ``0..k-1``. One-hot labels are refused, not converted: an ``(n, k)`` array may as well
    hold soft or multi-label targets, which ``argmax`` would silently turn into other labels.

    Args:
        x: features, shape ``(n, ...)``.
        y: integer class labels, shape ``(n,)`` (or ``(n, 1)``).
        x_test: optional test features; when omitted, ``test_fraction`` of ``x`` is held out.
            Defaults to None.
        y_test: labels of ``x_test``. Defaults to None.
        test_fraction: fraction held out for test when ``x_test`` is None. Defaults to 0.2.
        val_fraction: fraction of the remaining training data held out for validation.
            Defaults to 0.1.
        seed: seed of the splits. Defaults to 0.
        name: the dataset's name in reports. Defaults to "arrays".

    Returns:
        A `Dataset`.

    Raises:
        DataError: unusable arrays, in one line naming the array and the fix, e.g.
            ``y looks one-hot (shape (200, 4)): pass integer labels, e.g. y.argmax(1)``.
    """
    return _from_arrays(
        (x, y),
        None if x_test is None and y_test is None else (x_test, y_test),
        names=("x", "y", "x_test", "y_test"),
        test_fraction=test_fraction,
        val_fraction=val_fraction,
        seed=seed,
        name=name,
    )


def _from_arrays(train, test, *, names, test_fraction, val_fraction, seed, name) -> Dataset:
    """`from_arrays` with the arrays' names for errors (the ``.npz`` keys)."""
    if test is not None:
        if test[0] is None or test[1] is None:
            raise ValueError("Pass both x_test and y_test, or neither.")
        check_splits({names[:2]: train, names[2:]: test})
        (x, y), (x_test, y_test) = train, test
    else:
        x, y = check_pair(*train, names[:2])
        x, y, x_test, y_test = _split(x, y, test_fraction, seed)
    return _finish(name, x, y, x_test, y_test, val_fraction=val_fraction, seed=seed)


_NPZ_LAYOUTS = (("x_train", "y_train", "x_test", "y_test"), ("x", "y"))


def _npz_array(f, key: str, path: Path) -> np.ndarray:
    try:
        return f[key]
    except ValueError as e:  # an object array needs pickle, which tfopt never loads
        if "allow_pickle" not in str(e):
            raise
        raise DataError(
            f"{path.name}: {key} holds Python objects (a pickled array), not numbers; save it "
            f"as a numeric array, e.g. np.asarray({key}, dtype='float32')"
        ) from None


def from_npz(path, *, val_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """Loads a `.npz` file with arrays ``x_train, y_train, x_test, y_test`` (or ``x, y``).

    Args:
        path: the file.
        val_fraction: fraction of the training data held out for validation. Defaults to 0.1.
        seed: seed of the splits. Defaults to 0.

    Returns:
        A `Dataset` named after the file.

    Raises:
        DataError: an unreadable file, or arrays `from_arrays` refuses; the line starts with the
            file's name and names the key, e.g. ``d.npz: x_train holds NaN or infinite values
            in 1 of 40 samples (the first is sample 5); ...``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No such .npz file: {str(path)!r}")
    if path.is_dir() or path.stat().st_size == 0:
        what = "a directory" if path.is_dir() else "empty (0 bytes)"
        raise DataError(f"{str(path)!r} is {what}, not a .npz file of arrays")
    try:
        f = np.load(path, allow_pickle=False)
    except Exception as e:  # a truncated zip, pickled objects, another file type
        text = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DataError(f"cannot read {str(path)!r} as a .npz file of arrays: {text}") from None
    if not hasattr(f, "files"):  # np.load of a plain .npy file returns the array
        raise DataError(f"{str(path)!r} is a single .npy array, not a .npz file of named arrays")
    with f:
        keys = set(f.files)
        names = next((n for n in _NPZ_LAYOUTS if set(n) <= keys), None)
        if names is not None:
            arrays = [_npz_array(f, k, path) for k in names]
            test = (arrays[2], arrays[3]) if len(names) == 4 else None
            try:
                return _from_arrays(
                    (arrays[0], arrays[1]),
                    test,
                    names=names,
                    test_fraction=0.2,
                    val_fraction=val_fraction,
                    seed=seed,
                    name=path.stem,
                )
            except DataError as e:  # name the file: a run may load several
                raise DataError(f"{path.name}: {e}") from None
    raise ValueError(
        f"{str(path)!r} must contain arrays x_train, y_train, x_test, y_test (or x, y). "
        f"Found: {sorted(keys)}"
    )


def from_tf_dataset(
    train,
    *,
    test=None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    max_examples: int = 1_000_000,
    name: str = "tf.data",
) -> Dataset:
    """Materializes an unbatched or batched ``tf.data.Dataset`` of ``(x, y)`` into a `Dataset`.

    Args:
        train: a ``tf.data.Dataset`` yielding ``(features, label)``.
        test: an optional test ``tf.data.Dataset``; when omitted ``test_fraction`` of ``train`` is
            held out. Defaults to None.
        val_fraction: fraction held out for validation. Defaults to 0.1.
        test_fraction: see ``test``. Defaults to 0.2.
        seed: seed of the splits. Defaults to 0.
        max_examples: stop reading after this many examples (the data is held in memory).
            Defaults to 1_000_000.
        name: the dataset's name in reports. Defaults to "tf.data".

    Returns:
        A `Dataset`.
    """

    def to_numpy(ds):
        xs, ys, n = [], [], 0
        batched = len(ds.element_spec[0].shape) > 0 and ds.element_spec[0].shape[0] is None
        for xb, yb in ds.as_numpy_iterator():
            xb, yb = (xb, yb) if batched else (xb[None], np.asarray(yb)[None])
            xs.append(xb)
            ys.append(yb)
            n += len(xb)
            if n >= max_examples:
                break
        if not xs:
            raise ValueError("The tf.data.Dataset is empty.")
        return np.concatenate(xs)[:max_examples], np.concatenate(ys)[:max_examples]

    spec = train.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2):
        raise ValueError(
            f"The tf.data.Dataset must yield (x, y) pairs. Received element_spec={spec}"
        )
    x, y = to_numpy(train)
    xt, yt = to_numpy(test) if test is not None else (None, None)
    return _from_arrays(
        (x, y),
        None if test is None else (xt, yt),
        names=("train's x", "train's y", "test's x", "test's y"),
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        name=name,
    )
