"""The layer-spec registry: what every technique and the MAC counter know about each layer type.

One `LayerSpec` per Keras layer (or keras.ops operation) class says:

- ``weights``: the weights a technique may substitute (prune's mask, cluster's centroid gather,
  QAT's fake-quant) and the channel axes of every per-channel weight (`Weight`);
- ``channels``: its role in the channel graph of `tfopt.prune.prune_channels`: ``"producer"``
  (makes new output channels, ``width`` names the config key that sets how many), ``"tied"``
  (channel i stays channel i: activations, pooling, BatchNorm, depthwise), ``"merge"``
  (element-wise over several inputs), ``"concat"``, ``"flatten"``, or None (not prunable through);
- ``macs``: multiply-accumulates of one call (see `tfopt._measure`);
- ``qat``: how QAT handles it: ``"substitute"`` (its own ``call`` with fake-quantized kernels,
  per channel where a `Weight` says ``per_channel``; ``fold_batchnorm``: a following BatchNorm
  folds in), another `QuantizeWrapper` kind (a rewrite TFLite needs, see quantize/_layers.py),
  ``"attention"`` (int8 projections around a float softmax), ``"same_scale"`` for ops that keep the int8 scale of their input, ``"preprocessing"``; or
  ``float_reason``: why it stays float;
- ``prune`` / ``cluster`` / ``lowrank``: whether those techniques wrap (factorize) it;
- ``activation``, ``transparent``, ``probabilities``: what QAT's range placement and the logits
  rule (`tfopt._training.outputs_probabilities`) see in it;
- ``dense``, ``attention``, ``batch_statistics``: what kind of layer it is, where a technique
  asks (a classifier head, the attention call signature, BatchNorm statistics): `spec_flag`.

Matching is one rule, `spec_of`: the most specific class of the layer's MRO that has a spec. A
subclass that overrides ``call`` is not trusted to read its weights the way its base does
(`guard` says so); register it. Users add their own layers with `register_layer`.

Example:
    >>> tfopt.register_layer(MyDense, weights={"kernel": {"in": 0, "out": 1}}, width="units")
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tfopt._backend import import_keras

keras = import_keras()
L = keras.layers

CHANNEL_ROLES = ("producer", "tied", "merge", "concat", "flatten")


@dataclass(frozen=True)
class Weight:
    """One weight of a layer, by the attribute its ``call`` reads.

    Attributes:
        attr: attribute path under the layer (``"_kernel"``, ``"_query_dense._kernel"``); the
            substitution wrapper swaps this attribute for ``f(weight)`` while the layer runs.
        out_axis: the axis indexing the layer's output channels, or None.
        in_axis: the axis indexing its input channels, or None.
        compress: prune / cluster / fake-quantize it (a kernel); False for a bias or a
            normalization's per-channel vectors (they only follow the channels).
        in_multiplied: the input axis holds ``c_in * depth_multiplier`` rows (separable pointwise).
        reduce_axis: the axis ``m_by_n`` sparsity groups along; None: m_by_n does not apply.
        per_channel: QAT fake-quantizes it per channel: one range per index of the axes from its
            channel axis to the end (depthwise: input channel x multiplier), as TFLite stores
            convolution kernels. False: one range for the tensor.
    """

    attr: str
    out_axis: int | None = None
    in_axis: int | None = None
    compress: bool = True
    in_multiplied: bool = False
    reduce_axis: int | None = None
    per_channel: bool = False


@dataclass(frozen=True)
class LayerSpec:
    """What tfopt knows about one layer class (see the module docstring)."""

    cls: type
    weights: tuple[Weight, ...] = ()
    channels: str | None = None
    width: str | None = None
    channel_check: Callable | None = None  # (layer, in_shape) -> reason it cannot be pruned through
    macs: Callable | None = None  # (layer, shapes, out, c_in, c_out) -> int | None; None: 0
    qat: str | None = None
    float_reason: str | None = None
    float_boundary: bool = False  # QAT: int8 values entering it (kept float) need a FloatBoundary
    fold_batchnorm: bool = False  # QAT: a BatchNormalization right after it folds into its kernel
    last_axis: bool = False  # it maps the last axis only: QAT runs N-D inputs as 2-D (one int8 FC)
    integer_inputs: bool = False  # its inputs are integer ids (Embedding): no int8 input range
    prune: bool = False
    cluster: bool = False
    lowrank: bool = False  # lowrank.factorize splits its kernel (a layer with ``width``)
    recurrent: bool = False  # a loop over time: TFLite lowers it to TensorList ops (export hints)
    activation: Callable | None = None  # (layer) -> name of the function it applies ("relu", ...)
    transparent: bool = False  # passes its input's values on at inference (noise, a QAT range)
    probabilities: bool = False  # outputs probabilities (softmax, sigmoid): the logits rule
    dense: bool = False  # fully connected: one (in, out) kernel, ``width`` its units (a
    #   classifier head `train.transfer` replaces, prune_channels' widest_dense scope)
    attention: bool = False  # called as (query, value, key=None): the pruning wrapper's signature
    batch_statistics: bool = False  # normalizes with moving batch statistics and a per-channel
    #   ``gamma`` (prune_channels' bn_gamma importance, _training.recalibrate_batchnorm)
    user: bool = False  # registered with register_layer

    def compressed(self) -> tuple[Weight, ...]:
        return tuple(w for w in self.weights if w.compress)


_REGISTRY: dict[type, LayerSpec] = {}


def _add(classes, **kwargs) -> None:
    for cls in classes if isinstance(classes, tuple | list) else (classes,):
        if cls is not None:
            _REGISTRY[cls] = LayerSpec(cls, **kwargs)


def spec_of(layer) -> LayerSpec | None:
    """The spec of ``layer`` (a layer, an operation or a class): the most specific class of its
    MRO that has one, or None."""
    cls = layer if isinstance(layer, type) else type(layer)
    for base in cls.__mro__:
        spec = _REGISTRY.get(base)
        if spec is not None:
            return spec
    return None


def register_spec(spec: LayerSpec) -> LayerSpec:
    """Puts ``spec`` in the registry for ``spec.cls`` (replacing any spec it had)."""
    _REGISTRY[spec.cls] = spec
    return spec


def classes_with(name: str) -> list[type]:
    """The registered classes whose spec sets the field ``name`` (Keras's first, then users')."""
    return [cls for cls, spec in _REGISTRY.items() if getattr(spec, name)]


def spec_flag(layer, name: str) -> bool:
    """Whether the spec of ``layer`` sets the boolean field ``name`` (False without a spec)."""
    spec = spec_of(layer)
    return spec is not None and bool(getattr(spec, name))


def overrides_call(layer, spec: LayerSpec) -> bool:
    """Whether ``layer`` is a subclass of ``spec.cls`` with a ``call`` of its own."""
    cls = type(layer)
    return cls is not spec.cls and getattr(cls, "call", None) is not getattr(spec.cls, "call", None)


def guard(layer, spec: LayerSpec | None = None) -> str | None:
    """Why no technique may substitute ``layer``'s weights (None when it may): a subclass with
    its own ``call``, Keras quantization, LoRA."""
    spec = spec or spec_of(layer)
    if spec is not None and overrides_call(layer, spec):
        return (
            f"a subclass of {spec.cls.__name__} ({type(layer).__module__}."
            f"{type(layer).__name__}) with its own call() may use its weights in its own way; "
            "describe it with tfopt.register_layer"
        )
    mode = getattr(layer, "quantization_mode", None)
    if mode:
        return f"already quantized by Keras (quantization_mode={mode!r})"
    if getattr(layer, "lora_enabled", False):
        return "LoRA is enabled on this layer"
    return None


def resolve(layer, path: str):
    """``(owner, attribute, value)`` for a dotted attribute path under ``layer``."""
    *parents, attr = path.split(".")
    owner = layer
    for p in parents:
        owner = getattr(owner, p)
    return owner, attr, getattr(owner, attr)


@contextlib.contextmanager
def substituted(layer, values: dict):
    """Runs the body with ``layer``'s weight attributes (``{path: tensor}``) replaced.

    The one weight-substitution mechanism: a technique computes ``f(weight)`` (a mask, a centroid
    gather, a fake-quant) and the layer runs its own ``call`` reading it (QAT also swaps a
    Keras layer's ``activation`` for linear, to range its input). Tensors are cast to the
    layer's compute dtype (mixed precision); the variables are put back afterwards.
    """
    targets = [(resolve(layer, path), value) for path, value in values.items()]
    compute_dtype = layer.compute_dtype
    try:
        for (owner, attr, _), value in targets:
            if getattr(value, "dtype", compute_dtype) != compute_dtype:  # not a function
                value = keras.ops.cast(value, compute_dtype)
            object.__setattr__(owner, attr, value)
        yield
    finally:
        for (owner, attr, variable), _ in targets:
            object.__setattr__(owner, attr, variable)


def channel_axis(weight: Weight) -> int | None:
    """The axis of ``weight`` that indexes channels (outputs, else inputs: depthwise)."""
    return weight.out_axis if weight.out_axis is not None else weight.in_axis


def weight_axes(layer, spec: LayerSpec | None = None) -> dict[int, Weight]:
    """``{id(variable): Weight}`` for the weights of ``layer`` its spec describes."""
    spec = spec or spec_of(layer)
    out = {}
    for w in spec.weights if spec else ():
        value = resolve(layer, w.attr)[2] if _has_path(layer, w.attr) else None
        if value is not None:
            out[id(value)] = w
    return out


def _has_path(layer, path: str) -> bool:
    owner = layer
    for p in path.split("."):
        owner = getattr(owner, p, None)
        if owner is None:
            return False
    return True


# -- registering a user's layer ---------------------------------------------------------------
def _weights_arg(weights) -> tuple[Weight, ...]:
    if not isinstance(weights, dict) or not weights:
        raise TypeError(
            "weights must be a non-empty dict {attribute: {'in': axis, 'out': axis}}, e.g. "
            f"{{'kernel': {{'in': 0, 'out': 1}}, 'bias': {{'out': 0}}}}. Received: weights={weights!r}"
        )
    out = []
    for attr, axes in weights.items():
        axes = {} if axes is None else axes
        if not isinstance(attr, str) or not isinstance(axes, dict) or set(axes) - {"in", "out"}:
            raise TypeError(
                "weights maps an attribute name to {'in': axis, 'out': axis} (either may be "
                f"missing). Received: weights[{attr!r}]={axes!r}"
            )
        # a weight with only an output axis (a bias) follows the channels; others are kernels
        kernel = axes.get("in") is not None or axes.get("out") is None
        out.append(
            Weight(
                attr, axes.get("out"), axes.get("in"), compress=kernel, reduce_axis=axes.get("in")
            )
        )
    return tuple(out)


def register_layer(
    cls: type,
    *,
    weights: dict,
    width: str | None = None,
    macs: Callable | None = None,
    quantize: bool = True,
    float_reason: str | None = None,
) -> LayerSpec:
    """Describes your own layer class so that prune, cluster, qat, prune_channels and the MAC
    counter handle it.

    Its ``call`` must read each weight from the attribute named in ``weights`` (e.g.
    ``self.kernel``): the techniques substitute ``f(weight)`` (a mask, a centroid gather, a
    fake-quant) for that attribute while ``call`` runs. A weight with an ``"in"`` axis is a kernel
    (pruned, clustered, quantized); one with only an ``"out"`` axis (a bias) follows the output
    channels. Register before calling a technique and before loading a ``.keras`` file.

    Args:
        cls: a ``keras.layers.Layer`` subclass.
        weights: ``{attribute: {"in": axis, "out": axis}}``: the axes of the input and output
            channels (either may be missing).
        width: the ``get_config`` key that sets the number of output channels (``"units"``); with
            it, `tfopt.prune.prune_channels` may remove output channels. Defaults to None (the
            layer's channels are left whole). With one ``{"in": 0, "out": 1}`` kernel the layer
            is fully connected, like Dense: `tfopt.train.transfer` may replace it as a
            classifier head, and prune_channels' ``scope: widest_dense`` counts it.
        macs: ``(layer, input_shapes, output_shapes) -> int`` for one call. Defaults to None:
            output positions x the kernels' sizes (right for a Dense-like layer).
        quantize: QAT fake-quantizes the kernels (per tensor) and tracks the output range.
            Defaults to True.
        float_reason: why QAT keeps the layer float (with ``quantize=False``). Defaults to None.

    Returns:
        The `LayerSpec` registered.

    Raises:
        TypeError: ``cls`` is not a Keras layer class, or ``weights`` is malformed.

    Example:
        >>> tfopt.register_layer(ScaledDense, weights={"kernel": {"in": 0, "out": 1},
        ...                                           "bias": {"out": 0}}, width="units")
    """
    if not (isinstance(cls, type) and issubclass(cls, L.Layer)):
        raise TypeError(f"cls must be a keras.layers.Layer subclass. Received: cls={cls!r}")
    specs = _weights_arg(weights)
    if width is not None and not all(w.out_axis is not None for w in specs):
        raise TypeError(
            f"width={width!r} removes output channels, so every weight needs an 'out' axis. "
            f"Received: weights={weights!r}"
        )
    spec = LayerSpec(
        cls,
        weights=specs,
        channels="producer" if width else None,
        width=width,
        dense=width is not None and _is_matrix(specs),
        macs=_user_macs(macs) if macs else _dense_like_macs,
        qat="substitute" if quantize else None,
        float_reason=None if quantize else (float_reason or "registered with quantize=False"),
        prune=True,
        cluster=True,
        user=True,
    )
    return register_spec(spec)


def _is_matrix(weights: tuple[Weight, ...]) -> bool:
    """One kernel, an (in, out) matrix (``{"in": 0, "out": 1}``): a fully-connected layer."""
    kernels = [w for w in weights if w.compress]
    return len(kernels) == 1 and (kernels[0].in_axis, kernels[0].out_axis) == (0, 1)


def unregister_layer(cls: type) -> None:
    """Forgets a class registered with `register_layer` (Keras's own specs stay)."""
    spec = _REGISTRY.get(cls)
    if spec is not None and spec.user:
        del _REGISTRY[cls]


def _user_macs(fn):
    def macs(layer, shapes, out, c_in=None, c_out=None):
        return fn(layer, shapes, out)

    return macs


# -- MACs -------------------------------------------------------------------------------------
def _prod(dims) -> int:
    return math.prod(int(d) for d in dims)


def _known(dims) -> bool:
    return all(d is not None for d in dims)


def _per_position(per_position, positions: str = "rows"):
    """A spec's ``macs``: positions x ``per_position(layer, c_in, c_out)`` (the MACs at one
    position, for the input / output channels given or the layer's own).

    ``positions``: ``"rows"`` (every axis but the batch and the last: Dense on (T, c_in) runs T
    times), ``"outputs"`` (a convolution's output positions) or ``"inputs"`` (a transposed
    convolution's input positions). None when a dimension it needs is unknown.
    """

    def macs(layer, shapes, out, c_in=None, c_out=None):
        x = shapes[0]
        if positions == "rows":
            pos = _prod(x[1:-1]) if _known(x[1:-1]) else None
        else:
            pos = _conv_positions(layer, x, out, transpose=positions == "inputs")
        if pos is None:
            return None
        return pos * per_position(layer, x[-1] if c_in is None else c_in, c_out)

    return macs


def _kernel_sizes(layer, c_in, c_out) -> int:
    """The sizes of the spec's kernels, with their channel axes set to ``c_in`` / ``c_out``."""
    total = 0
    for w in spec_of(layer).compressed():
        kernel = resolve(layer, w.attr)[2]
        size = _prod(kernel.shape)
        if c_in is not None and w.in_axis is not None:
            size = size // int(kernel.shape[w.in_axis]) * int(c_in)
        if c_out is not None and w.out_axis is not None:
            size = size // int(kernel.shape[w.out_axis]) * int(c_out)
        total += size
    return total


def _units(layer, c_out) -> int:
    return layer.units if c_out is None else c_out


def _filters(layer, c_out) -> int:
    return layer.filters if c_out is None else c_out


def _window(layer) -> int:
    return _prod(layer.kernel_size)


# the formulas of tfopt/_measure.py's table; a registered layer's default is its kernels' sizes
_dense_like_macs = _per_position(_kernel_sizes)
_dense_macs = _per_position(lambda layer, c_in, c_out: c_in * _units(layer, c_out))
_conv_macs = _per_position(
    lambda layer, c_in, c_out: (
        _window(layer) * (c_in // getattr(layer, "groups", 1)) * _filters(layer, c_out)
    ),
    "outputs",
)
_conv_transpose_macs = _per_position(
    lambda layer, c_in, c_out: _window(layer) * c_in * _filters(layer, c_out), "inputs"
)
_depthwise_macs = _per_position(
    lambda layer, c_in, c_out: _window(layer) * c_in * layer.depth_multiplier, "outputs"
)
_separable_macs = _per_position(  # the depthwise part + the pointwise part
    lambda layer, c_in, c_out: (
        c_in * layer.depth_multiplier * (_window(layer) + _filters(layer, c_out))
    ),
    "outputs",
)


def _einsum_macs(layer, shapes, out, c_in=None, c_out=None):
    """The product of every index size of the equation, less the batch axis: output elements
    x the kernel dimensions the equation contracts."""
    in_shape = tuple(shapes[0])
    equation = layer.equation.replace(" ", "")
    spec_in, rest = equation.split(",")
    spec_kernel = rest.split("->")[0].replace("...", "")
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


def _conv_positions(layer, x, out, transpose: bool):
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        return None  # the channel-override arithmetic assumes channels_last
    if transpose:
        spatial = x[1:-1]
    else:
        out = out if out is not None else layer.compute_output_shape(x)
        spatial = tuple(out)[1:-1]
    return _prod(spatial) if _known(spatial) else None


def _attention_macs(layer, shapes, out, c_in=None, c_out=None):
    from tfopt._measure import layer_macs

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
    macs = layer_macs(layer._output_dense, [(*query[:-1], heads, value_dim)])
    if macs is None:
        return None
    axes = layer._attention_axes or tuple(range(1, len(key) - 1))
    t, s = query[1:-1], [key[a] for a in axes]
    if not (_known(t) and _known(s)):
        return None
    return total + macs + heads * _prod(t) * _prod(s) * (key_dim + value_dim)


def _time_distributed_macs(layer, shapes, out, c_in=None, c_out=None):
    from tfopt._measure import layer_macs

    x = shapes[0]
    inner = layer_macs(layer.layer, [(x[0], *x[2:])])
    return None if inner is None or x[1] is None else inner * int(x[1])


def _bidirectional_macs(layer, shapes, out, c_in=None, c_out=None):
    from tfopt._measure import layer_macs

    parts = [layer_macs(layer.forward_layer, shapes), layer_macs(layer.backward_layer, shapes)]
    return None if None in parts else sum(parts)


def _rnn_macs(layer, shapes, out, c_in=None, c_out=None):
    """Time steps x (kernel + recurrent kernel sizes) per step."""
    cell = getattr(layer, "cell", None)
    kernel, recurrent = getattr(cell, "kernel", None), getattr(cell, "recurrent_kernel", None)
    x = shapes[0]
    if kernel is None or recurrent is None or len(kernel.shape) != 2 or x[1] is None:
        return None  # a custom cell or a ConvLSTM: not counted
    return (_prod(kernel.shape) + _prod(recurrent.shape)) * int(x[1])


def _wrapper_macs(layer, shapes, out, c_in=None, c_out=None):
    """The wrapped layer's (tfopt's pruning, QAT and clustering wrappers, any Wrapper)."""
    from tfopt._measure import layer_macs

    return layer_macs(layer.layer, shapes, out, c_in=c_in, c_out=c_out)


def _matmul_macs(op, shapes, out, c_in=None, c_out=None):
    """A keras.ops.matmul in a functional graph: output elements x the contracted dimension."""
    if len(shapes) == 2 and out is not None:
        out, contracted = tuple(out)[1:], shapes[0][-1]
        if _known(out) and contracted is not None:
            return _prod(out) * int(contracted)
    return 0


# -- channel checks (prune_channels) ------------------------------------------------------------
def _depthwise_check(layer, in_shape):
    if layer.depth_multiplier != 1:
        return f"depth_multiplier={layer.depth_multiplier} (only 1 is supported)"
    return None


def _batchnorm_check(layer, in_shape):
    if layer.axis not in (-1, len(in_shape) - 1):
        return f"BatchNormalization axis={layer.axis} is not the channel axis"
    return None


def _layernorm_check(layer, in_shape):
    axis = layer.axis if isinstance(layer.axis, list | tuple) else [layer.axis]
    if [a % len(in_shape) for a in axis] != [len(in_shape) - 1]:
        return f"LayerNormalization over axis={layer.axis} (only the last axis)"
    return None


def _prelu_check(layer, in_shape):
    return "PReLU with unknown channel count" if in_shape[-1] is None else None


def _activation_check(layer, in_shape):
    name = getattr(layer.activation, "__name__", str(layer.activation))
    if name in ("softmax", "log_softmax"):
        return f"activation {name!r} mixes channels"
    return None


def _rescaling_check(layer, in_shape):
    if np.size(layer.scale) != 1 or np.size(layer.offset) != 1:
        return "per-channel Rescaling"
    return None


# -- what an activation layer applies (QAT: TFLite fuses RELU / RELU6 into the op before) -------
def _relu_activation(layer) -> str:
    if layer.negative_slope or layer.threshold < 0:
        return "leaky_relu"
    if layer.threshold == 0 and layer.max_value in (None, 6.0):
        return "relu" if layer.max_value is None else "relu6"
    return "capped_relu"  # never negative, but not a function TFLite fuses


def _activation_name(layer) -> str:
    return getattr(layer.activation, "__name__", str(layer.activation))


# -- Keras's own layers ---------------------------------------------------------------------------
def _layers(*names) -> tuple:
    return tuple(getattr(L, n) for n in names if hasattr(L, n))


def _ops(*names) -> tuple:
    """keras.ops operation classes by name (they live in keras.src.ops.numpy, nn or math)."""
    from keras.src.ops import math as ops_math
    from keras.src.ops import nn as ops_nn
    from keras.src.ops import numpy as ops_numpy

    modules = (ops_numpy, ops_nn, ops_math)
    return tuple(getattr(m, n) for n in names for m in modules if hasattr(m, n))


_KERNEL = Weight("_kernel", out_axis=-1, in_axis=-2, reduce_axis=-2)
_CONV_KERNEL = Weight("_kernel", out_axis=-1, in_axis=-2, reduce_axis=-2, per_channel=True)
_BIAS = Weight("bias", out_axis=0, compress=False)
_PER_CHANNEL = tuple(
    Weight(a, in_axis=0, compress=False)
    for a in ("gamma", "beta", "moving_mean", "moving_variance")
)
_RECURRENT = "recurrent layer: TFLite runs its loop in float"
_NOT_YET = "not supported by tfopt QAT yet; kept float"
_NORM = "lowered by TFLite to mean/rsqrt ops with no int8 ranges; kept float"
_PREPROCESS = "input preprocessing: runs in float before the model input is quantized"


def _register_keras() -> None:
    conv = dict(channels="producer", width="filters", macs=_conv_macs, prune=True)
    fold = dict(qat="substitute", fold_batchnorm=True)
    _add(L.Dense, weights=(_KERNEL, _BIAS), channels="producer", width="units", macs=_dense_macs,
         last_axis=True, dense=True, prune=True, cluster=True, lowrank=True, **fold)  # fmt: skip
    _add(L.EinsumDense, weights=(Weight("_kernel", reduce_axis=-2),), macs=_einsum_macs, qat="einsum",
         float_boundary=True, prune=True)  # fmt: skip
    conv_kernel = dict(weights=(_CONV_KERNEL, _BIAS), cluster=True, lowrank=True)
    _add(L.Conv1D, qat="conv1d", fold_batchnorm=True, **conv_kernel, **conv)
    _add(L.Conv2D, **fold, **conv_kernel, **conv)
    _add(L.Conv3D, **conv_kernel,
         float_reason="TFLite has no int8 CONV_3D kernel; kept float", **conv)  # fmt: skip
    transpose = (Weight("kernel", out_axis=-2, in_axis=-1, reduce_axis=-2), _BIAS)
    conv_t = {**conv, "macs": _conv_transpose_macs}
    _add(L.Conv1DTranspose, weights=transpose, float_reason=_NOT_YET, **conv_t)
    _add(L.Conv2DTranspose, weights=transpose, **fold, **conv_t)
    _add(L.Conv3DTranspose, weights=transpose, float_reason="TFLite has no int8 kernel; kept float",
         **conv_t)  # fmt: skip
    depthwise = (
        Weight("kernel", in_axis=-2, per_channel=True),
        Weight("bias", in_axis=0, compress=False),
    )
    dw = dict(weights=depthwise, channels="tied", channel_check=_depthwise_check,
              macs=_depthwise_macs, prune=True, cluster=True)  # fmt: skip
    _add(L.DepthwiseConv1D, float_reason=_NOT_YET, **dw)
    _add(L.DepthwiseConv2D, **fold, **dw)
    separable = (
        Weight("depthwise_kernel", in_axis=-2, per_channel=True),
        Weight("pointwise_kernel", out_axis=-1, in_axis=-2, in_multiplied=True, reduce_axis=-2,
               per_channel=True),
        _BIAS,
    )  # fmt: skip
    sep = dict(weights=separable, channels="producer", width="filters", macs=_separable_macs,
               prune=True)  # fmt: skip
    _add(L.SeparableConv1D, float_reason=_NOT_YET, **sep)
    _add(L.SeparableConv2D, qat="separable", fold_batchnorm=True, **sep)
    _add(L.Embedding, weights=(Weight("_embeddings", out_axis=-1, reduce_axis=-1),),
         qat="substitute", integer_inputs=True, prune=True)  # fmt: skip
    mha = tuple(
        Weight(f"_{p}_dense._kernel", reduce_axis=-2) for p in ("query", "key", "value", "output")
    )
    _add(L.MultiHeadAttention, weights=mha, macs=_attention_macs, qat="attention",
         float_boundary=True, attention=True, prune=True)  # fmt: skip
    _add(L.GroupQueryAttention, float_boundary=True, attention=True,
         float_reason="attention kept float (only MultiHeadAttention gets int8 projections)")  # fmt: skip
    _add(L.BatchNormalization, weights=_PER_CHANNEL, channels="tied",
         channel_check=_batchnorm_check, qat="batchnorm", batch_statistics=True)  # fmt: skip
    _add(L.LayerNormalization, weights=_PER_CHANNEL[:2], channels="tied",
         channel_check=_layernorm_check, float_reason=_NORM)  # fmt: skip
    _add(_layers("GroupNormalization"), float_reason=_NORM)
    _add(_layers("UnitNormalization"),
         float_reason="lowered by TFLite to norm ops with no int8 ranges; kept float")  # fmt: skip
    _add(L.PReLU, weights=(Weight("alpha", in_axis=-1, compress=False),), channels="tied",
         channel_check=_prelu_check)  # fmt: skip
    _add(L.Rescaling, channels="tied", channel_check=_rescaling_check, qat="preprocessing",
         float_reason=_PREPROCESS)  # fmt: skip
    _add(L.Normalization, qat="preprocessing", float_reason=_PREPROCESS)
    _add(L.Activation, channels="tied", channel_check=_activation_check,
         activation=_activation_name)  # fmt: skip
    _add(L.ReLU, channels="tied", activation=_relu_activation)
    _add(_layers("LeakyReLU", "ELU"), channels="tied")
    _add(L.Softmax, probabilities=True)
    lstm = "recurrent layer: kept float (TFLite's int8 LSTM needs a calibrated "
    rnn = dict(macs=_rnn_macs, recurrent=True)
    _add(L.RNN, float_reason=_RECURRENT, **rnn)
    _add(L.GRU, float_reason="recurrent layer: TFLite runs its loop in float "
         "(no int8 GRU kernel)", **rnn)  # fmt: skip
    _add(L.LSTM, float_reason=lstm + "UNIDIRECTIONAL_SEQUENCE_LSTM)", **rnn)
    _add(_layers("ConvLSTM1D", "ConvLSTM2D"), float_reason=_RECURRENT, **rnn)
    _add(L.Wrapper, macs=_wrapper_macs)
    _add(L.TimeDistributed, macs=_time_distributed_macs)
    _add(L.Bidirectional, macs=_bidirectional_macs, float_reason=_RECURRENT, recurrent=True)
    _register_pass_through()
    _register_ops()


def _register_pass_through() -> None:
    """Layers that only move, select or pass on values, and the merges."""
    # channel i stays channel i, and the int8 scale stays the input's; identity at inference
    _add(_layers("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
                 "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization",
                 "Identity"), channels="tied", qat="same_scale", transparent=True)  # fmt: skip
    _add(_layers("MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "GlobalMaxPooling1D",
                 "GlobalMaxPooling2D", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D",
                 "Cropping1D", "Cropping2D", "Cropping3D", "AveragePooling1D", "AveragePooling2D",
                 "UpSampling1D", "UpSampling2D"), channels="tied", qat="same_scale")  # fmt: skip
    # channel i stays channel i; a range of their own in QAT
    _add(_layers("AveragePooling3D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
                 "GlobalAveragePooling3D", "GlobalMaxPooling3D", "UpSampling3D"),
         channels="tied")  # fmt: skip
    # TFLite's int8 RESIZE_* needs the output scale equal to the input's
    _add(_layers("Reshape", "Permute", "RepeatVector", "Masking", "Resizing"), qat="same_scale")
    _add(L.InputLayer, channels="tied", qat="same_scale")
    _add(L.Flatten, channels="flatten", qat="same_scale")
    _add(_layers("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"), channels="merge")
    _add(L.Concatenate, channels="concat")


def _register_ops() -> None:
    """keras.ops calls recorded in a functional graph (``x + y`` on symbolic tensors)."""
    merge = ("Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Maximum", "Minimum")
    _add(_ops(*merge), channels="merge")
    _add(_ops("Matmul"), macs=_matmul_macs)
    _add(_ops("ExpandDims", "Squeeze", "Transpose"), qat="same_scale")
    # ops that map each value on its own (keras.ops.relu6(x), MobileNetV3's hard-swish)
    elementwise = ("Relu", "Relu6", "HardSigmoid", "Silu", "HardSilu", "Gelu", "Tanh",
                   "Elu", "Selu", "Softplus", "Softsign", "LeakyRelu", "Abs", "Negative", "Exp",
                   "Log", "Sqrt", "Square", "Erf", "Clip")  # fmt: skip
    _add(_ops(*elementwise), channels="tied")
    _add(_ops("Sigmoid"), channels="tied", probabilities=True)
    _add(_ops("Softmax"), probabilities=True)


_register_keras()
