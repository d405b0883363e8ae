"""Params and multiply-accumulates (MACs) of a Keras model: the one counter tfopt uses everywhere
(benchmarks, run reports, channel-pruning plans).

**Params** are the weights of the plain model, what ``model.count_params()`` gives once tfopt's
wrappers are stripped: the variables that tfopt's pruning, QAT and clustering layers add
themselves (pruning masks and step counters, quantizer ranges and flags, cluster centroids,
assignments and masks) are bookkeeping, not params. BatchNormalization's moving statistics count,
as Keras counts them.

**MACs** are per sample (batch 1), per call of a layer, from the shapes it is really called with:

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

keras = import_keras()
L = keras.layers

# Modules whose layers' *own* variables are tfopt bookkeeping (masks, step counters, quantizer
# ranges, cluster centroids/assignments): the weights of the layers they wrap still count.
_BOOKKEEPING_MODULES = ("tfopt.prune.", "tfopt.quantize.", "tfopt.cluster.")

_CONV = (L.Conv1D, L.Conv2D, L.Conv3D)
_CONV_T = (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
_DEPTHWISE = (L.DepthwiseConv1D, L.DepthwiseConv2D)
_SEPARABLE = (L.SeparableConv1D, L.SeparableConv2D)


def _prod(dims) -> int:
    return math.prod(int(d) for d in dims)


def _known(dims) -> bool:
    return all(d is not None for d in dims)


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
        total += _prod(v.shape)
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


def _unwrap(layer):
    """The layer a tfopt wrapper (pruning, QAT, clustering) holds; other layers as they are."""
    while isinstance(layer, L.Wrapper) and _is_bookkeeping(layer):
        layer = layer.layer
    return layer


def _einsum_macs(layer, in_shape) -> int | None:
    """The product of every index size of the equation, less the batch axis: output elements
    x the kernel dimensions the equation contracts."""
    equation = layer.equation.replace(" ", "")
    spec_in, rest = equation.split(",")
    spec_kernel = rest.split("->")[0].replace("...", "")
    in_shape = tuple(in_shape)
    pre, _, post = spec_in.partition("...")
    n_ellipsis = len(in_shape) - len(pre) - len(post) if "..." in spec_in else 0
    ellipsis = list(in_shape[len(pre) : len(pre) + n_ellipsis])
    sizes = dict(zip(pre, in_shape))
    sizes.update(zip(post, in_shape[len(pre) + n_ellipsis :]))
    # the batch axis is the input's first: a letter, or the first axis the ellipsis stands for
    if pre:
        del sizes[pre[0]]
    else:
        ellipsis = ellipsis[1:]
    for letter, dim in zip(spec_kernel, layer.kernel.shape):
        sizes.setdefault(letter, dim)
    dims = [*sizes.values(), *ellipsis]
    return _prod(dims) if _known(dims) else None


def _attention_macs(layer, shapes) -> int | None:
    query = shapes[0]
    value = shapes[1] if len(shapes) > 1 else query
    key = shapes[2] if len(shapes) > 2 else value
    total = 0
    projections = (
        ("_query_dense", query),
        ("_key_dense", key),
        ("_value_dense", value),
        ("_gate_dense", query),
    )
    for attr, shape in projections:
        sub = getattr(layer, attr, None)
        if sub is None:
            continue
        macs = layer_macs(sub, [shape])
        if macs is None:
            return None
        total += macs
    heads, key_dim = layer.num_heads, layer.key_dim
    value_dim = layer.value_dim or key_dim
    out_in = (*query[:-1], heads, value_dim)
    macs = layer_macs(layer._output_dense, [out_in])
    if macs is None:
        return None
    axes = layer._attention_axes or tuple(range(1, len(key) - 1))
    t, s = query[1:-1], [key[a] for a in axes]
    if not (_known(t) and _known(s)):
        return None
    return total + macs + heads * _prod(t) * _prod(s) * (key_dim + value_dim)


def _rnn_step_macs(layer) -> int | None:
    cell = getattr(layer, "cell", None)
    kernel, recurrent = getattr(cell, "kernel", None), getattr(cell, "recurrent_kernel", None)
    if kernel is None or recurrent is None or len(kernel.shape) != 2:
        return None  # a custom cell or a ConvLSTM: not counted
    return _prod(kernel.shape) + _prod(recurrent.shape)


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
    op = _unwrap(layer)
    shapes = _shape_list(input_shapes)
    if isinstance(op, keras.Model):
        return count_macs(op)
    if not shapes:
        return 0
    x = shapes[0]
    outs = _shape_list(output_shapes)
    out = outs[0] if outs else None
    if isinstance(op, L.MultiHeadAttention):
        return _attention_macs(op, shapes)
    if isinstance(op, L.TimeDistributed):
        inner = layer_macs(op.layer, [(x[0], *x[2:])])
        return None if inner is None or x[1] is None else inner * int(x[1])
    if isinstance(op, L.Bidirectional):
        parts = [layer_macs(op.forward_layer, shapes), layer_macs(op.backward_layer, shapes)]
        return None if None in parts else sum(parts)
    if isinstance(op, L.RNN):
        step = _rnn_step_macs(op)
        return None if step is None or x[1] is None else step * int(x[1])
    if isinstance(op, L.Wrapper):
        return layer_macs(op.layer, shapes)
    c_in = x[-1] if c_in is None else c_in
    if isinstance(op, L.Dense):
        units = op.units if c_out is None else c_out
        return _prod(x[1:-1]) * c_in * units if _known(x[1:-1]) else None
    if isinstance(op, L.EinsumDense):
        return _einsum_macs(op, x)
    conv_like = (*_CONV, *_CONV_T, *_DEPTHWISE, *_SEPARABLE)
    if not isinstance(op, conv_like):
        return _op_macs(op, shapes, out)
    if getattr(op, "data_format", "channels_last") == "channels_first":
        return None  # the channel-override arithmetic below assumes channels_last
    k = _prod(op.kernel_size)
    if isinstance(op, _CONV_T):
        spatial = x[1:-1]
    else:
        out = out if out is not None else op.compute_output_shape(x)
        spatial = tuple(out)[1:-1]
    if not _known(spatial):
        return None
    pos = _prod(spatial)
    if isinstance(op, _CONV_T):
        return pos * k * c_in * (op.filters if c_out is None else c_out)
    if isinstance(op, _CONV):
        return (
            pos * k * (c_in // getattr(op, "groups", 1)) * (op.filters if c_out is None else c_out)
        )
    m = op.depth_multiplier
    if isinstance(op, _DEPTHWISE):
        return pos * k * c_in * m
    filters = op.filters if c_out is None else c_out
    return pos * k * c_in * m + pos * c_in * m * filters


def _op_macs(op, shapes, out) -> int:
    """keras.ops calls recorded in a functional graph: only a matrix product does MACs."""
    if type(op).__name__ == "Matmul" and len(shapes) == 2 and out is not None:
        out, contracted = tuple(out)[1:], shapes[0][-1]
        if _known(out) and contracted is not None:
            return _prod(out) * int(contracted)
    return 0


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
