"""Plain helpers that several test files share: small data sets, a classifier's compile, a saved
tiny model, a child process's environment. Fixtures are in ``conftest.py``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def compile_classifier(model, lr: float):
    """``model`` compiled for integer labels and logits: Adam(lr), accuracy."""
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def random_mnist1d(n: int, seed: int = 0):
    """``n`` random samples shaped like MNIST-1D (40, 1) with random labels of 10 classes."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 40, 1)).astype("float32")
    y = rng.integers(0, 10, size=n).astype("int32")
    return x, y


def signal_data(n: int = 384, length: int = 24, classes: int = 4, seed: int = 0):
    """Class k = a bump at position 5k + noise: learnable by a small Conv1D in a few epochs."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n).astype("int32")
    t = np.arange(length)
    x = np.exp(-0.5 * ((t[None] - (4 + 5 * y[:, None])) / 1.5) ** 2)
    x = x + 0.3 * rng.normal(size=x.shape)
    return x[..., None].astype("float32"), y


def random_npz(path: Path, train: int, test: int) -> Path:
    """A ``.npz`` of random MNIST-1D-shaped train and test arrays (seed 0) at ``path``."""
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.normal(size=(train, 40, 1)).astype("float32"),
        "y_train": rng.integers(0, 10, size=train),
        "x_test": rng.normal(size=(test, 40, 1)).astype("float32"),
        "y_test": rng.integers(0, 10, size=test),
    }
    np.savez(path, **arrays)
    return path


def shifted_npz(path: Path, classes: int = 3, seed: int = 0) -> Path:
    """A tiny 1-D task at ``path``: 150 samples (16, 1), class k shifted by 0.8 k; 120 train."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, 150)
    x = (rng.normal(size=(150, 16, 1)) + y[:, None, None] * 0.8).astype("float32")
    np.savez(path, x_train=x[:120], y_train=y[:120], x_test=x[120:], y_test=y[120:])
    return path


def save_dense_model(path: Path, input_shape=(6, 6, 1), outputs: int = 3) -> Path:
    """An untrained Flatten -> Dense(outputs) model saved as ``.keras`` at ``path``."""
    import keras

    model = keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Flatten(name="flatten"),  # named: a whole session's layers are numbered
            keras.layers.Dense(outputs, name="dense"),
        ],
        name="m",
    )
    model.save(path)
    return path


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child Python that imports this checkout's tfopt: TensorFlow's C++
    logs off, no inherited TF_CONFIG or KERASTUNER_* (a parent's cluster is not the child's),
    plus ``extra``."""
    env = {
        k: v for k, v in os.environ.items() if k != "TF_CONFIG" and not k.startswith("KERASTUNER_")
    }
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env.update(extra)
    return env
