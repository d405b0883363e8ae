"""Parameter and multiply-accumulate (MAC) counts from a Keras model (`tfopt._measure`, the one
counter), a TFLite graph or an ONNX graph. FLOPs are reported as 2 x MACs. Only the layers that
dominate compute are counted: dense, convolutions, attention, recurrent layers and matrix
products; elementwise ops are ignored."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _prod(shape) -> int:
    return int(np.prod([int(d) for d in shape if d is not None])) if len(shape) else 1


def keras_counts(model) -> dict:
    """``{"params", "macs", "flops", "source": "keras"}`` for a Keras model (per sample).

    The one counter tfopt uses everywhere (`tfopt._measure.count`): plain-model params (tfopt's
    wrappers count the layer they wrap, not their masks or quantizer ranges) and MACs of dense,
    einsum, convolution (grouped, transposed, depthwise, separable), attention and recurrent
    layers on the shapes they are called with.
    """
    from tfopt._measure import count

    return count(model)


def tflite_counts(path_or_bytes) -> dict:
    """Counts from the TFLite graph (batch 1): FULLY_CONNECTED, CONV_2D, DEPTHWISE_CONV_2D,
    CONV_3D, BATCH_MATMUL. ``params`` sums those ops' weight and bias tensors."""
    from ai_edge_litert.interpreter import Interpreter

    content = (
        path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    )
    it = Interpreter(model_content=content)
    it.allocate_tensors()
    shapes = {t["index"]: [int(d) for d in t["shape"]] for t in it.get_tensor_details()}
    macs, weights = 0, set()
    for op in it._get_ops_details():
        name, ins, outs = op["op_name"], list(op["inputs"]), list(op["outputs"])
        if not outs or outs[0] not in shapes:
            continue
        out = shapes[outs[0]]
        per_sample = _prod(out[1:]) if out else 0
        w = shapes.get(ins[1]) if len(ins) > 1 and ins[1] >= 0 else None
        if w is None:
            continue
        if name == "FULLY_CONNECTED":
            macs += per_sample * w[-1]
        elif name == "CONV_2D":
            macs += per_sample * _prod(w[1:])
        elif name == "DEPTHWISE_CONV_2D":
            macs += per_sample * _prod(w[1:3])
        elif name == "CONV_3D":
            macs += per_sample * _prod(w[:-1])
        elif name == "BATCH_MATMUL":
            macs += per_sample * w[-2]
            continue
        else:
            continue
        weights.update(i for i in ins[1:] if i >= 0)
    params = sum(_prod(shapes[i]) for i in weights if i in shapes)
    return {
        "params": int(params),
        "macs": int(macs),
        "flops": int(2 * macs),
        "source": "tflite-graph",
    }


def tflite_kernels(path) -> list[tuple[str, np.ndarray]]:
    """``[(op name, kernel), ...]`` of the CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED ops of a
    .tflite file, each kernel as stored (int8 in a quantized file) with one row per output channel
    (TFLite's per-channel quantization axis): CONV_2D and FULLY_CONNECTED store output channels
    first, DEPTHWISE_CONV_2D (1, kh, kw, channels) last."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    kernels = []
    for op in it._get_ops_details():
        name = op["op_name"]
        if name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            continue
        w = it.get_tensor(op["inputs"][1])
        rows = w.reshape(-1, w.shape[-1]).T if name == "DEPTHWISE_CONV_2D" else w
        kernels.append((name, rows.reshape(rows.shape[0], -1)))
    return kernels


def onnx_counts(path) -> dict:
    """Counts from the ONNX graph (batch 1, shapes inferred): Conv, Gemm, MatMul with a weight
    initializer. ``params`` sums all float initializers."""
    import onnx
    from onnx import numpy_helper, shape_inference

    proto = onnx.load(str(path))
    for value in list(proto.graph.input):
        dims = value.type.tensor_type.shape.dim
        if len(dims) and not dims[0].dim_value:
            dims[0].dim_value = 1
    proto = shape_inference.infer_shapes(proto)
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    shapes = {}
    for v in [*proto.graph.value_info, *proto.graph.output, *proto.graph.input]:
        dims = v.type.tensor_type.shape.dim
        shapes[v.name] = [d.dim_value or 1 for d in dims]
    macs = 0
    for node in proto.graph.node:
        if len(node.input) < 2 or node.input[1] not in inits or node.output[0] not in shapes:
            continue
        w = inits[node.input[1]].shape
        per_sample = _prod(shapes[node.output[0]][1:])
        if node.op_type == "Conv":
            macs += per_sample * _prod(w[1:])
        elif node.op_type in ("MatMul", "Gemm"):
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            macs += per_sample * (w[-1] if trans_b else w[0])
    params = sum(int(a.size) for a in inits.values() if a.dtype.kind == "f" and a.ndim >= 1)
    return {
        "params": int(params),
        "macs": int(macs),
        "flops": int(2 * macs),
        "source": "onnx-graph",
    }
