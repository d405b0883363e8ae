"""TFLite export: float32, dynamic-range, float16, full int8 and int16x8, parity-checked."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from tfopt._backend import check_model, import_keras, quiet
from tfopt._rewrite import is_graph_model
from tfopt.export._common import (
    Artifact,
    check_against_keras,
    check_inputs,
    float32_copy,
    graph_model,
    is_qat,
    samples,
    single_input,
    verify,
)
from tfopt.export._export import check_output

keras = import_keras()

_logger = logging.getLogger(__name__)

QUANTIZATIONS = ("float32", "dynamic", "float16", "int8", "int16x8")

__all__ = ["QUANTIZATIONS", "Artifact", "check_against_keras", "tflite"]

_SELECT_TF_OPS = (
    "select_tf_ops=True to keep the TF ops (the runtime then needs the Flex delegate, which "
    "ai_edge_litert does not ship)"
)


def _tf_ops_hint(model, text: str) -> str:
    """What needs TensorFlow ops outside the TFLite builtins, named: the layer the converter's
    error points at, else the model's recurrent layers (their spec says ``recurrent``), and the
    options that convert it."""
    layer = _layer_in_error(text, model)
    if layer is not None:
        cls = type(model.get_layer(layer)).__name__ if _has_layer(model, layer) else "layer"
        what = f"layer {layer!r} ({cls}) lowers to TensorFlow ops outside the TFLite builtins"
    else:
        what = "the op above is outside the TFLite builtins"
    rnn = _recurrent_layers(model) if model is not None else []
    if rnn and (layer is None or layer in rnn or "TensorList" in text):
        return (
            f"The model needs TensorFlow ops outside the TFLite builtins (recurrent layers "
            f"{', '.join(map(repr, rnn))} lower to TensorList ops that need a static shape). Pass "
            "fixed_batch=1 to convert with a fixed input shape and builtin ops only (runs "
            f"anywhere; the batch size is fixed), or {_SELECT_TF_OPS}."
        )
    return (
        f"The model cannot run on TFLite builtins: {what}. Pass {_SELECT_TF_OPS}, or export onnx."
    )


def _has_layer(model, name: str) -> bool:
    return any(x.name == name for x in model._flatten_layers(include_self=False))


def _recurrent_layers(model) -> list[str]:
    """The outermost layers of ``model`` whose spec says ``recurrent`` (a Bidirectional, not also
    its two inner RNNs)."""
    from tfopt._layers import spec_of

    found, inner = [], set()
    for layer in model._flatten_layers(include_self=False):  # parents before their sublayers
        spec = spec_of(layer)
        if spec is not None and spec.recurrent and id(layer) not in inner:
            found.append(layer.name)
            inner |= {id(sub) for sub in layer._flatten_layers(include_self=False)}
    return found


def _representative(data, limit: int = 200, batch: int = 1, dtype="float32"):
    x = np.asarray(data[0] if isinstance(data, tuple) else data, dtype=dtype)[:limit]

    def gen():
        for i in range(0, len(x) - batch + 1, batch):
            yield [x[i : i + batch]]

    return gen


def _function_converter(model, batch: int | None):
    """A converter for the model's concrete function (``batch`` None: dynamic batch size);
    without a trackable object the converter freezes the variables into constants."""
    import tensorflow as tf

    spec = tf.TensorSpec((batch, *model.input_shape[1:]), model.inputs[0].dtype)
    fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    with quiet():  # absl warns that the path without trackable_obj (which freezes variables) is old
        return tf.lite.TFLiteConverter.from_concrete_functions([fn])


def _layer_in_error(text: str, model) -> str | None:
    """The name of the model's layer an MLIR location of ``text`` points at, if any.

    A location reads ``loc(callsite(fused["ConcatV2:", "functional_1/my_concat_1/concat@..."]``:
    the op's TF name scope holds the layer's name (with a ``_N`` suffix TensorFlow adds).
    """
    import re

    if model is None:
        return None
    names = {layer.name for layer in model._flatten_layers(include_self=False)}
    for scope in re.findall(r'fused\["[^"]*",\s*"([^"@]+)', text):
        for part in scope.split("/")[:-1]:
            for name in (part, re.sub(r"_\d+$", "", part)):
                if name in names:
                    return name
    return None


def _conversion_error(e: Exception, model=None) -> str:
    """The one meaningful line of a converter error (which is pages of MLIR locations), with
    the name of the layer it is about when the location names one."""
    line = _conversion_line(e)
    layer = _layer_in_error(str(e), model)
    return f"layer {layer!r}: {line}" if layer else line


def _conversion_line(e: Exception) -> str:
    parts = [ln.rsplit("error:", 1)[-1].strip() for ln in str(e).splitlines() if "error:" in ln]
    # TF 2.21 puts the op after an MLIR location: "loc(...): 'tf.Conv2D' op is neither ..."
    parts = [p[p.index("'tf") :] if p.startswith("loc(") and "'tf" in p else p for p in parts]
    parts = [p for p in parts if p and not p.startswith("loc(")]
    ops = [p for p in parts if p.startswith("'")]  # "'tf.X' op requires ..." names the culprit
    if parts:
        return (ops or parts)[0][:300]
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _convert(
    model,
    quantization: str,
    representative_data,
    int8_io: bool,
    select_tf_ops: bool,
    fixed_batch: int | None = None,
    subclassed: bool = False,
) -> bytes:
    import tensorflow as tf

    if fixed_batch:
        converter = _function_converter(model, fixed_batch)
    elif subclassed:  # from_keras_model fails on it ("input shapes have not been set", ...)
        converter = _function_converter(model, None)
    else:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
    builtins = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantization in ("int8", "int16x8") and representative_data is not None:
        converter.representative_dataset = _representative(
            representative_data, batch=fixed_batch or 1, dtype=model.inputs[0].dtype
        )
    if quantization == "int8" and not is_qat(model):
        builtins = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if quantization == "int16x8":
        builtins = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    if int8_io:
        converter.inference_input_type = tf.int8 if quantization == "int8" else tf.int16
        converter.inference_output_type = converter.inference_input_type
    if select_tf_ops:
        builtins = [*builtins, tf.lite.OpsSet.SELECT_TF_OPS]
    converter.target_spec.supported_ops = builtins
    try:
        with quiet():
            return converter.convert()
    except Exception as e:  # the converter raises ConverterError with pages of MLIR
        msg = _conversion_error(e, model)
        text = str(e)
        if not select_tf_ops and (
            "TensorList" in text or "Flex" in text or "not supported" in text
        ):
            hint = " " + _tf_ops_hint(model, text)
        elif not select_tf_ops:
            hint = (
                " If the model needs TF ops outside the TFLite builtins (e.g. RNNs), pass "
                "fixed_batch=1 or select_tf_ops=True."
            )
        else:
            hint = ""
        raise RuntimeError(f"TFLite conversion ({quantization}) failed: {msg}.{hint}") from None


class _ModelTransferError(Exception):
    """The worker could not rebuild the model (e.g. a custom layer only the caller knows)."""


def _crash_stage_and_hint(model, quantization: str, calibrating: bool) -> tuple[str, str]:
    """What a crash of the converter is called, and the known workaround."""
    stage = f"{quantization} calibration" if calibrating else f"TFLite conversion ({quantization})"
    stage = f"{stage} of model {model.name!r}"
    rnn = _recurrent_layers(model)
    if rnn and quantization in ("int8", "int16x8"):
        return stage, (
            f"Known for RNN layers ({', '.join(rnn)}): TFLite's calibrator crashes on them; "
            "export tflite-dynamic or tflite-float16 (no calibration) instead."
        )
    if quantization != "float32":
        return stage, "Try tflite-float16 or tflite-dynamic (no calibration), or onnx."
    return stage, "Try fixed_batch=1, or export onnx."


def _convert_with_fallback(
    model, quantization, representative_data, int8_io, select_tf_ops, fixed_batch, subclassed
) -> tuple[bytes, int | None]:
    """The converted flatbuffer and the batch size it was converted with.

    A dynamic batch that fails for want of a static shape (recurrent layers lower to TensorList
    ops that need one) is converted again with ``fixed_batch=1``, as the error would advise: every
    tfopt runtime feeds a fixed-batch file one batch at a time, so a GRU or LSTM model exports
    (and `tfopt auto` searches it) without the user knowing the converter's rule.
    """

    def convert(batch):
        with quiet():
            return convert_isolated(
                model,
                quantization,
                representative_data,
                int8_io,
                select_tf_ops,
                fixed_batch=batch,
                subclassed=subclassed,
            )

    try:
        return convert(fixed_batch), fixed_batch
    except RuntimeError as e:
        if fixed_batch is not None or select_tf_ops or "TensorList" not in str(e):
            raise
    _logger.debug(  # the artifact's info["fixed_batch"] records it
        "TFLite conversion (%s): a dynamic batch needs TensorFlow ops (TensorList); converting "
        "with fixed_batch=1",
        quantization,
    )
    return convert(1), 1


def _convert_payload(payload: bytes, *args, **kwargs) -> bytes:
    """`_convert` of a pickled model (runs in tfopt's worker process)."""
    import pickle

    from tfopt.models._zoo import register_custom_objects

    register_custom_objects()
    try:
        model = pickle.loads(payload)
    except Exception as e:
        raise _ModelTransferError(f"{type(e).__name__}: {e}") from None
    return _convert(model, *args, **kwargs)


def convert_isolated(model, quantization: str, representative_data, *args, **kwargs) -> bytes:
    """`_convert` in tfopt's recycled worker process (`tfopt._worker`): a converter that crashes
    (a signal) raises `tfopt.errors.NativeCrashError` here, and its leak dies with the worker.
    A model the worker cannot rebuild is converted in this process instead."""
    import pickle

    from tfopt import _worker

    try:
        payload = pickle.dumps(model)  # Keras writes it as an in-memory .keras archive
    except Exception as e:
        _logger.warning("converting in this process: the model does not pickle (%s)", e)
        return _convert(model, quantization, representative_data, *args, **kwargs)
    calibrating = quantization in ("int8", "int16x8") and representative_data is not None
    stage, hint = _crash_stage_and_hint(model, quantization, calibrating)
    try:
        return _worker.run(
            _convert_payload,
            payload,
            quantization,
            representative_data,
            *args,
            stage=stage,
            hint=hint,
            **kwargs,
        )
    except _ModelTransferError as e:
        _logger.warning("converting in this process: the worker cannot rebuild the model (%s)", e)
        return _convert(model, quantization, representative_data, *args, **kwargs)


# the tensor type a quantization must produce, besides the model's float inputs and outputs
# (dynamic-range and float16 conversions leave small weights float: nothing is required of them)
_EXPECTED_TYPE = {"int8": "int8", "int16x8": "int16"}


def tensor_types(content: bytes) -> tuple[dict[str, int], dict[str, int]]:
    """``({dtype: count} of every tensor, {dtype: count} of those that are not model inputs or
    outputs)`` of a ``.tflite`` flatbuffer, read by the LiteRT interpreter."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    io = {d["index"] for d in interpreter.get_input_details() + interpreter.get_output_details()}
    every: dict[str, int] = {}
    inner: dict[str, int] = {}
    for t in interpreter.get_tensor_details():
        name = np.dtype(t["dtype"]).name
        every[name] = every.get(name, 0) + 1
        if t["index"] not in io:
            inner[name] = inner.get(name, 0) + 1
    return every, inner


def op_types(content: bytes) -> list[tuple[str, list[str], list[str]]]:
    """``[(op name, input dtypes, output dtypes)]`` of a ``.tflite`` flatbuffer, in order."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    dtypes = [np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()]
    return [
        (
            op["op_name"],
            [dtypes[i] for i in op["inputs"] if i >= 0],
            [dtypes[i] for i in op["outputs"] if i >= 0],
        )
        for op in interpreter._get_ops_details()
    ]


def check_tensor_types(content: bytes, quantization: str) -> tuple[dict[str, int], list[str]]:
    """Checks that a converted model computes in the type its ``quantization`` promises.

    ``int8`` / ``int16x8``: some op besides QUANTIZE/DEQUANTIZE must produce int8 (int16)
    activations; a model that computes only in float (e.g. converted without calibration data,
    or dynamic-range) is refused. Ops TFLite has no such kernel for (``CONV_3D``) may stay float:
    they are returned, never hidden. ``float16`` / ``dynamic``: no op may produce int8 (a QAT
    model converts to integer ops whatever was asked). ``float32`` is not checked (a QAT model
    stays float there, with fake-quantization ops).

    Returns:
        ``({dtype: count} over every tensor, the names of the ops that still compute in
        float32)``; the list is empty for the other quantizations.

    Raises:
        ExportCheckError: the model does not compute in the type its name says, with the counts.
    """
    from tfopt.errors import ExportCheckError

    every, inner = tensor_types(content)
    want = _EXPECTED_TYPE.get(quantization)
    edges = ("QUANTIZE", "DEQUANTIZE")
    ops = [op for op in op_types(content) if op[0] not in edges]
    int8_ops = sorted({name for name, _, outs in ops if "int8" in outs})
    if quantization in ("float16", "dynamic") and int8_ops:  # a QAT model converts to int8
        raise ExportCheckError(
            f"quantization={quantization!r} would label an int8 model: the converter made "
            f"{', '.join(int8_ops)} compute in int8 (a tfopt QAT model always converts to "
            "integer ops); nothing was written. Export it as tflite-int8, which is this file "
            "labelled truthfully"
        )
    if want is None:
        return every, []
    if not any(want in outs for _, _, outs in ops):
        raise ExportCheckError(
            f"the converter produced a model that is not {quantization}: no op computes in "
            f"{want} (tensor types {dict(sorted(inner.items()))} besides the inputs and "
            "outputs); nothing was written. For int8, give representative data of the model's "
            "input shape (at least 1 sample, a few hundred recommended)"
        )
    return every, sorted({name for name, _, outs in ops if "float32" in outs})


def tflite(
    model,
    path,
    *,
    quantization: str = "float32",
    representative_data=None,
    int8_io: bool = False,
    select_tf_ops: bool = False,
    check_data=None,
    min_agreement: float | None = None,
    atol: float | None = None,
    fixed_batch: int | None = None,
    overwrite: bool = False,
) -> Artifact:
    """Converts a Keras model to a ``.tflite`` file and checks it against the Keras model.

    The batch dimension stays dynamic (resize the interpreter's input) unless ``fixed_batch`` is set.

    Args:
        model: a Keras 3 model (plain, pruned-and-stripped, or QAT).
        path: where to write the ``.tflite`` file.
        quantization: one of ``"float32"``, ``"dynamic"`` (int8 weights), ``"float16"``,
            ``"int8"`` (full integer; needs ``representative_data`` unless the model is a tfopt QAT
            model) or ``"int16x8"``. Defaults to "float32".
        representative_data: ``x`` or ``(x, y)`` used to calibrate activation ranges (first 200
            samples). Defaults to None.
        int8_io: make the model's input and output int8 (int16 for int16x8) too. Defaults to False.
        select_tf_ops: allow TensorFlow ops outside the TFLite builtins (the runtime then needs the
            Flex delegate; the parity check is skipped, with the reason, when this process's
            interpreter lacks it). Defaults to False.
        check_data: inputs for the parity check. Defaults to ``representative_data``, else random
            normal inputs.
        min_agreement: the argmax agreement with Keras below which the check fails. Defaults to
            0.99 for float32/float16, 0.95 for dynamic/int16x8 and 0.9 for int8.
        atol: the largest accepted max abs output difference, as a fraction of the largest Keras
            output (floored at 1). Defaults to 1e-3 for float32, 2e-2 for float16 and None (not
            checked) for the integer quantizations.
        fixed_batch: convert with this fixed batch size instead of a dynamic one (lets recurrent
            layers convert with builtin ops only). Defaults to None: a dynamic batch, or 1 when
            the dynamic one needs TensorFlow ops (recurrent layers); the artifact's
            ``info["fixed_batch"]`` says which.
        overwrite: replace an existing file. Defaults to False: an existing ``path`` is refused
            (`OutputDirError`) and nothing is written.

    Returns:
        An `Artifact` with the path, size and the check's measurements.

    Raises:
        ValueError: an unknown quantization, or int8 without representative data.
        RuntimeError: the converter failed (one line, with what to try).
        ExportCheckError: the artifact disagrees with the Keras model more than allowed.
        OutputDirError: ``path`` exists and ``overwrite`` is False, or is a directory.

    Example:
        >>> art = tfopt.export.tflite(model, "m.tflite", quantization="int8",
        ...                           representative_data=x[:200])
        >>> art.check["argmax_agreement"]
    """
    check_model(model)
    fmt = "tflite" if quantization == "float32" else f"tflite-{quantization}"
    if quantization in QUANTIZATIONS:  # an unknown one is refused below, by name
        check_output(path, fmt, overwrite=overwrite)
    subclassed = not is_graph_model(model)
    model = float32_copy(graph_model(model))
    single_input(model, "tflite" if quantization == "float32" else f"tflite-{quantization}")
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"Unrecognized quantization={quantization!r}. Supported: {list(QUANTIZATIONS)}"
        )
    if quantization in ("int8", "int16x8") and representative_data is None and not is_qat(model):
        raise ValueError(
            f"quantization={quantization!r} needs representative_data (a few hundred training "
            "inputs) to calibrate activation ranges, unless the model is a tfopt QAT model."
        )
    if representative_data is not None:
        representative_data = samples(
            model, representative_data, "representative_data", dtype=model.inputs[0].dtype
        )
    if int8_io and quantization not in ("int8", "int16x8"):
        raise ValueError(
            f"int8_io=True needs quantization='int8' or 'int16x8'. Received: {quantization!r}"
        )
    if fixed_batch is not None and (not isinstance(fixed_batch, int) or fixed_batch < 1):
        raise ValueError(
            f"fixed_batch must be an int >= 1 or None. Received: fixed_batch={fixed_batch!r}"
        )
    from tfopt.bench._runners import TFLiteRunner

    content, fixed_batch = _convert_with_fallback(
        model, quantization, representative_data, int8_io, select_tf_ops, fixed_batch, subclassed
    )
    x = check_inputs(model, check_data, representative_data)
    # checked before the file is written: a file is never labelled with a type it lacks
    types, float_ops = check_tensor_types(content, quantization)
    info = {
        "quantization": quantization,
        "fixed_batch": fixed_batch,
        "select_tf_ops": select_tf_ops,
        "tensor_types": types,
        "float_ops": float_ops,  # ops without an integer kernel (e.g. CONV_3D) stay float
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    try:
        runner = TFLiteRunner(content)
    except (RuntimeError, ValueError) as e:
        if select_tf_ops and "Flex" in str(e):
            check = {
                "format": fmt,
                "passed": None,
                "skipped": (
                    "the model holds TF (Flex) ops and this process's LiteRT interpreter has no Flex "
                    "delegate, so the artifact could not be run; check it on the target runtime"
                ),
            }
            return Artifact(path=path, format=fmt, bytes=len(content), check=check, info=info)
        raise
    info["input"] = {"dtype": np.dtype(runner.input_dtype).name, "shape": runner.shape_signature}
    check = verify(model, runner, x, fmt=fmt, path=path, min_agreement=min_agreement, atol=atol)
    return Artifact(path=path, format=fmt, bytes=len(content), check=check, info=info)
