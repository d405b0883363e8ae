"""What every export shares: the `Artifact` it returns and the parity check against Keras."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tfopt import _formats as formats
from tfopt.errors import ExportCheckError

# Parity tolerances by format: (minimum argmax agreement with the Keras model, maximum absolute
# difference of the outputs as a fraction of the largest Keras output magnitude, or None when
# quantization makes a raw difference meaningless and only the agreement is checked). A view of
# the formats table (`tfopt._formats`).
TOLERANCES: dict[str, tuple[float, float | None]] = formats.tolerances()


@dataclass
class Artifact:
    """An exported file (or directory) and the result of checking it against the Keras model.

    Attributes:
        path: the file or directory written.
        format: the export format, e.g. ``"tflite-int8"`` or ``"onnx"``.
        bytes: total size on disk.
        check: the parity check: samples, max/mean abs diff, argmax agreement, limits, passed.
        info: format-specific facts (input/output names and shapes, opset, files written, ...).
    """

    path: Path
    format: str
    bytes: int
    check: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        return d

    def write_json(self, path) -> Path:
        """Writes `to_dict()` as JSON to ``path`` and returns the path."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        return path


def disk_bytes(path) -> int:
    """Size of a file, or the summed size of the files under a directory."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def graph_model(model):
    """``model`` as a functional model with known inputs (exporters read ``model.inputs``).

    A subclassed model (also one loaded from ``.keras``, whose input shapes the TFLite converter
    cannot see) is called on a ``keras.Input`` of the shape it was built with.
    """
    from tfopt._backend import import_keras
    from tfopt._rewrite import is_graph_model

    keras = import_keras()
    if is_graph_model(model):
        return model
    config = model.get_build_config() if model.built else None
    shape = (config or {}).get("input_shape")
    if shape is None:
        raise ValueError(
            f"Cannot export the subclassed model {model.name!r} ({type(model).__name__}): it is "
            "not built, so its input shape is unknown. Call it on a batch first."
        )
    dtype = getattr(model, "input_dtype", None) or "float32"
    inputs = keras.Input(batch_shape=(None, *shape[1:]), dtype=dtype, name="input")
    return keras.Model(inputs, model(inputs), name=model.name.lstrip("_") or "model")


def float32_copy(model):
    """A float32 copy of a mixed-precision model (TFLite has no float16 Conv/MatMul kernels), or
    ``model`` itself when it computes in float32 already."""
    from tfopt._rewrite import copy_layer, rewrite

    def low(layer) -> bool:
        return getattr(layer, "compute_dtype", "float32") in ("float16", "bfloat16")

    if not any(low(layer) for layer in model._flatten_layers(include_self=False)):
        return model

    def replace(layer):
        if not low(layer):
            return None
        return copy_layer(layer, {**layer.get_config(), "dtype": "float32"})

    def finish(layer, new):
        new.set_weights(layer.get_weights())

    return rewrite(model, replace, finish=finish, action="float32 export")


def single_input(model, fmt: str):
    """Returns the model's only input tensor, or raises a clear error for multi-input models."""
    inputs = model.inputs
    if len(inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(
            f"format={fmt!r} export supports models with one input and one output. Received: "
            f"a model with {len(inputs)} inputs and {len(model.outputs)} outputs."
        )
    return inputs[0]


def input_name(model) -> str:
    """A stable name for the model's input (the InputLayer's name), usable as a tensor name."""
    tensor = model.inputs[0]
    history = getattr(tensor, "_keras_history", None)
    name = getattr(getattr(history, "operation", None), "name", None) or "input"
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)


def samples(model, data, arg: str, *, dtype=None) -> np.ndarray:
    """``data`` (``x`` or ``(x, y)``) as an array of the model's inputs, checked.

    Raises:
        DataError: no samples, or a sample shape that is not the model's input shape (one line
            with both shapes).
    """
    from tfopt.errors import DataError

    x = data[0] if isinstance(data, tuple) else data
    try:
        x = np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise DataError(f"{arg} must be an array of model inputs ({e})") from None
    expected = tuple(model.input_shape[1:])
    if x.ndim == 0 or len(x) == 0:
        raise DataError(
            f"{arg} holds no samples; it needs at least 1 input of shape {expected} "
            f"(a few hundred training inputs for calibration). Received shape {x.shape}"
        )
    got = tuple(x.shape[1:])
    if len(got) != len(expected) or any(e is not None and e != g for e, g in zip(expected, got)):
        raise DataError(
            f"{arg}: expected samples of shape {expected} (the model's input without the batch "
            f"dimension), received samples of shape {got}"
        )
    return x


def check_inputs(model, check_data=None, fallback=None, *, limit: int = 256) -> np.ndarray:
    """The inputs of the parity check: ``check_data``, else ``fallback``, else 64 random normals."""
    data = check_data if check_data is not None else fallback
    dtype = np.dtype(getattr(model.inputs[0], "dtype", "float32") or "float32")
    if data is None:
        shape = (64, *model.input_shape[1:])
        rng = np.random.default_rng(0)
        if dtype.kind in "iu":  # token ids: small non-negative integers fit every vocabulary
            return rng.integers(0, 2, size=shape).astype(dtype)
        return rng.normal(size=shape).astype(dtype)
    arg = "check_data" if check_data is not None else "representative_data"
    return samples(model, data, arg, dtype=dtype)[:limit]


def check_against_keras(
    model, runner, x, *, min_agreement: float, max_abs_diff: float | None = None
) -> dict:
    """Compares an artifact's outputs with the Keras model's on ``x``; returns the measurements.

    Args:
        model: the Keras model the artifact was exported from.
        runner: an object with ``predict(x) -> np.ndarray`` running the artifact.
        x: check inputs.
        min_agreement: the lowest acceptable fraction of inputs with the same argmax.
        max_abs_diff: the largest acceptable absolute output difference, as a fraction of the
            largest absolute Keras output (floored at 1). Defaults to None (not checked).

    Returns:
        A dict: samples, max_abs_diff, mean_abs_diff, argmax_agreement, min_agreement,
        max_abs_diff_limit (absolute, or None), passed.
    """
    expected = np.asarray(model.predict(x, verbose=0, batch_size=256), dtype="float32")
    got = np.asarray(runner.predict(x), dtype="float32").reshape(expected.shape)
    diff = np.abs(expected - got)
    agreement = float(np.mean(expected.argmax(-1) == got.argmax(-1)))
    limit = None
    if max_abs_diff is not None:
        limit = float(max_abs_diff * max(1.0, float(np.abs(expected).max())))
    passed = agreement >= min_agreement and (limit is None or float(diff.max()) <= limit)
    return {
        "samples": len(x),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "argmax_agreement": agreement,
        "min_agreement": float(min_agreement),
        "max_abs_diff_limit": limit,
        "passed": bool(passed),
    }


def is_qat(model) -> bool:
    """True if the model holds tfopt QAT layers (fake-quantized weights or activations)."""
    return any(
        type(layer).__module__.startswith("tfopt.quantize") for layer in model._flatten_layers()
    )


def verify(
    model,
    runner,
    x,
    *,
    fmt: str,
    path,
    min_agreement: float | None = None,
    atol: float | None = None,
) -> dict:
    """Runs `check_against_keras` with the format's tolerances and raises if it fails.

    Raises:
        ExportCheckError: the artifact disagrees with the Keras model beyond the tolerance.
    """
    default_agreement, default_atol = TOLERANCES[fmt]
    if is_qat(model) and fmt in ("onnx", "tensorrt-fp32", "tensorrt-fp16"):
        # fake-quant becomes QuantizeLinear/DequantizeLinear, which rounds half to even where
        # TensorFlow rounds half up: an int8-sized difference, so int8's tolerance applies
        default_agreement, default_atol = TOLERANCES["tflite-int8"]
    min_agreement = default_agreement if min_agreement is None else float(min_agreement)
    atol = default_atol if atol is None else float(atol)
    if not 0.0 <= min_agreement <= 1.0:
        raise ValueError(
            f"min_agreement must be in [0, 1]. Received: min_agreement={min_agreement}"
        )
    if atol is not None and atol < 0:
        raise ValueError(f"atol must be >= 0. Received: atol={atol}")
    check = check_against_keras(model, runner, x, min_agreement=min_agreement, max_abs_diff=atol)
    check["format"] = fmt
    if not check["passed"]:
        limit = check["max_abs_diff_limit"]
        diff_rule = "" if limit is None else f" and a max abs diff of at most {limit:.3g}"
        raise ExportCheckError(
            f"{Path(path).name} ({fmt}) disagrees with the Keras model: argmax agreement "
            f"{check['argmax_agreement']:.1%} on {check['samples']} inputs, max abs diff "
            f"{check['max_abs_diff']:.3g}; the check needs an agreement of at least "
            f"{min_agreement:.1%}{diff_rule}. Lower min_agreement= (or raise atol=) to accept it."
        )
    return check
