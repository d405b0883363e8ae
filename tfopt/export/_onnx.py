"""ONNX export with tf2onnx ``from_function`` (``from_keras`` fails on Keras 3), checked with
onnxruntime."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from tfopt._backend import check_model, quiet
from tfopt.errors import MissingDependencyError
from tfopt.export._common import (
    Artifact,
    check_inputs,
    graph_model,
    input_name,
    single_input,
    verify,
)
from tfopt.export._export import check_output

OUTPUT_NAME = "output_0"  # the same name as the SavedModel serving signature's output


def _register_erfc() -> None:
    """Teaches tf2onnx TF's Erfc (exact GELU lowers to it): erfc(x) = 1 - erf(x), ONNX has Erf."""
    import tf2onnx.handler
    from tf2onnx import utils

    if "Erfc" in tf2onnx.handler.tf_op.get_opsets().get("onnx", [{}])[-1]:
        return

    @tf2onnx.handler.tf_op("Erfc")
    class _Erfc:
        @classmethod
        def version_9(cls, ctx, node, **kwargs):
            # the node becomes 1 - Erf(x): its output (and so its consumers) stays the same
            dtype = ctx.get_dtype(node.output[0])
            erf = ctx.make_node("Erf", [node.input[0]])
            ctx.set_dtype(erf.output[0], dtype)
            ctx.copy_shape(node.output[0], erf.output[0])
            one = ctx.make_const(
                utils.make_name("erfc_one"), np.array(1, dtype=utils.map_onnx_to_numpy_type(dtype))
            )
            node.type = "Sub"
            ctx.replace_inputs(node, [one.output[0], erf.output[0]])


def _from_frozen(tf2onnx, concrete, opset: int):
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    frozen = convert_variables_to_constants_v2(concrete)
    proto, _ = tf2onnx.convert.from_graph_def(
        frozen.graph.as_graph_def(),
        input_names=[t.name for t in frozen.inputs],
        output_names=[t.name for t in frozen.outputs],
        opset=opset,
    )
    graph_input = proto.graph.input[0]
    old, new = graph_input.name, concrete.structured_input_signature[0][0].name
    for node in proto.graph.node:  # the input keeps the name from_function would give it
        node.input[:] = [new if n == old else n for n in node.input]
    graph_input.name = new
    return proto


def _rename_output(model_proto, new: str) -> str:
    """Renames the graph's single output (tf2onnx calls it e.g. ``Identity:0``); returns the old name."""
    old = model_proto.graph.output[0].name
    if old == new:
        return old
    for node in model_proto.graph.node:
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
    model_proto.graph.output[0].name = new
    return old


def onnx(
    model,
    path,
    *,
    opset: int = 17,
    dynamic_batch: bool = True,
    check_data=None,
    min_agreement: float | None = None,
    atol: float | None = None,
    overwrite: bool = False,
) -> Artifact:
    """Exports a Keras model to ONNX and checks it with onnxruntime against the Keras model.

    The graph is traced with `tf2onnx.convert.from_function` and an explicit input signature; the
    input keeps the Keras input layer's name and the output is called ``output_0``.

    Args:
        model: a Keras 3 model with one input and one output.
        path: where to write the ``.onnx`` file.
        opset: the ONNX opset to target. Defaults to 17.
        dynamic_batch: leave the batch dimension symbolic (any batch size). Defaults to True
            (False fixes it to 1).
        check_data: inputs for the parity check. Defaults to 64 random normal inputs.
        min_agreement: the argmax agreement below which the check fails. Defaults to 0.99.
        atol: the largest accepted max abs difference, as a fraction of the largest Keras output
            (floored at 1). Defaults to 1e-3.
        overwrite: replace an existing file. Defaults to False: an existing ``path`` is refused
            (`OutputDirError`) and nothing is written.

    Returns:
        An `Artifact` (format ``"onnx"``); ``info`` holds the opset and input/output names and shapes.

    Raises:
        ValueError: a bad opset, or a model with several inputs or outputs.
        MissingDependencyError: tf2onnx or onnxruntime is not installed.
        RuntimeError: tf2onnx failed (one line).
        ExportCheckError: onnxruntime's outputs disagree with Keras beyond the tolerance.
        OutputDirError: ``path`` exists and ``overwrite`` is False, or is a directory.

    Example:
        >>> art = tfopt.export.onnx(model, "m.onnx", opset=17)
        >>> art.info["inputs"]
        {'input': [None, 40, 1]}
    """
    check_model(model)
    check_output(path, "onnx", overwrite=overwrite)
    if not isinstance(opset, int) or not 7 <= opset <= 21:
        raise ValueError(f"opset must be an int in [7, 21]. Received: opset={opset!r}")
    model = graph_model(model)
    tensor = single_input(model, "onnx")
    try:
        import tensorflow as tf
        import tf2onnx
    except ImportError as e:
        raise MissingDependencyError("ONNX export needs tf2onnx: pip install tf2onnx onnx") from e
    from tfopt.bench._runners import OnnxRunner

    name = input_name(model)
    batch = None if dynamic_batch else 1
    spec = tf.TensorSpec((batch, *model.input_shape[1:]), tensor.dtype, name=name)
    fn = tf.function(lambda x: model(x, training=False))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    _register_erfc()
    try:
        with quiet():
            proto, _ = tf2onnx.convert.from_function(fn, input_signature=[spec], opset=opset)
            if len(proto.graph.input) > 1:
                # constants captured from outside the function (Normalization's mean/variance)
                # became graph inputs: convert the frozen graph instead
                proto = _from_frozen(tf2onnx, fn.get_concrete_function(spec), opset)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise RuntimeError(f"ONNX export (tf2onnx, opset {opset}) failed: {first}") from None
    _rename_output(proto, OUTPUT_NAME)
    path.write_bytes(proto.SerializeToString())
    try:
        runner = OnnxRunner(path)
    except Exception as e:  # tf2onnx left an op ONNX does not define (it logs, not raises)
        first = str(e).strip().splitlines()[0][:300]
        raise RuntimeError(
            f"ONNX export (tf2onnx, opset {opset}) wrote a graph onnxruntime cannot load: {first}"
        ) from None
    out_shape = [None if batch is None else 1, *model.output_shape[1:]]
    info = {
        "opset": opset,
        "inputs": {runner.input_name: runner.shape_signature},
        "outputs": {OUTPUT_NAME: out_shape},
        "dynamic_batch": dynamic_batch,
    }
    x = check_inputs(model, check_data)
    if not dynamic_batch:
        x = x[:64]
    check = verify(
        model,
        _OneByOne(runner) if not dynamic_batch else runner,
        x,
        fmt="onnx",
        path=path,
        min_agreement=min_agreement,
        atol=atol,
    )
    return Artifact(path=path, format="onnx", bytes=path.stat().st_size, check=check, info=info)


class _OneByOne:
    """Feeds a fixed-batch-1 runner one sample at a time."""

    def __init__(self, runner):
        self.runner = runner

    def predict(self, x):
        import numpy as np

        return np.concatenate([self.runner.invoke(x[i : i + 1]) for i in range(len(x))])
