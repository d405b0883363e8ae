import atexit
import collections
import os
import shutil
import sys
import tempfile
import time

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


@pytest.fixture
def progress():
    """The progress lines the library logs on the ``tfopt`` loggers during the test (a list)."""
    from _progress import progress_lines

    with progress_lines() as lines:
        yield lines


@pytest.fixture(scope="session")
def mnist1d():
    import tfopt

    return tfopt.data.load("mnist1d")


@pytest.fixture(scope="session")
def blobs():
    """``blobs(n, seed) -> (x, y)``: 10 well-separated classes shaped like MNIST-1D (40, 1) that a
    tiny model learns in a few epochs; the class centres are the same for every seed."""

    def make(n: int, seed: int):
        rng = np.random.default_rng(seed)
        centers = np.random.default_rng(123).normal(size=(10, 40, 1)).astype("float32") * 2
        y = rng.integers(0, 10, size=n).astype("int32")
        return centers[y] + 0.5 * rng.normal(size=(n, 40, 1)).astype("float32"), y

    return make


@pytest.fixture
def tiny_data():
    """64 random samples shaped like MNIST-1D, 10 classes."""
    from _helpers import random_mnist1d

    return random_mnist1d(64)


@pytest.fixture(scope="module")
def identity():
    """A model whose logits are its inputs: Dense(3) with an identity kernel and no bias."""
    import keras

    inputs = keras.Input((3,), name="input")
    dense = keras.layers.Dense(3, use_bias=False, name="identity")
    model = keras.Model(inputs, dense(inputs), name="identity")
    dense.set_weights([np.eye(3, dtype="float32")])
    return model


@pytest.fixture(scope="module")
def labelled():
    """40 samples of 3 features for ``identity``, whose top logit leads the next by >= 0.5 (int8
    steps here are ~0.03, so every int8 kernel picks the same class); the labels are right for
    exactly 30 of them (0.75)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, size=(40, 3)).astype("float32")
    top = rng.integers(0, 3, size=40)
    x[np.arange(40), top] = x.max(-1) + 0.5
    y = top.copy()
    y[:10] = (y[:10] + 1) % 3
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


class FileProgress:
    """One line per finished test file, with its outcomes and the time so far.

    ``-q`` prints only dots, and with ``-n 2`` pytest's own percentages come a few times an hour
    on 2 cores. This runs where results arrive (xdist's controller, or the only process).
    """

    def __init__(self, terminal):
        self.terminal, self.started = terminal, time.monotonic()
        self.left: dict[str, int] = {}
        self.outcomes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.done = 0

    def expect(self, nodeids) -> None:
        if not self.left:  # every xdist worker collects the same ids
            self.left = collections.Counter(i.split("::")[0] for i in nodeids)

    def pytest_collection_finish(self, session) -> None:
        self.expect(item.nodeid for item in session.items)

    def pytest_xdist_node_collection_finished(self, node, ids) -> None:
        self.expect(ids)

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report) -> None:
        path = report.nodeid.split("::")[0]
        if hasattr(report, "wasxfail"):
            self.outcomes[path]["xfailed" if report.skipped else "xpassed"] += 1
        elif report.skipped or (report.when == "call" and report.passed):
            self.outcomes[path][report.outcome] += 1
        elif report.failed:  # a failing fixture is an error, as pytest counts it
            self.outcomes[path]["failed" if report.when == "call" else "error"] += 1
        if report.when != "teardown" or path not in self.left:
            return
        self.left[path] -= 1
        if self.left[path] == 0:
            self.done += 1
            outcomes = sorted(self.outcomes.pop(path, {}).items())  # none under --setup-plan
            counts = ", ".join(f"{n} {o}" for o, n in outcomes) or "set up and torn down"
            minutes, seconds = divmod(int(time.monotonic() - self.started), 60)
            if self.terminal._tw.width_of_current_line:  # after a row of dots
                self.terminal.write("\n")
            self.terminal.write_line(
                f"{path}: {counts}  [{self.done}/{len(self.left)} files, {minutes}:{seconds:02d}]"
            )


@pytest.hookimpl(trylast=True)  # after pytest has registered its terminal reporter
def pytest_configure(config):
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    if terminal is not None and not hasattr(config, "workerinput"):  # not in an xdist worker
        config.pluginmanager.register(FileProgress(terminal), "tfopt-file-progress")
