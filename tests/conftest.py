import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TFOPT_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".cache"))

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _seed():
    import keras

    keras.utils.set_random_seed(0)
    yield


@pytest.fixture(scope="session")
def mnist1d():
    import tfopt

    return tfopt.data.load("mnist1d")


@pytest.fixture
def tiny_data():
    """64 random samples shaped like MNIST-1D, 10 classes."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 40, 1)).astype("float32")
    y = rng.integers(0, 10, size=64).astype("int32")
    return x, y
