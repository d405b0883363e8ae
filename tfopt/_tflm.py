"""TensorFlow Lite for Microcontrollers (TFLM) facts about a ``.tflite`` flatbuffer: its op list,
the `MicroMutableOpResolver` calls a firmware needs for it, which ops TFLM has no kernel for, and
the arena (peak RAM) TFLM's allocation recorder reports.

The runtime itself is `tflite_micro.runtime.Interpreter` (``pip install tflite-micro``, an optional
extra: ``pip install tfopt[micro]``); `tfopt.bench.TFLMRunner` runs a model through it. This module
imports nothing heavy: the op list is read with LiteRT's flatbuffer schema.

Example:
    >>> from tfopt import _tflm
    >>> ops = _tflm.model_ops(content)
    ['QUANTIZE', 'CONV_2D', 'RESHAPE', 'FULLY_CONNECTED', 'DEQUANTIZE']
    >>> _tflm.resolver_calls(ops)
    ['AddConv2D', 'AddDequantize', 'AddFullyConnected', 'AddQuantize', 'AddReshape']
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading

from tfopt.errors import MissingDependencyError, TfoptError

INSTALL_HINT = "pip install tflite-micro  (or: pip install 'tfopt[micro]')"

# BuiltinOperator -> the MicroMutableOpResolver method that registers its kernel, from
# tensorflow/lite/micro/micro_mutable_op_resolver.h (tflite-micro, 2026). An op missing here has no
# TFLM kernel; the runtime's own refusal (`TFLMRunner`) is the final word.
RESOLVER: dict[str, str] = {
    "ABS": "AddAbs", "ADD": "AddAdd", "ADD_N": "AddAddN", "ARG_MAX": "AddArgMax",
    "ARG_MIN": "AddArgMin", "ASSIGN_VARIABLE": "AddAssignVariable",
    "AVERAGE_POOL_2D": "AddAveragePool2D", "BATCH_MATMUL": "AddBatchMatMul",
    "BATCH_TO_SPACE_ND": "AddBatchToSpaceNd", "BROADCAST_ARGS": "AddBroadcastArgs",
    "BROADCAST_TO": "AddBroadcastTo", "CALL_ONCE": "AddCallOnce", "CAST": "AddCast",
    "CEIL": "AddCeil", "CONCATENATION": "AddConcatenation", "CONV_2D": "AddConv2D",
    "COS": "AddCos", "CUMSUM": "AddCumSum", "DEPTH_TO_SPACE": "AddDepthToSpace",
    "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D", "DEQUANTIZE": "AddDequantize", "DIV": "AddDiv",
    "DYNAMIC_UPDATE_SLICE": "AddDynamicUpdateSlice", "EMBEDDING_LOOKUP": "AddEmbeddingLookup",
    "ELU": "AddElu", "EQUAL": "AddEqual", "EXP": "AddExp", "EXPAND_DIMS": "AddExpandDims",
    "FILL": "AddFill", "FLOOR": "AddFloor", "FLOOR_DIV": "AddFloorDiv",
    "FLOOR_MOD": "AddFloorMod", "FULLY_CONNECTED": "AddFullyConnected", "GATHER": "AddGather",
    "GATHER_ND": "AddGatherNd", "GREATER": "AddGreater", "GREATER_EQUAL": "AddGreaterEqual",
    "HARD_SWISH": "AddHardSwish", "IF": "AddIf", "L2_NORMALIZATION": "AddL2Normalization",
    "L2_POOL_2D": "AddL2Pool2D", "LEAKY_RELU": "AddLeakyRelu", "LESS": "AddLess",
    "LESS_EQUAL": "AddLessEqual", "LOG": "AddLog", "LOGICAL_AND": "AddLogicalAnd",
    "LOGICAL_NOT": "AddLogicalNot", "LOGICAL_OR": "AddLogicalOr", "LOGISTIC": "AddLogistic",
    "LOG_SOFTMAX": "AddLogSoftmax", "MAXIMUM": "AddMaximum", "MAX_POOL_2D": "AddMaxPool2D",
    "MIRROR_PAD": "AddMirrorPad", "MEAN": "AddMean", "MINIMUM": "AddMinimum", "MUL": "AddMul",
    "NEG": "AddNeg", "NOT_EQUAL": "AddNotEqual", "PACK": "AddPack", "PAD": "AddPad",
    "PADV2": "AddPadV2", "PRELU": "AddPrelu", "QUANTIZE": "AddQuantize",
    "READ_VARIABLE": "AddReadVariable", "REDUCE_ALL": "AddReduceAll",
    "REDUCE_MAX": "AddReduceMax", "REDUCE_MIN": "AddReduceMin", "RELU": "AddRelu",
    "RELU6": "AddRelu6", "RESHAPE": "AddReshape", "RESIZE_BILINEAR": "AddResizeBilinear",
    "RESIZE_NEAREST_NEIGHBOR": "AddResizeNearestNeighbor", "REVERSE_V2": "AddReverseV2",
    "ROUND": "AddRound", "RSQRT": "AddRsqrt", "SELECT_V2": "AddSelectV2", "SHAPE": "AddShape",
    "SIN": "AddSin", "SLICE": "AddSlice", "SOFTMAX": "AddSoftmax",
    "SPACE_TO_BATCH_ND": "AddSpaceToBatchNd", "SPACE_TO_DEPTH": "AddSpaceToDepth",
    "SPLIT": "AddSplit", "SPLIT_V": "AddSplitV", "SQUEEZE": "AddSqueeze", "SQRT": "AddSqrt",
    "SQUARE": "AddSquare", "SQUARED_DIFFERENCE": "AddSquaredDifference",
    "STRIDED_SLICE": "AddStridedSlice", "SUB": "AddSub", "SUM": "AddSum", "SVDF": "AddSvdf",
    "TANH": "AddTanh", "TRANSPOSE_CONV": "AddTransposeConv", "TRANSPOSE": "AddTranspose",
    "UNPACK": "AddUnpack", "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM",
    "VAR_HANDLE": "AddVarHandle", "WHILE": "AddWhile", "ZEROS_LIKE": "AddZerosLike",
}  # fmt: skip

# custom ops TFLM registers under their own name
_CUSTOM = {
    "CIRCULAR_BUFFER": "AddCircularBuffer",
    "TFLite_Detection_PostProcess": "AddDetectionPostprocess",
}


class UnsupportedOpsError(TfoptError, ValueError):
    """The model holds ops that TFLite Micro has no kernel for (named in the message)."""


def import_runtime():
    """Returns ``tflite_micro.runtime``, or raises `MissingDependencyError` with the pip hint."""
    try:
        from tflite_micro import runtime
    except ImportError as e:
        raise MissingDependencyError(
            f"Running a model in TensorFlow Lite for Microcontrollers needs tflite-micro: "
            f"{INSTALL_HINT}"
        ) from e
    return runtime


def available() -> bool:
    """Whether tflite-micro can be imported."""
    try:
        import_runtime()
    except MissingDependencyError:
        return False
    return True


def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def _root(content: bytes):
    schema = _schema()
    try:
        return schema, schema.Model.GetRootAs(bytes(content), 0)
    except Exception as e:  # a truncated or foreign file
        raise ValueError(f"Not a TFLite flatbuffer ({len(content)} bytes): {e}") from None


def model_ops(content: bytes) -> list[str]:
    """The op of every operator of every subgraph, in order (builtin names such as
    ``"CONV_2D"``; custom ops by their custom name)."""
    schema, model = _root(content)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if names.get(builtin) == "CUSTOM":
            custom = code.CustomCode()
            codes.append(custom.decode() if isinstance(custom, bytes) else str(custom))
        else:
            codes.append(names.get(builtin, f"BUILTIN_{builtin}"))
    ops = []
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        ops += [codes[graph.Operators(i).OpcodeIndex()] for i in range(graph.OperatorsLength())]
    return ops


def tensor_types(content: bytes) -> dict[str, int]:
    """``{type name: number of tensors}`` over every subgraph (``{"INT8": 12, "INT32": 3, ...}``)."""
    schema, model = _root(content)
    names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    counts: dict[str, int] = {}
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        io = {graph.Inputs(i) for i in range(graph.InputsLength())}
        io |= {graph.Outputs(i) for i in range(graph.OutputsLength())}
        for t in range(graph.TensorsLength()):
            if t in io:
                continue  # float I/O around an int8 body is still an int8 model
            name = names.get(graph.Tensors(t).Type(), "?")
            counts[name] = counts.get(name, 0) + 1
    return counts


def is_int8(content: bytes) -> bool:
    """Whether the model computes in int8: int8 tensors inside and no float ones (its input and
    output may stay float32, with QUANTIZE/DEQUANTIZE at the edges). Dynamic-range and float16
    models are not int8 models."""
    types = tensor_types(content)
    return types.get("INT8", 0) > 0 and not any(t.startswith("FLOAT") for t in types)


def resolver_calls(ops) -> list[str]:
    """The sorted, unique `MicroMutableOpResolver` calls that register ``ops``' kernels."""
    return sorted(
        {RESOLVER.get(op) or _CUSTOM[op] for op in ops if op in RESOLVER or op in _CUSTOM}
    )


def missing_ops(ops) -> list[str]:
    """The ops (sorted, unique) that TFLM has no kernel for, by the resolver table."""
    return sorted({op for op in ops if op not in RESOLVER and op not in _CUSTOM})


_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def runtime_log():
    """Collects what the TFLM runtime prints to file descriptor 2 (its ``MicroPrintf``) while the
    block runs; yields a list that holds the text afterwards. Only short calls into the runtime
    (building an interpreter, printing its allocations) run inside: their text is either parsed
    (the arena) or put into the error raised, never dropped."""
    log: list[str] = []
    with _STDERR_LOCK, tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield log
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            log.append(tmp.read().decode(errors="replace"))


_ARENA = re.compile(r"Arena allocation (total|head|tail) (\d+) bytes")
_NOT_FOUND = re.compile(r"Didn't find op for builtin opcode '(\w+)'|Failed to get registration "
                        r"from op code (\w+)|Didn't find custom op for name '([^']+)'")  # fmt: skip


def parse_allocations(text: str) -> dict[str, int]:
    """``{"total": ..., "head": ..., "tail": ...}`` from the recorder's printout (bytes)."""
    return {k: int(v) for k, v in _ARENA.findall(text)}


def ops_not_found(text: str) -> list[str]:
    """The ops the runtime said it has no registration for, from its log."""
    found = {a or b or c for a, b, c in _NOT_FOUND.findall(text)}
    return sorted(found)
