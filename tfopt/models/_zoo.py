from __future__ import annotations

import difflib
import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path

from tfopt._backend import import_keras
from tfopt.models._fashion import FASHION_MODELS
from tfopt.models._tiny import TINY_MODELS

keras = import_keras()
layers = keras.layers


def _regularizer(l2: float):
    return keras.regularizers.L2(l2) if l2 else None


def mnist1d_cnn(
    input_shape=(40, 1),
    num_classes=10,
    *,
    width: int = 32,
    dense: int = 128,
    dropout: float = 0.0,
    l2: float = 0.0,
    depth: int = 3,
) -> keras.Model:
    """The MNIST-1D CNN: ``depth`` (3) Conv1D(width, 5) (all but the first with stride 2),
    Dense(dense), Dense(classes)."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1. Received: depth={depth}")
    reg = _regularizer(l2)
    conv = dict(kernel_size=5, padding="same", activation="relu", kernel_regularizer=reg)
    inputs = keras.Input(input_shape, name="input")
    x = layers.Conv1D(width, **conv, name="conv1")(inputs)
    for i in range(2, depth + 1):
        x = layers.Conv1D(width, strides=2, **conv, name=f"conv{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(dense, activation="relu", kernel_regularizer=reg, name="fc1")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(num_classes, kernel_regularizer=reg, name="logits")(x)
    return keras.Model(inputs, outputs, name="mnist1d_cnn")


def mnist1d_cnn2d(
    input_shape=(40, 1),
    num_classes=10,
    *,
    width: int = 32,
    dense: int = 128,
    dropout: float = 0.0,
    l2: float = 0.0,
) -> keras.Model:
    """`mnist1d_cnn` written with Conv2D(5x1) kernels (the form tfmot's QAT accepts)."""
    reg = _regularizer(l2)
    conv = dict(kernel_size=(5, 1), padding="same", activation="relu", kernel_regularizer=reg)
    inputs = keras.Input(input_shape, name="input")
    x = layers.Reshape((input_shape[0], 1, input_shape[1]), name="to_2d")(inputs)
    x = layers.Conv2D(width, **conv, name="conv1")(x)
    x = layers.Conv2D(width, strides=(2, 1), **conv, name="conv2")(x)
    x = layers.Conv2D(width, strides=(2, 1), **conv, name="conv3")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(dense, activation="relu", kernel_regularizer=reg, name="fc1")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(num_classes, kernel_regularizer=reg, name="logits")(x)
    return keras.Model(inputs, outputs, name="mnist1d_cnn2d")


def mnist1d_resnet(
    input_shape=(40, 1), num_classes=10, *, width: int = 64, blocks: int = 2, l2: float = 0.0
) -> keras.Model:
    """A small residual Conv1D network with BatchNorm: stem, `blocks` stages of 2 basic blocks."""
    reg = _regularizer(l2)

    def conv_bn(x, filters, kernel, strides, name, relu=True):
        x = layers.Conv1D(
            filters,
            kernel,
            strides=strides,
            padding="same",
            use_bias=False,
            kernel_regularizer=reg,
            name=f"{name}_conv",
        )(x)
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
        return layers.ReLU(name=f"{name}_relu")(x) if relu else x

    inputs = keras.Input(input_shape, name="input")
    x = conv_bn(inputs, width, 5, 1, "stem")
    filters = width
    for stage in range(blocks):
        for block in range(2):
            strides = 2 if (stage > 0 and block == 0) else 1
            if stage > 0 and block == 0:
                filters *= 2
            name = f"s{stage + 1}b{block + 1}"
            shortcut = x
            if strides != 1 or shortcut.shape[-1] != filters:
                shortcut = conv_bn(x, filters, 1, strides, f"{name}_proj", relu=False)
            y = conv_bn(x, filters, 3, strides, f"{name}_a")
            y = conv_bn(y, filters, 3, 1, f"{name}_b", relu=False)
            x = layers.Add(name=f"{name}_add")([shortcut, y])
            x = layers.ReLU(name=f"{name}_out")(x)
    x = layers.GlobalAveragePooling1D(name="pool")(x)
    outputs = layers.Dense(num_classes, kernel_regularizer=reg, name="logits")(x)
    return keras.Model(inputs, outputs, name="mnist1d_resnet")


def digits_cnn(
    input_shape=(8, 8, 1),
    num_classes=10,
    *,
    width: int = 16,
    dense: int = 64,
    dropout: float = 0.0,
    l2: float = 0.0,
) -> keras.Model:
    """A small Conv2D network for scikit-learn's 8x8 digits."""
    reg = _regularizer(l2)
    inputs = keras.Input(input_shape, name="input")
    x = layers.Conv2D(
        width, 3, padding="same", activation="relu", kernel_regularizer=reg, name="conv1"
    )(inputs)
    x = layers.Conv2D(
        2 * width,
        3,
        strides=2,
        padding="same",
        activation="relu",
        kernel_regularizer=reg,
        name="conv2",
    )(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(dense, activation="relu", kernel_regularizer=reg, name="fc1")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(num_classes, kernel_regularizer=reg, name="logits")(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


MODELS: dict[str, Callable[..., keras.Model]] = {
    "mnist1d_cnn": mnist1d_cnn,
    "mnist1d_cnn2d": mnist1d_cnn2d,
    "mnist1d_resnet": mnist1d_resnet,
    "digits_cnn": digits_cnn,
    **TINY_MODELS,  # MLPerf Tiny's reference architectures (tfopt/models/_tiny.py)
    **FASHION_MODELS,  # Fashion-MNIST's reference models (tfopt/models/_fashion.py)
}


def _register_cnn_families() -> None:
    from tfopt.models._cnn import CNN_FAMILIES

    MODELS.update(CNN_FAMILIES)


_register_cnn_families()


def get(name: str, *, input_shape=None, num_classes: int | None = None, **kwargs) -> keras.Model:
    """Builds a reference model by name (a new, untrained model each call).

    Args:
        name: one of `MODELS`.
        input_shape: input shape without the batch dimension. Defaults to the model's own.
        num_classes: number of output logits. Defaults to 10.
        **kwargs: the builder's options (``width``, ``dense``, ``dropout``, ``l2``, ...).

    Returns:
        An uncompiled ``keras.Model`` that outputs logits (the ``*_32`` image CNNs: softmax).

    Raises:
        ValueError: for an unknown name.
    """
    if name not in MODELS:
        hint = difflib.get_close_matches(str(name), MODELS, n=1)
        did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
        raise ValueError(f"Unknown model {name!r}.{did_you_mean} Known models: {sorted(MODELS)}")
    args = {}
    if input_shape is not None:
        args["input_shape"] = tuple(input_shape)
    if num_classes is not None:
        args["num_classes"] = int(num_classes)
    return MODELS[name](**args, **kwargs)


# Modules that register tfopt's custom layers with Keras; imported before loading a .keras file.
_CUSTOM_OBJECT_MODULES = ("tfopt.prune", "tfopt.quantize", "tfopt.cluster", "tfopt.distill")


def register_custom_objects() -> None:
    """Imports tfopt's layer modules so `keras.models.load_model` knows their classes."""
    for module in _CUSTOM_OBJECT_MODULES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)


_H5_SUFFIXES = (".h5", ".hdf5")

_CONVERT_H5 = (
    "Keras 3 reads the legacy .h5 format only for models whose layers it still has. To convert a "
    "Keras 2 model: in an environment with tf_keras (or TensorFlow <= 2.15), load it with "
    "tf_keras.models.load_model(path) and export a SavedModel (model.export('dir')), or rebuild "
    "the architecture in Keras 3 and load the weights with model.load_weights(path); then save "
    "it with model.save('model.keras')"
)


def _load_error_reason(e: Exception) -> str:
    """The cause of a Keras loading error on one line: Keras wraps the real one ("Could not
    locate class 'Net' ...") after "Exception encountered:" and a page of config."""
    text = str(e)
    if "Exception encountered:" in text:
        text = text.rsplit("Exception encountered:", 1)[1]
    text = text.split("Full object config", 1)[0]
    text = " ".join(text.split()).rstrip(" .") or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def load(path, *, compile: bool = False) -> keras.Model:
    """Loads a user's ``.keras`` model file with ``safe_mode=True`` (no arbitrary code).

    A legacy ``.h5`` / ``.hdf5`` model (saved by Keras 2, i.e. tf_keras, or by Keras 3's
    ``model.save("m.h5")``) loads too where its layers exist in Keras 3; otherwise the error says
    how to convert it.

    Args:
        path: the ``.keras`` (or legacy ``.h5``) file.
        compile: restore the saved compile state too. Defaults to False.

    Returns:
        The ``keras.Model``; models holding tfopt wrappers (pruning, QAT, clustering) load too.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is neither a ``.keras`` nor an ``.h5`` file.
        ArtifactError: the file cannot be read as a Keras model (empty, corrupt, a weights-only
            ``.h5``, layers Keras 3 lacks); the message says why, and for ``.h5`` how to convert.
    """
    from tfopt.errors import ArtifactError

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No such model file: {str(path)!r}")
    h5 = path.suffix.lower() in _H5_SUFFIXES
    if path.suffix != ".keras" and not h5:
        raise ValueError(
            f"tfopt loads Keras 3 '.keras' files (or legacy '.h5'). Received: {str(path)!r}. "
            "Re-save the model with model.save('model.keras')."
        )
    if path.is_dir() or path.stat().st_size == 0:
        what = "a directory" if path.is_dir() else "empty (0 bytes)"
        raise ArtifactError(f"{str(path)!r} is {what}: not a Keras model file")
    _check_keras_archive(path)
    register_custom_objects()
    try:
        model = keras.models.load_model(path, compile=compile, safe_mode=True)
    except Exception as e:  # zipfile, h5py, JSON and deserialization errors alike
        reason = _load_error_reason(e)
        hint = f". {_CONVERT_H5}" if h5 else ""
        raise ArtifactError(
            f"cannot load {str(path)!r} as a Keras 3 model: {reason}{hint}"
        ) from None
    if not isinstance(model, keras.Model):
        raise ArtifactError(f"{str(path)!r} holds a {type(model).__name__}, not a keras.Model")
    return model


def _check_keras_archive(path: Path) -> None:
    """Raises `ArtifactError` when the ``.keras`` file exists but is no Keras archive (Keras
    itself says "File not found" then), e.g. a truncated download or another format renamed."""
    import zipfile

    from tfopt.errors import ArtifactError

    if path.suffix != ".keras":
        return
    problem = None
    if path.is_dir():
        problem = "it is a directory"
    elif not zipfile.is_zipfile(path):
        problem = (
            f"it is not a zip archive ({path.stat().st_size} bytes; truncated or another format)"
        )
    else:
        try:
            with zipfile.ZipFile(path) as z:
                names = set(z.namelist())
                bad = z.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            names, bad, problem = set(), None, f"its zip archive is damaged ({e})"
        if problem is None and bad is not None:
            problem = f"its zip archive is damaged ({bad!r} fails its CRC check)"
        elif problem is None and "config.json" not in names:
            problem = "the zip archive holds no config.json"
    if problem:
        raise ArtifactError(
            f"cannot load {str(path)!r} as a Keras 3 model: not a valid .keras file, {problem}. "
            "Save the model again with model.save('model.keras')."
        )
