"""Checks that tfopt runs on Keras 3 with the TensorFlow backend.

The cheap checks (environment variables) run at ``import tfopt`` so that a wrong setup fails before
TensorFlow is imported; the full check runs the first time a tfopt module imports Keras.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings

from tfopt.errors import BackendError

_TRUTHY = {"1", "true", "yes", "on"}
# lines of captured TensorFlow output attached to an exception raised inside `quiet()`
_NOTE_LINES = 40


def check_environment() -> None:
    """Raises `BackendError` if the environment selects a backend tfopt cannot use."""
    backend = os.environ.get("KERAS_BACKEND")
    if backend and backend != "tensorflow":
        raise BackendError(
            f"tfopt needs Keras 3 with the TensorFlow backend, but KERAS_BACKEND={backend!r}. "
            "Unset it or set KERAS_BACKEND=tensorflow before importing keras."
        )
    legacy = os.environ.get("TF_USE_LEGACY_KERAS", "")
    if legacy.lower() in _TRUTHY:
        raise BackendError(
            f"TF_USE_LEGACY_KERAS={legacy!r} is set (tensorflow_model_optimization sets it when "
            "imported), so tf.keras would be Keras 2. tfopt needs Keras 3: unset "
            "TF_USE_LEGACY_KERAS and do not import tensorflow_model_optimization in this process."
        )
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "backend") and hasattr(keras.backend, "backend"):
        _check_keras(keras)


def _check_keras(keras) -> None:
    version = getattr(keras, "__version__", "0")
    if int(version.split(".")[0]) < 3:
        raise BackendError(
            f"tfopt needs Keras 3, found keras=={version}. pip install 'keras>=3.15'"
        )
    if keras.backend.backend() != "tensorflow":
        raise BackendError(
            f"tfopt needs the TensorFlow backend, but Keras uses {keras.backend.backend()!r} "
            "(from KERAS_BACKEND or ~/.keras/keras.json). Set KERAS_BACKEND=tensorflow."
        )


def import_keras():
    """Imports Keras 3 (quietly), checks the backend and returns the module."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    check_environment()
    if "keras" in sys.modules:
        import keras
    else:
        with quiet():  # TensorFlow's C++ start-up chatter (oneDNN, CUDA) ignores the log level
            import keras
        from tfopt._litert_log import silence_xnnpack_banner

        silence_xnnpack_banner()  # LiteRT's one "INFO: Created ... XNNPACK delegate" line

    _check_keras(keras)
    return keras


def check_model(model, arg: str = "model"):
    """Raises a clear `TypeError` unless ``model`` is a Keras 3 model."""
    keras = import_keras()
    if isinstance(model, keras.Model):
        return model
    module = type(model).__module__
    if module.startswith(("tf_keras", "keras.src.legacy", "tensorflow.python.keras")):
        raise TypeError(
            f"`{arg}` is a Keras 2 (tf_keras) model ({module}.{type(model).__name__}); tfopt needs "
            "a Keras 3 model. Rebuild it with `import keras` (Keras 3), or save it as .keras/.h5 "
            "weights and load them into a Keras 3 model."
        )
    raise TypeError(
        f"`{arg}` must be a keras.Model (Keras 3). Received: {arg}={type(model).__name__} "
        f"from module {module}"
    )


@contextlib.contextmanager
def quiet():
    """Silences TensorFlow's chatter: C++ logs (file descriptors 1 and 2), Python prints ("Saved
    artifact at ..."), the tensorflow/absl/tf2onnx loggers and UserWarnings.

    The chatter is captured, not thrown away: when the block raises, its last lines are attached to
    the exception as a note (the converter's C++ diagnostics are often the only clue), and the
    exception propagates after the streams are restored."""
    loggers = [logging.getLogger(name) for name in ("tensorflow", "absl", "tf2onnx")]
    levels = [lg.level for lg in loggers]
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    captured = tempfile.TemporaryFile()
    py_out, py_err = io.StringIO(), io.StringIO()
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        os.dup2(captured.fileno(), 1)
        os.dup2(captured.fileno(), 2)
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(py_out),
            contextlib.redirect_stderr(py_err),
        ):
            warnings.simplefilter("ignore", UserWarning)
            yield
    except BaseException as e:
        sys.stdout.flush()
        sys.stderr.flush()
        captured.seek(0)
        text = captured.read().decode(errors="replace") + py_out.getvalue() + py_err.getvalue()
        tail = "\n".join(text.strip().splitlines()[-_NOTE_LINES:])
        if tail:
            e.add_note(f"output while it ran (last {_NOTE_LINES} lines at most):\n{tail}")
        raise
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        captured.close()
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
