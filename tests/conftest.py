import atexit
import os
import shutil
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TFOPT_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".cache"))
# Keras reads KERAS_HOME once, when it is imported: set it before any test (or a notebook kernel or
# a subprocess, which inherit it) imports Keras, so that no test sees what ~/.keras holds.
# Each xdist worker loads this file itself, before it collects a test module.
os.environ["KERAS_HOME"] = tempfile.mkdtemp(prefix="tfopt-tests-keras-")

import numpy as np
import pytest

atexit.register(shutil.rmtree, os.environ["KERAS_HOME"], True)


@pytest.fixture(autouse=True)
def _seed():
    import keras

    keras.utils.set_random_seed(0)
    yield


@pytest.fixture(autouse=True)
def _keras_home(monkeypatch, tmp_path_factory):
    """Each test gets its own, empty Keras cache (keras.utils.get_file, keras.datasets)."""
    import keras  # noqa: F401 - so that its config module below is the one tests use

    home = str(tmp_path_factory.mktemp("keras_home"))
    monkeypatch.setenv("KERAS_HOME", home)  # for the test's subprocesses
    config = sys.modules.get("keras.src.backend.config")
    if config is not None and hasattr(config, "_KERAS_DIR"):  # read once, at import
        monkeypatch.setattr(config, "_KERAS_DIR", home)
    yield home


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


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session):
    """Collects the session's garbage now, while xdist's controller still waits for this worker.

    After a worker reports "finished", execnet gives it 5 s to end and then sends it SIGINT.
    pytest's last clean-up runs five full garbage collections; over TensorFlow's heap on a loaded
    machine they take longer, and the SIGINT landed in a finalizer as a stray
    ``PytestUnraisableExceptionWarning ... KeyboardInterrupt``. Collected here and frozen, the
    heap costs those collections nothing.
    """
    import gc

    gc.collect()
    gc.freeze()
