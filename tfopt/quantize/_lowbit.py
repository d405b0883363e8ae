"""Below int8: int4 / mixed-precision TFLite through Google's LiteRT Quantizer (litert-quantizer,
the successor of ai-edge-quantizer, "AEQ" below: the same API under a new package name).

AEQ rewrites a *float* ``.tflite`` flatbuffer with a recipe (which ops, how many bits, weight-only,
dynamic or static). tfopt converts the Keras model to float TFLite with the TFLite converter, then
quantizes the flatbuffer here. Layers are named by their Keras names: tfopt finds each op's Keras
layer from its weight tensor's name (``model_1/fc1_1/MatMul``) and gives AEQ a recipe entry that
matches that op's output tensor exactly (AEQ matches recipe regexes against output tensor names,
and the model's last op writes ``StatefulPartitionedCall:0``, which names no layer).

Modes (which runtime runs what was measured here, LiteRT 2.3.0 and tflite-micro 2026-10):

=================  =============================================  ===========  ===============
mode               weights / compute                              LiteRT       TFLite Micro
=================  =============================================  ===========  ===============
``w4``             int4 per channel, dequantized to float32       runs         no (DEQUANTIZE
                                                                               takes no int4)
``w8``             int8 per channel, dequantized to float32       runs         runs
``dynamic-w4``     int4 per channel, activations quantized on     runs         no (hybrid ops)
                   the fly (hybrid kernels)
``dynamic-w8``     int8 per channel, hybrid kernels               runs         no (hybrid ops)
``w8a8``           int8 weights, int8 activations (calibrated)    runs         runs
``w8a16``          int8 weights, int16 activations (calibrated)   runs         runs
=================  =============================================  ===========  ===============

Per-layer bit widths (``bits={"fc1": 4, "conv.*": 8, "logits": None}``) change the weight bits
of some layers within the mode's kind; None keeps a layer in float.

Calibration of the static modes (``w8a8``, ``w8a16``) takes the min and max of each activation
over *all* calibration samples, as the TFLite converter does. AEQ's own default
(``Quantizer.calibrate``) keeps a moving average (factor 0.95) of each sample's min/max: fed one
sample at a time, the ranges shrink to a typical sample's and clip the larger ones. On the
MNIST-1D CNN that cost 10-14 points (argmax agreement with float 0.83-0.89, the same at 8 and 16
activation bits, which rules out resolution); with min/max over the samples it keeps >= 0.99.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

from tfopt.errors import MissingDependencyError

_PIP_HINT = (
    "int4 / mixed-precision TFLite needs Google's LiteRT Quantizer: pip install "
    "'tfopt[lowbit]' (or pip install litert-quantizer; tested with litert-quantizer==0.11.0 and "
    "ai-edge-litert==2.3.0)"
)


@dataclass(frozen=True)
class Mode:
    """One AEQ quantization mode: its kind, default weight bits, activation bits, runtimes."""

    name: str
    kind: str  # "weight_only", "dynamic" or "static"
    weight_bits: int
    activation_bits: int | None = None
    runtimes: tuple[str, ...] = ("litert",)
    note: str = ""


MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode("w4", "weight_only", 4, note="TFLM: DEQUANTIZE has no int4 input"),
        Mode("w8", "weight_only", 8, runtimes=("litert", "tflm")),
        Mode("dynamic-w4", "dynamic", 4, note="TFLM: hybrid (dynamic-range) ops not supported"),
        Mode("dynamic-w8", "dynamic", 8, note="TFLM: hybrid (dynamic-range) ops not supported"),
        Mode("w8a8", "static", 8, 8, runtimes=("litert", "tflm")),
        Mode("w8a16", "static", 8, 16, runtimes=("litert", "tflm")),
    )
}

# ops whose constant weights AEQ quantizes (the ones Keras Dense/Conv/Embedding become)
_WEIGHT_OPS = (
    "FULLY_CONNECTED",
    "CONV_2D",
    "DEPTHWISE_CONV_2D",
    "CONV_3D",
    "CONV_2D_TRANSPOSE",
    "EMBEDDING_LOOKUP",
    "BATCH_MATMUL",
)
_TENSOR_TYPES = {0: "FLOAT32", 1: "FLOAT16", 2: "INT32", 7: "INT16", 9: "INT8", 17: "INT4"}


def _aeq():
    try:
        from litert_quantizer import qtyping, quantizer, recipe_manager
        from litert_quantizer.utils import tfl_flatbuffer_utils
    except ImportError as e:
        raise MissingDependencyError(f"{_PIP_HINT}. ({type(e).__name__}: {e})") from None
    return quantizer, recipe_manager, qtyping, tfl_flatbuffer_utils


def get_mode(mode: str) -> Mode:
    """Returns the `Mode` called ``mode``; a ValueError lists the supported ones."""
    if mode not in MODES:
        raise ValueError(f"Unrecognized mode={mode!r}. Supported modes are: {list(MODES)}")
    return MODES[mode]


@dataclass
class WeightOp:
    """An op of a float flatbuffer with constant weights, and the Keras layer it comes from."""

    index: int
    op: str
    output: str  # the op's output tensor name (what AEQ's regex is matched against)
    weight: str  # its weight tensor's name
    weights: int  # elements of the weight tensor
    layer: str | None  # the Keras layer name, None if none is found


def _layer_pattern(name: str) -> re.Pattern:
    # Keras 3 names the ops "<model>_1/<layer>_1/MatMul": the layer name as one path component
    return re.compile(rf"(^|/){re.escape(name)}(_\d+)?(/|;|$)")


def weight_ops(content: bytes, layer_names=()) -> list[WeightOp]:
    """The ops of the float flatbuffer ``content`` that hold constant weights, with their layers.

    Args:
        content: a float ``.tflite`` flatbuffer.
        layer_names: the Keras model's layer names; the longest one found in an op's weight (or
            output) tensor name is its layer. Defaults to ().

    Returns:
        One `WeightOp` per op, in execution order.
    """
    _, _, _, fu = _aeq()
    model = fu.read_model(content)
    graph = model.subgraphs[0]
    names = sorted(layer_names, key=len, reverse=True)
    patterns = [(n, _layer_pattern(n)) for n in names]
    found = []
    for i, op in enumerate(graph.operators):
        code = model.operatorCodes[op.opcodeIndex]
        code = max(code.builtinCode, getattr(code, "deprecatedBuiltinCode", 0) or 0)
        op_name = next(
            (getattr(k, "value", k) for k, v in fu.TFL_OP_NAME_TO_CODE.items() if v == code),
            str(code),
        )
        if op_name not in _WEIGHT_OPS:
            continue
        for t in op.inputs:
            if t < 0:
                continue
            tensor = graph.tensors[t]
            data = model.buffers[tensor.buffer].data
            if data is None or len(data) == 0 or len(tensor.shape) < 2:
                continue
            out = graph.tensors[op.outputs[0]].name
            out = out.decode() if isinstance(out, bytes) else out
            wname = tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name
            layer = next(
                (n for n, p in patterns if p.search(wname)),
                next((n for n, p in patterns if p.search(out)), None),
            )
            found.append(WeightOp(i, op_name, out, wname, int(np.prod(tensor.shape)), layer))
            break
    return found


def weight_types(content: bytes, layer_names=()) -> dict[str, str]:
    """``{layer (or weight tensor) name: storage type}`` of the weights of a quantized flatbuffer,
    e.g. ``{"fc1": "INT4", "logits": "INT8"}`` (read from the flatbuffer's tensor types)."""
    _, _, _, fu = _aeq()
    model = fu.read_model(content)
    graph = model.subgraphs[0]
    patterns = [(n, _layer_pattern(n)) for n in sorted(layer_names, key=len, reverse=True)]
    types = {}
    for tensor in graph.tensors:
        data = model.buffers[tensor.buffer].data
        if data is None or len(data) == 0 or len(tensor.shape) < 2:
            continue
        name = tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name
        layer = next((n for n, p in patterns if p.search(name)), name)
        types.setdefault(layer, _TENSOR_TYPES.get(int(tensor.type), str(tensor.type)))
    return types


def _check_bits(bits) -> dict:
    if bits is None:
        return {}
    if not isinstance(bits, Mapping):
        raise TypeError(
            "bits must be a dict {layer name or regex: 4, 8 or None}. "
            f"Received: bits={bits!r} of type {type(bits).__name__}"
        )
    for key, value in bits.items():
        if value not in (4, 8, None) or isinstance(value, bool):
            raise ValueError(
                f"bits values must be 4, 8 or None (float). Received: bits[{key!r}]={value!r}"
            )
    return dict(bits)


def resolve_bits(bits, ops: list[WeightOp], mode: Mode) -> dict[str, int | None]:
    """``{layer: bits}`` for every weight op's layer: the mode's bits, overridden by ``bits``.

    ``bits`` keys are searched (``re.search``) in the layer names; later keys win.

    Raises:
        ValueError: a key that matches no quantizable layer (the message lists them).
    """
    bits = _check_bits(bits)
    layers = [op.layer or op.weight for op in ops]
    plan = {name: mode.weight_bits for name in layers}
    for key, value in bits.items():
        hits = [n for n in layers if n == key or re.search(key, n)]
        if not hits:
            raise ValueError(
                f"bits key {key!r} matches no layer with quantizable weights. Layers: {layers}"
            )
        for n in hits:
            plan[n] = value
    return plan


def _recipe_manager(mode: Mode, ops: list[WeightOp], plan: dict[str, int | None]):
    _, recipe_manager, qtyping, _ = _aeq()
    rm = recipe_manager.RecipeManager()
    every = qtyping.TFLOperationName.ALL_SUPPORTED

    def add(regex: str, bits: int | None) -> None:
        if bits is None:
            rm.add_quantization_config(regex, every, algorithm_key="no_quantize")
        elif mode.kind == "weight_only":
            rm.add_weight_only_config(regex, every, bits)
        elif mode.kind == "dynamic":
            rm.add_dynamic_config(regex, every, bits)
        else:
            rm.add_static_config(regex, every, mode.activation_bits, bits)

    add(".*", mode.weight_bits)
    for op in ops:  # one exact entry per op whose layer differs from the mode's default
        bits = plan[op.layer or op.weight]
        if bits != mode.weight_bits:
            add(f"^{re.escape(op.output)};", bits)  # AEQ scopes end in ";"
    return rm


def _calibrate(content: bytes, rm, data) -> dict:
    """AEQ's calibration result (tensor name -> min/max) of ``data`` for the recipe ``rm``: the
    min and max over all samples (see the module docstring), not AEQ's moving average."""
    from litert_quantizer import calibrator
    from litert_quantizer.utils import qsv_utils

    calib = calibrator.Calibrator(bytes(content), qsv_update_func=qsv_utils.min_max_update)
    calib.calibrate(_calibration(content, data), rm)
    return calib.get_model_qsvs()


def _calibration(content: bytes, data, limit: int = 500) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    signatures = Interpreter(model_content=content).get_signature_list()
    key = next(iter(signatures))
    name = signatures[key]["inputs"][0]
    x = np.asarray(data[0] if isinstance(data, tuple) else data, dtype="float32")[:limit]
    return {key: [{name: x[i : i + 1]} for i in range(len(x))]}


def quantize_flatbuffer(
    content: bytes,
    mode: str = "w4",
    *,
    bits=None,
    layer_names=(),
    representative_data=None,
) -> tuple[bytes, dict]:
    """Quantizes a float ``.tflite`` flatbuffer with AEQ in ``mode`` (per-layer ``bits``).

    Args:
        content: the float32 flatbuffer (``tfopt.export.tflite(..., quantization="float32")``).
        mode: one of `MODES`. Defaults to "w4".
        bits: ``{layer name or regex: 4, 8 or None}`` overriding the mode's weight bits per
            layer (None: keep float). Defaults to None.
        layer_names: the Keras model's layer names (to name the ops). Defaults to ().
        representative_data: inputs (or ``(x, y)``) to calibrate activation ranges; needed by
            the static modes (``w8a8``, ``w8a16``). Defaults to None.

    Returns:
        ``(quantized bytes, info)``; ``info`` holds the mode, the per-layer ``bits`` and the
        weights' storage ``types`` read back from the flatbuffer.

    Raises:
        MissingDependencyError: litert-quantizer is not installed (with the pip command).
        ValueError: an unknown mode, bad ``bits``, or a static mode without data.
    """
    from tfopt._backend import quiet

    spec = get_mode(mode)
    quantizer = _aeq()[0]
    ops = weight_ops(content, layer_names)
    plan = resolve_bits(bits, ops, spec)
    rm = _recipe_manager(spec, ops, plan)
    q = quantizer.Quantizer(bytearray(content), rm.get_quantization_recipe())
    calibration = None
    if q.need_calibration:
        if representative_data is None:
            raise ValueError(
                f"mode={mode!r} quantizes activations: it needs representative_data (a few "
                "hundred training inputs) to calibrate their ranges."
            )
        with quiet():
            calibration = _calibrate(content, rm, representative_data)
    with quiet():
        result = q.quantize(calibration_result=calibration, enable_progress_report=False)
    out = bytes(result.quantized_model)
    info = {
        "mode": mode,
        "bits": plan,
        "types": weight_types(out, layer_names),
        "runtimes": list(spec.runtimes),
    }
    return out, info


def _float_tflite(model) -> bytes:
    from tfopt._backend import quiet
    from tfopt._rewrite import is_graph_model
    from tfopt.export._common import float32_copy, graph_model
    from tfopt.export._tflite import _convert

    subclassed = not is_graph_model(model)
    model = float32_copy(graph_model(model))
    with quiet():
        return _convert(model, "float32", None, False, False, subclassed=subclassed)


def _layer_names(model) -> list[str]:
    return [layer.name for layer in model._flatten_layers(include_self=False)]


def _accuracy(content: bytes, x, y) -> float:
    from tfopt.bench._runners import TFLiteRunner

    out = TFLiteRunner(content).predict(np.asarray(x, dtype="float32"))
    return float(np.mean(out.reshape(len(out), -1).argmax(-1) == np.asarray(y).reshape(-1)))


@dataclass
class Sensitivity:
    """The accuracy cost of lowering each layer alone, measured through LiteRT.

    Attributes:
        mode: the AEQ mode of every artifact (its kind: weight-only, dynamic or static).
        base_bits / low_bits: the bits of the other layers / of the lowered one.
        float_accuracy: the float32 TFLite model's accuracy on the data.
        base_accuracy, base_bytes: every layer at ``base_bits``.
        rows: one dict per layer: ``layer``, ``op``, ``weights``, ``accuracy`` (that layer at
            ``low_bits``), ``drop`` (``base_accuracy - accuracy``), ``bytes`` (the file).
    """

    mode: str
    base_bits: int
    low_bits: int
    float_accuracy: float
    base_accuracy: float
    base_bytes: int
    samples: int
    rows: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_markdown(self) -> str:
        lines = [
            f"float32 accuracy {self.float_accuracy:.4f}; all layers at {self.base_bits} bits "
            f"({self.mode}): {self.base_accuracy:.4f}, {self.base_bytes} B; {self.samples} samples",
            "",
            f"| layer | op | weights | accuracy at {self.low_bits} bits | drop | bytes |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for r in self.rows:
            lines.append(
                f"| {r['layer']} | {r['op']} | {r['weights']} | {r['accuracy']:.4f} | "
                f"{r['drop']:+.4f} | {r['bytes']} |"
            )
        return "\n".join(lines)

    __str__ = to_markdown


def _kind_mode(mode: str, bits: int) -> str:
    spec = get_mode(mode)
    return mode if spec.weight_bits == bits else spec.name


def sensitivity(
    model,
    data,
    *,
    mode: str = "w8",
    low_bits: int = 4,
    representative_data=None,
    limit: int | None = None,
) -> Sensitivity:
    """Measures, layer by layer, the accuracy cost of lowering that layer's weights alone.

    The model is converted to float TFLite once; for every layer with quantizable weights, AEQ
    writes an artifact with that layer at ``low_bits`` and every other layer at the mode's bits,
    and its top-1 accuracy on ``data`` is measured through LiteRT (the artifact, not Keras).

    Args:
        model: a trained Keras 3 classifier with one input and one output.
        data: ``(x, y)`` validation data, integer labels.
        mode: the AEQ mode of the other layers (`MODES`; ``"w8"``: int8 weight-only, float
            compute). Defaults to "w8".
        low_bits: the lowered layer's weight bits (4 or 8). Defaults to 4.
        representative_data: calibration inputs for a static mode. Defaults to None.
        limit: measure on the first ``limit`` samples only. Defaults to None (all).

    Returns:
        A `Sensitivity` (``print`` it for a Markdown table; ``rows`` sorted as in the model).

    Raises:
        MissingDependencyError: litert-quantizer is not installed.

    Example:
        >>> table = tfopt.quantize.sensitivity(model, (x_val, y_val), mode="w8")
        >>> print(table)
        >>> plan = tfopt.quantize.choose_bits(model, (x_val, y_val), max_accuracy_drop=0.005)
    """
    x, y = data
    if limit is not None:
        x, y = x[:limit], y[:limit]
    spec = get_mode(mode)
    content = _float_tflite(model)
    names = _layer_names(model)
    ops = weight_ops(content, names)
    base, _ = quantize_flatbuffer(
        content, mode, layer_names=names, representative_data=representative_data
    )
    table = Sensitivity(
        mode=mode,
        base_bits=spec.weight_bits,
        low_bits=low_bits,
        float_accuracy=_accuracy(content, x, y),
        base_accuracy=_accuracy(base, x, y),
        base_bytes=len(base),
        samples=len(y),
    )
    for op in ops:
        layer = op.layer or op.weight
        low, _ = quantize_flatbuffer(
            content,
            mode,
            bits={f"^{re.escape(layer)}$": low_bits},
            layer_names=names,
            representative_data=representative_data,
        )
        acc = _accuracy(low, x, y)
        table.rows.append(
            {
                "layer": layer,
                "op": op.op,
                "weights": op.weights,
                "accuracy": acc,
                "drop": table.base_accuracy - acc,
                "bytes": len(low),
            }
        )
    return table


@dataclass
class BitPlan:
    """Per-layer weight bits chosen under an accuracy budget, with what they measured."""

    mode: str
    bits: dict[str, int]
    accuracy: float
    float_accuracy: float
    bytes: int
    max_accuracy_drop: float
    steps: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def choose_bits(
    model,
    data,
    *,
    max_accuracy_drop: float = 0.005,
    mode: str = "w8",
    low_bits: int = 4,
    table: Sensitivity | None = None,
    representative_data=None,
    limit: int | None = None,
) -> BitPlan:
    """Picks per-layer weight bits: lower layers greedily, least sensitive first, under a budget.

    Layers are tried in order of their `sensitivity` (smallest drop first; on ties the larger
    layer first, it saves more). Each candidate set is quantized and measured through LiteRT; a
    layer stays lowered if the artifact's accuracy is within ``max_accuracy_drop`` of the float32
    TFLite model's, else it goes back to the mode's bits. Every measurement is in ``steps``.

    Args:
        model: a trained Keras 3 classifier.
        data: ``(x, y)`` validation data (never the test data).
        max_accuracy_drop: the largest accepted drop below the float32 TFLite accuracy.
            Defaults to 0.005.
        mode: the AEQ mode (its kind and the bits of layers not lowered). Defaults to "w8".
        low_bits: the lowered bits. Defaults to 4.
        table: a `sensitivity` table already measured on the same data. Defaults to None.
        representative_data: calibration inputs for a static mode. Defaults to None.
        limit: use the first ``limit`` samples only. Defaults to None.

    Returns:
        A `BitPlan`; export it with ``tfopt.export.lowbit(model, path, mode=mode,
        bits=plan.bits)``.

    Raises:
        ValueError: ``max_accuracy_drop`` < 0.
    """
    if not max_accuracy_drop >= 0:
        raise ValueError(
            f"max_accuracy_drop must be >= 0. Received: max_accuracy_drop={max_accuracy_drop!r}"
        )
    x, y = data
    if limit is not None:
        x, y = x[:limit], y[:limit]
    if table is None:
        table = sensitivity(
            model, (x, y), mode=mode, low_bits=low_bits, representative_data=representative_data
        )
    spec = get_mode(mode)
    content = _float_tflite(model)
    names = _layer_names(model)
    bits = {r["layer"]: spec.weight_bits for r in table.rows}
    order = sorted(table.rows, key=lambda r: (r["drop"], -r["weights"]))
    floor = table.float_accuracy - max_accuracy_drop
    best = None
    steps = []
    for row in order:
        trial = {**bits, row["layer"]: low_bits}
        exact = {f"^{re.escape(k)}$": v for k, v in trial.items()}
        out, _ = quantize_flatbuffer(
            content, mode, bits=exact, layer_names=names, representative_data=representative_data
        )
        acc = _accuracy(out, x, y)
        kept = acc >= floor - 1e-12
        steps.append({"layer": row["layer"], "accuracy": acc, "bytes": len(out), "kept": kept})
        if kept:
            bits, best = trial, (acc, len(out))
    if best is None:  # nothing lowered: the mode's own artifact
        best = (table.base_accuracy, table.base_bytes)
    return BitPlan(mode, bits, best[0], table.float_accuracy, best[1], max_accuracy_drop, steps)
