"""Params and multiply-accumulates (MACs) of a Keras model: the one counter tfopt uses everywhere
(benchmarks, run reports, channel-pruning plans).

**Params** are the weights of the plain model, what ``model.count_params()`` gives once tfopt's
wrappers are stripped: the variables that tfopt's pruning, QAT and clustering layers add
themselves (pruning masks and step counters, quantizer ranges and flags, cluster centroids,
assignments and masks) are bookkeeping, not params. BatchNormalization's moving statistics count,
as Keras counts them.

**MACs** are per sample (batch 1), per call of a layer, from the shapes it is really called with
(each formula is the ``macs`` of the layer's spec in `tfopt._layers`; a layer registered with
`tfopt.register_layer` brings its own):

============================  ==================================================================
Dense                         positions x c_in x units (a Dense on (T, c_in) runs T times)
EinsumDense                   output elements x product of the contracted kernel dimensions
Conv1D/2D/3D                  output positions x kernel size x (c_in / groups) x filters
Conv1D/2D/3DTranspose         input positions x kernel size x c_in x filters
DepthwiseConv1D/2D            output positions x kernel size x c_in x depth_multiplier
SeparableConv1D/2D            the depthwise part + output positions x c_in x multiplier x filters
MultiHeadAttention            the query/key/value/output projections (EinsumDense as above) +
                              QK^T (heads x T x S x key_dim) + softmax.V (heads x T x S x value_dim)
                              with T and S the query and key positions it is called on
SimpleRNN / GRU / LSTM        time steps x (kernel + recurrent kernel sizes) per step
Bidirectional                 forward + backward layer
TimeDistributed               the inner layer on one step x time steps
nested models                 their own layers, counted the same way
keras.ops.matmul in a graph   output elements x the contracted dimension
tfopt wrappers, Wrapper       the wrapped layer
============================  ==================================================================

Everything else counts 0 MACs: Embedding (a lookup), activations, element-wise arithmetic,
pooling, normalization, reshapes. BatchNormalization counts 0 because every exporter folds it
into the convolution or Dense before it (TFLite, ONNX and TensorRT do), so it costs no multiply
at inference. FLOPs are 2 x MACs. A call whose needed dimensions are unknown (``None`` past the
batch axis) is not counted: `layer_macs` returns None for it.

Example:
    >>> from tfopt._measure import count
    >>> count(model)
    {'params': 52874, 'macs': 419904, 'flops': 839808, 'source': 'keras'}
"""

from __future__ import annotations

import math

from tfopt._backend import import_keras
from tfopt._layers import spec_of

keras = import_keras()
L = keras.layers

# Modules whose layers' *own* variables are tfopt bookkeeping (masks, step counters, quantizer
# ranges, cluster centroids/assignments): the weights of the layers they wrap still count.
_BOOKKEEPING_MODULES = ("tfopt.prune.", "tfopt.quantize.", "tfopt.cluster.")


def _is_bookkeeping(layer) -> bool:
    return type(layer).__module__.startswith(_BOOKKEEPING_MODULES)


def count_params(model) -> int:
    """Parameters of ``model`` (a model or a layer) as a plain Keras model would have them.

    Weights shared between layers count once; the variables tfopt's pruning, QAT and clustering
    layers add themselves are not counted (see the module docstring).

    Args:
        model: a Keras model or layer (built).

    Returns:
        The number of scalar weights.
    """
    skip = set()
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if _is_bookkeeping(layer):
            skip.update(
                id(v) for v in (*layer._trainable_variables, *layer._non_trainable_variables)
            )
    seen, total = set(), 0
    for v in model.weights:
        if id(v) in seen or id(v) in skip:
            continue
        seen.add(id(v))
        total += math.prod(int(d) for d in v.shape)
    return int(total)


def _shape_list(shapes) -> list[tuple]:
    """One shape, a list of shapes or a build-shapes dict, as a list of tuples."""
    if shapes is None:
        return []
    if isinstance(shapes, dict):
        return [tuple(s) for s in shapes.values() if s is not None]
    shapes = tuple(shapes)
    if all(d is None or isinstance(d, int) for d in shapes):
        return [shapes] if shapes else []
    return [tuple(s) for s in shapes if s is not None]


def layer_macs(layer, input_shapes, output_shapes=None, *, c_in=None, c_out=None) -> int | None:
    """Multiply-accumulates of one call of ``layer`` on inputs of ``input_shapes`` (per sample).

    Args:
        layer: a Keras layer (tfopt wrappers count the layer they wrap; a nested model counts its
            own layers).
        input_shapes: the input shape, batch axis first, or a list of them (MultiHeadAttention:
            query, value, key).
        output_shapes: the output shape(s) if known, else computed by the layer. Defaults to None.
        c_in: input channels to count with instead of the input shape's last axis (channel
            pruning asks "what if"). Defaults to None.
        c_out: output channels (filters, units) to count with instead of the layer's.
            Defaults to None.

    Returns:
        The MACs, 0 for layers that do no multiply-accumulate, or None when a dimension the
        count needs is unknown.
    """
    shapes = _shape_list(input_shapes)
    if isinstance(layer, keras.Model):
        return count_macs(layer)
    if not shapes:
        return 0
    outs = _shape_list(output_shapes)
    spec = spec_of(layer)  # a wrapper's spec (keras.layers.Wrapper) counts the layer it wraps
    if spec is None or spec.macs is None:
        return 0
    return spec.macs(layer, shapes, outs[0] if outs else None, c_in=c_in, c_out=c_out)


def _graph(model):
    """The functional graph of a model (a built Sequential's too), or None for subclassed ones."""
    if isinstance(model, keras.Sequential):
        return getattr(model, "_functional", None)
    if hasattr(model, "_nodes_by_depth") and getattr(model, "_is_graph_network", True):
        return model
    return None


def _calls(model):
    """``(layer, input shapes, output shapes)`` for every call in ``model`` (not recursive)."""
    graph = _graph(model)
    if graph is not None:
        for depth in sorted(graph._nodes_by_depth, reverse=True):
            for node in graph._nodes_by_depth[depth]:
                op = node.operation
                if isinstance(op, L.InputLayer):
                    continue
                if isinstance(op, L.Layer):
                    ins = [tuple(t.shape) for t in node.input_tensors]
                else:  # a keras.ops call: constants are arguments too
                    ins = [tuple(a.shape) for a in node.arguments.args if hasattr(a, "shape")]
                outs = [tuple(t.shape) for t in node.outputs]
                yield op, ins, outs
        return
    # a subclassed model: its call is Python we cannot see, so each sublayer counts one call
    # with the shapes it was built with
    for layer in model._flatten_layers(include_self=False, recursive=False):
        yield from _built_calls(layer)


def _built_calls(layer):
    if isinstance(layer, keras.Model):
        yield layer, [], []
        return
    shapes = getattr(layer, "_build_shapes_dict", None)
    if shapes:
        yield layer, _shape_list(shapes), []
    elif not isinstance(layer, L.Wrapper):  # built without shapes: look at its sublayers
        for sub in layer._flatten_layers(include_self=False, recursive=False):
            yield from _built_calls(sub)


def count_macs(model) -> int:
    """MACs of one forward pass of ``model`` on one sample (see the module docstring).

    Args:
        model: a built Keras model (Sequential, Functional or subclassed).

    Returns:
        The sum over every layer call whose shapes are known.
    """
    total = 0
    for op, ins, outs in _calls(model):
        macs = layer_macs(op, ins, outs or None)
        total += macs or 0
    return int(total)


def count(model) -> dict:
    """``{"params", "macs", "flops", "source": "keras"}`` of a Keras model, per sample.

    Example:
        >>> count(keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]))
        {'params': 15, 'macs': 12, 'flops': 24, 'source': 'keras'}
    """
    macs = count_macs(model)
    return {"params": count_params(model), "macs": macs, "flops": 2 * macs, "source": "keras"}
