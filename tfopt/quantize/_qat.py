"""`qat()`: rewrite a Keras 3 model for quantization-aware training that converts to int8 TFLite."""

from __future__ import annotations

from tfopt._backend import check_model, import_keras
from tfopt._layers import guard, spec_of
from tfopt._rewrite import (
    GraphRewrite,
    Report,
    attach_report,
    copy_layer,
    copy_model,
    copy_weights,
    is_graph_model,
    layer_filter,
    sublayer_slots,
)
from tfopt.quantize._attention import QuantizedMultiHeadAttention, attention_unquantizable
from tfopt.quantize._layers import (
    FUSED_ACTIVATIONS,
    ActivationQuantizer,
    FloatBoundary,
    QuantizeWrapper,
    check_preserve_clusters,
    cluster_plan,
    einsum_plan,
    qat_kind,
)
from tfopt.quantize._subclassed import (
    QuantizedSubclassModel,
    swap_in_attention,
    swap_in_wrapper,
)

keras = import_keras()
tree = keras.tree

SCHEMES = ("int8",)

# What QAT does with each layer type is in its spec (tfopt._layers): ``qat`` is a QuantizeWrapper
# kind, "same_scale" (ops that only move or select values: int8 in, same scale out, no range of
# their own; e.g. TFLite's AVERAGE_POOL_2D and RESIZE_* need the output scale equal to the
# input's) or "preprocessing" (kept float, the range is tracked after it); ``float_reason`` says
# why a layer stays float.


def _spec_qat(op) -> str | None:
    spec = spec_of(op)
    return None if spec is None else spec.qat


def _channels(op) -> str | None:
    spec = spec_of(op)
    return None if spec is None else spec.channels


def _same_scale(op) -> bool:
    return _spec_qat(op) == "same_scale"


def _preprocessing(op) -> bool:
    return _spec_qat(op) == "preprocessing"


def _float_reason(op) -> str | None:
    spec = spec_of(op)
    return None if spec is None else spec.float_reason


def _needs_boundary(op) -> bool:
    spec = spec_of(op)
    return spec is not None and spec.float_boundary


def _boundary(x):
    if isinstance(x, keras.KerasTensor) and _is_float(x):
        return FloatBoundary(name=f"float_boundary_{keras.backend.get_uid('float_boundary')}")(x)
    return x


def _activation(op) -> str | None:
    """The name of the function an activation layer applies (its spec's ``activation``)."""
    spec = spec_of(op)
    return None if spec is None or spec.activation is None else spec.activation(op)


def _is_fusable_activation(op) -> bool:
    """True for the activations TFLite fuses into the op before them (RELU, RELU6)."""
    return _activation(op) in FUSED_ACTIVATIONS


def _is_attention(op) -> bool:
    return _spec_qat(op) == "attention"


def _unquantizable(layer) -> str | None:
    """Why ``layer`` cannot be wrapped by QuantizeWrapper, or None if it can."""
    name = type(layer).__name__
    kind = qat_kind(layer)
    if kind is None:
        why = guard(layer)
        if why and spec_of(layer) is not None and spec_of(layer).qat:
            return f"{why}; kept float"
        return None if not layer.weights else f"{name} is not supported by tfopt QAT; kept float"
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return f"data_format={layer.data_format!r}: TFLite int8 kernels need channels_last"
    if getattr(layer, "groups", 1) != 1:
        return f"groups={layer.groups}: TFLite has no int8 grouped convolution"
    if kind == "batchnorm" and layer.axis not in (-1, len(layer.input.shape) - 1):
        return f"BatchNormalization(axis={layer.axis}) is not on the channel axis"
    why = guard(layer)
    if why:
        return f"{why}; kept float"
    if kind == "einsum" and einsum_plan(layer) is None:
        return (
            f"EinsumDense equation {layer.equation!r} (bias_axes={layer.bias_axes!r}) is not a "
            "reshaped Dense (x @ W over x's trailing axes), the form tfopt QAT runs as one int8 "
            "FULLY_CONNECTED; kept float"
        )
    return None


def _bits_rule(bits):
    """``layer -> weight bits`` for ``qat(bits=)``: the last regex key found in the name wins."""
    if bits is None:
        return lambda layer: 8
    if not isinstance(bits, dict):
        raise TypeError(
            f"bits must be a dict {{layer regex: 4 or 8}}. Received: bits={bits!r} of type "
            f"{type(bits).__name__}"
        )
    for key, value in bits.items():
        if value not in (4, 8) or isinstance(value, bool):
            raise ValueError(f"bits values must be 4 or 8. Received: bits[{key!r}]={value!r}")
    rules = [(layer_filter(k), v) for k, v in bits.items()]

    def rule(layer) -> int:
        found = 8
        for select, value in rules:
            if select(layer):
                found = value
        return found

    return rule


def qat(
    model,
    *,
    scheme: str = "int8",
    filters=None,
    preserve_sparsity: bool = True,
    preserve_clusters: bool | str = "auto",
    bits: dict | None = None,
):
    """Returns a quantization-aware-training copy of ``model`` (the model itself is not changed).

    Weights are fake-quantized to int8 (per output channel for convolutions, per tensor for Dense,
    EinsumDense, Conv2DTranspose and Embedding), BatchNormalization layers that follow a Conv/Dense
    are folded into it, and activation ranges are tracked (moving average of min/max) where
    TFLite's int8 kernels need them: model inputs, outputs of fused Conv/Dense+BatchNorm+ReLU, Add,
    Concatenate, Multiply, pooling and standalone activations. MultiHeadAttention becomes a
    `QuantizedMultiHeadAttention`: int8 query/key/value/output projections around a float scaled
    dot product and softmax. Layers tfopt cannot quantize (RNNs, LayerNormalization, EinsumDense
    that is not a reshaped Dense, unknown layers) stay float and are listed with the reason in
    ``returned_model.qat_report``. Fit the result as usual, then export it with
    ``tfopt.export.tflite(qat_model, path, quantization="int8")`` (no representative data needed).

    A subclassed model is copied with ``from_config(get_config())`` and its sublayers (also those
    of custom layers it holds) are swapped in place; the result is a functional model around a
    `QuantizedSubclassModel`, which records the swaps so that the ``.keras`` file loads when the
    model class is registered with ``keras.saving.register_keras_serializable``.

    Args:
        model: a Keras 3 model: Sequential (built), functional or subclassed.
        scheme: the quantization scheme; only ``"int8"`` (int8 weights and activations).
            Defaults to "int8".
        filters: which layers to quantize: a regex matched against layer names, a list of names,
            or a callable ``layer -> bool``. Layers not selected stay float. Defaults to None
            (all supported layers).
        preserve_sparsity: keep exact zeros of kernels (e.g. of a pruned and stripped model) at
            zero during QAT and in the int8 file. Defaults to True.
        preserve_clusters: keep the clusters of a clustered (and stripped) model's kernels, as
            tfmot's cluster-preserving QAT does: each weight's cluster is fixed when the wrapper
            is built, the cluster values (centroids) train, with the gradients of their weights
            summed, and the fake-quant applies to the gathered kernel, so the int8 file holds at
            most as many distinct values per kernel (per channel for a per-channel clustering)
            as the clustered model. ``"auto"``: for each kernel with at most 256 distinct
            values (one codebook for the kernel, else one per channel) whose non-zero values are
            each held by 2 or more weights on average (a trained float kernel holds each value
            once), so a clustered model keeps its clusters and a float one trains as
            usual. True: every kernel with at most 256 distinct values (per codebook). False:
            never. The report says which kernels keep their clusters. Defaults to "auto".
        bits: per-layer weight bits, ``{layer regex: 4 or 8}`` (the last matching key wins;
            other layers 8). 4-bit weights are fake-quantized to 15 levels and the TFLite
            converter stores them as INT4 (packed, half the bytes) with int8 activations; LiteRT
            and TFLite Micro run Conv2D and FullyConnected with them. Sequential and functional
            models only. Defaults to None (every layer 8).

    Returns:
        A new, uncompiled ``keras.Model`` with `QuantizeWrapper` and `ActivationQuantizer` layers
        and a ``tfopt_report`` attribute (`tfopt.Report`, also ``qat_report``; its ``details`` hold
        the ``folded`` BatchNorms and the activation ``ranges``).

    Raises:
        TypeError: ``model`` is not a Keras 3 model, ``filters`` has the wrong type, or a
            subclassed model does not round-trip through ``get_config`` / ``from_config``.
        ValueError: an unknown ``scheme``, a ``preserve_clusters`` that is not "auto", True or
            False, or a Sequential or subclassed model that is not built.

    Example:
        >>> q = tfopt.quantize.qat(model)
        >>> q.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        >>> q.fit(x, y, epochs=2)
        >>> tfopt.export.tflite(q, "m.tflite", quantization="int8")
    """
    check_model(model)
    if scheme not in SCHEMES:
        raise ValueError(f"Unrecognized scheme={scheme!r}. Supported schemes are: {list(SCHEMES)}")
    check_preserve_clusters(preserve_clusters)
    selected = layer_filter(filters)
    _bits_rule(bits)  # checks bits
    report = Report("qat", details={"folded": {}, "ranges": []})
    preserve = {"sparsity": preserve_sparsity, "clusters": preserve_clusters}
    if is_graph_model(model):
        new = _QATRewrite(model, selected, preserve, report, bits).run()
    elif bits is not None:
        raise ValueError(
            "bits= (per-layer weight bits) applies to Sequential and functional models; "
            f"{type(model).__name__} is subclassed."
        )
    else:
        new = _rewrite_subclassed(model, selected, preserve, report)
    return attach_report(new, report, "qat_report")


class _Ranges:
    """Creates uniquely named ActivationQuantizers and records them in the report."""

    def __init__(self, report: Report):
        self.report = report
        self.used: set[str] = set()

    def name(self, base: str) -> str:
        name, i = f"{base}_range", 1
        while name in self.used:
            i += 1
            name = f"{base}_range_{i}"
        self.used.add(name)
        self.report.details["ranges"].append(name)
        return name

    def __call__(self, x, base: str, nonnegative: bool = False):
        return ActivationQuantizer(name=self.name(base), nonnegative=nonnegative)(x)


def _is_relu(op) -> bool:
    """Whether ``op``'s output is never negative: any ReLU without a negative slope or threshold
    (also a capped one TFLite cannot fuse)."""
    return _activation(op) in (*FUSED_ACTIVATIONS, "capped_relu")


def _is_float(t) -> bool:
    return "float" in str(getattr(t, "dtype", ""))


class _QATRewrite(GraphRewrite):
    """Rebuilds a graph model with QAT layers: wrappers (BatchNorm folded), activation ranges."""

    def __init__(self, model, selected, preserve, report, bits=None):
        super().__init__(model, "qat()")
        self.selected, self.preserve, self.report = selected, preserve, report
        self.bits, self.weight_bits = bits, _bits_rule(bits)
        self.ranges = _Ranges(report)
        for layer in self.func.layers:
            self.ranges.used.add(layer.name)

    def nested(self, model):  # a nested model is quantized on its own
        new = qat(
            model,
            filters=self.selected,
            preserve_sparsity=self.preserve["sparsity"],
            preserve_clusters=self.preserve["clusters"],
            bits=self.bits,
        )
        self.report.merge(new.qat_report, model.name)
        return new

    def wants_range(self, t) -> bool:
        """Whether the value ``t`` needs its own int8 range (fused activations move it after)."""
        if not _is_float(t):
            return False
        user = self.sole_consumer(t)
        if user is not None and _preprocessing(user.operation):
            return False  # float preprocessing (e.g. Rescaling then Normalization) reads floats
        if user is not None and _channels(user.operation) == "concat":
            # TFLite's CONCATENATION has one scale for its inputs and output: the converter gives
            # an input without a range of its own the output's (tfmot's ConcatTransform); a
            # range here would only add a requantize
            return False
        return not (user is not None and _is_fusable_activation(user.operation))

    def on_input(self, t, x):
        users = self.consumers.get(id(t), [])
        preprocessed = users and all(_preprocessing(u.operation) for u in users)
        # an input that is only rescaled/normalized is quantized after the preprocessing
        name = t._keras_history.operation.name
        return self.ranges(x, name) if _is_float(t) and not preprocessed else x

    def on_outputs(self, outputs: list) -> list:
        # model outputs always get a range (a pass-through last op, e.g. Flatten, would lack one)
        return [
            y if _has_range(y) or not _is_float(y) else self.ranges(y, "output") for y in outputs
        ]

    def on_node(self, node, args, kwargs):
        op = node.operation
        if isinstance(op, keras.Model):
            return self.call(op, args, kwargs)
        cls = type(op).__name__
        attention = _is_attention(op)
        if attention:
            reason = attention_unquantizable(op)
            if reason is None and not self.selected(op):
                reason = "excluded by filters"
            if reason is None:
                return _quantized_attention(op, args, kwargs, self.layers, self.ranges, self.report)
        else:
            reason = _unquantizable_built(op) if isinstance(op, keras.layers.Layer) else None
        if _float_reason(op):
            reason = _float_reason(op)
        wrappable = qat_kind(op) is not None and reason is None
        if wrappable and not self.selected(op):
            wrappable, reason = False, "excluded by filters"
        single = len(node.outputs) == 1
        if wrappable and single and all(v is None for v in kwargs.values()):
            return self.wrapped(node, op, args)
        if reason is not None and isinstance(op, keras.layers.Layer):
            if id(op) not in self.layers:
                self.report.skip(op, reason)
            if _needs_boundary(op) or attention:
                args, kwargs = tree.map_structure(_boundary, (args, kwargs))
        outputs = self.call(op, args, kwargs)
        flat = tree.flatten(outputs)
        if not _same_scale(op):
            base = getattr(op, "name", cls.lower())
            relu = _is_relu(op)
            flat = [
                self.ranges(y, base, relu) if self.wants_range(t) else y
                for t, y in zip(node.outputs, flat)
            ]
        return flat

    def wrapped(self, node, op, args):
        """Calls the `QuantizeWrapper` of ``op`` (with a following BatchNorm folded in)."""
        if id(op) in self.layers:
            return self.layers[id(op)](*args)
        out_t = node.outputs[0]
        bn_node = None
        user = self.sole_consumer(out_t)
        if (
            spec_of(op).fold_batchnorm
            and user is not None
            and qat_kind(user.operation) == "batchnorm"
            and self.calls[id(op)] == 1
            and self.calls[id(user.operation)] == 1
            and _unquantizable(user.operation) is None
            and getattr(op.activation, "__name__", "") == "linear"
            and self.selected(user.operation)
        ):
            bn_node = user
        final_t = bn_node.outputs[0] if bn_node is not None else out_t
        bn = copy_layer(bn_node.operation) if bn_node is not None else None
        k, per_channel = cluster_plan(op, self.preserve["clusters"]) or (None, False)
        wrapper = QuantizeWrapper(
            copy_layer(op),
            batchnorm=bn,
            quantize_output=self.wants_range(final_t)
            or (self.calls[id(op)] > 1 and _is_float(final_t)),
            preserve_sparsity=self.preserve["sparsity"],
            weight_bits=self.weight_bits(op),
            clusters=k,
            clusters_per_channel=per_channel,
            name=f"quant_{op.name}",
        )
        outputs = wrapper(*args)
        copy_weights(op, wrapper.layer)
        if bn is not None:
            copy_weights(bn_node.operation, bn)
            self.skip_nodes.add(id(bn_node))
            self.report.details["folded"][bn_node.operation.name] = op.name
        wrapper.update_mask()
        wrapper.update_clusters()
        self.layers[id(op)] = wrapper
        self.report.change(op, _describe(wrapper))
        self.tensors[id(final_t)] = outputs
        return None  # stored above: the output is the folded BatchNorm's


def _quantized_attention(op, args, kwargs, clones, ranges, report):
    """Calls the `QuantizedMultiHeadAttention` copy of ``op`` on the node's inputs.

    Query, key and value get an int8 range first if nothing upstream gave them one, so that the
    projections read int8 inputs.
    """
    new_op = clones.get(id(op))
    first = new_op is None
    if first:
        new_op = copy_layer(op, config=op.get_config(), cls=QuantizedMultiHeadAttention)
        clones[id(op)] = new_op
    ranged: dict[int, object] = {}

    def with_range(x):
        if not isinstance(x, keras.KerasTensor) or not _is_float(x) or _has_range(x):
            return x
        if id(x) not in ranged:
            ranged[id(x)] = ranges(x, f"{op.name}_input")
        return ranged[id(x)]

    args = [with_range(a) for a in args]
    kwargs = {k: with_range(v) if k in ("query", "value", "key") else v for k, v in kwargs.items()}
    outputs = new_op(*args, **kwargs)
    if first:
        new_op.copy_projection_weights(op)
        report.change(op, _describe_attention(new_op))
    return outputs


def _describe_attention(layer) -> str:
    names = ", ".join(layer.projections())
    text = (
        f"MultiHeadAttention, per-tensor {names} projection weights (int8 matmuls); "
        "query-key scores and softmax run in float"
    )
    if "gate" in layer.projections():  # the gate multiply sits between the two
        return text + ", so does softmax x value"
    return text + ", softmax x value in int8"


def _has_range(y) -> bool:
    hist = getattr(y, "_keras_history", None)
    if hist is None:
        return False
    op = hist.operation
    seen = 0
    while _same_scale(op) and seen < 100:  # ranges pass through shape ops
        parents = op._inbound_nodes[-1].input_tensors if op._inbound_nodes else []
        if not parents:
            return False
        op = parents[0]._keras_history.operation
        seen += 1
    if isinstance(op, ActivationQuantizer | QuantizedMultiHeadAttention):
        return True
    return isinstance(op, QuantizeWrapper) and op.quantize_output


def _describe(wrapper: QuantizeWrapper) -> str:
    spec = spec_of(wrapper.layer)
    if wrapper.kind == "batchnorm":
        per = "int8 multiply + add"
    else:
        granularity = "per-channel" if wrapper._weight().per_channel else "per-tensor"
        per = f"{granularity} {'embeddings' if spec.integer_inputs else 'weights'}"
        per += {
            "conv1d": " (run as 2-D conv)",
            "einsum": " (run as one matmul)",
        }.get(wrapper.kind, " (its own call, a registered layer)" if spec.user else "")
    text = f"{type(wrapper.layer).__name__}, {per}"
    if wrapper.weight_bits != 8:
        text = text.replace(" weights", f" int{wrapper.weight_bits} weights", 1)
    if wrapper.batchnorm is not None:
        text += f", folded {wrapper.batchnorm.name}"
    if wrapper.mask is not None and float(keras.ops.min(wrapper.mask)) == 0.0:
        zeros = 1.0 - float(keras.ops.mean(wrapper.mask))
        text += f", sparsity {zeros:.1%} preserved"
    if wrapper.clusters is not None:
        text += f", {wrapper.cluster_summary()} preserved"
    return text


# -- subclassed models --------------------------------------------------------------------------


def _rewrite_subclassed(model, selected, preserve, report):
    """Copies a subclassed model and swaps its attribute layers for QAT wrappers."""
    copy = copy_model(model, "qat()")
    shape = (None, *copy.get_build_config()["input_shape"][1:])
    swaps: list[dict] = []
    _plan_swaps(copy, model, selected, preserve, report, swaps, path=[], prefix="")
    wrapped = QuantizedSubclassModel(
        copy,
        swaps=swaps,
        model_input_shape=shape,
        preserve_sparsity=preserve["sparsity"],
        name=f"quant_{copy.name}",
    )
    # no range on the input here: the wrappers track their own input ranges
    inputs = keras.Input(batch_shape=shape, name="input")
    return keras.Model(inputs, wrapped(inputs), name=model.name)


def _plan_swaps(parent, original, selected, preserve, report, swaps, path, prefix):
    """Swaps each quantizable sublayer of ``parent`` (recursively) for a QuantizeWrapper and
    records its attribute path; reports the layers (by their names in ``original``, the user's
    model) quantized and left float."""
    seen: set[int] = set()
    for attr, index, layer in list(sublayer_slots(parent)):
        if isinstance(layer, QuantizeWrapper) or id(layer) in seen:
            continue
        seen.add(id(layer))
        step = [*path, [attr, index]]
        source = getattr(original, attr, None)
        source = source if index is None or source is None else source[index]
        if not isinstance(source, keras.layers.Layer):
            source = layer
        name = f"{prefix}{source.name}"
        if _is_attention(layer):
            reason = attention_unquantizable(layer)
            if reason is None and not selected(source):
                reason = "excluded by filters"
            if reason is not None:
                report.skip(layer, reason, name=name)
                continue
            new = swap_in_attention(parent, [[attr, index]], name=source.name)
            swaps.append({"path": step, "name": new.name, "kind": "attention"})
            report.change(layer, _describe_attention(new), name=name)
            report.details["ranges"] += [
                f"{new.name}/{p.name}/input_range" for p in new.projections().values()
            ]
            continue
        kind = qat_kind(layer)
        container = kind is None and not _float_reason(layer) and sublayer_slots(layer)
        graph = is_graph_model(layer)
        custom = not type(layer).__module__.startswith("keras.")
        if custom and container and next(container, None) is not None and not graph:
            # a user's layer or subclassed model made of layers: quantize what is inside
            _plan_swaps(layer, source, selected, preserve, report, swaps, step, f"{name}/")
            continue
        reason = _float_reason(layer) or _unquantizable_built(layer)
        if kind is not None and reason is None and not selected(source):
            reason = "excluded by filters"
        if kind is not None and reason is None:
            quantize_input = not spec_of(layer).integer_inputs  # see QuantizedSubclassModel
            clusters = cluster_plan(layer, preserve["clusters"])
            wrapper = swap_in_wrapper(
                parent,
                [[attr, index]],
                name=f"quant_{source.name}",
                preserve_sparsity=preserve["sparsity"],
                quantize_input=quantize_input,
                clusters=clusters,
            )
            wrapper.update_clusters()
            swaps.append(
                {
                    "path": step,
                    "name": wrapper.name,
                    "kind": "wrapper",
                    "quantize_input": quantize_input,
                    "clusters": None if clusters is None else list(clusters),
                }
            )
            report.change(layer, _describe(wrapper), name=name)
            if quantize_input:
                report.details["ranges"].append(f"{wrapper.name}/input_range")
        elif reason is not None:
            report.skip(layer, reason, name=name)
    for layer in getattr(parent, "_layers", []):
        swapped = isinstance(layer, QuantizeWrapper | QuantizedMultiHeadAttention)
        if id(layer) not in seen and layer.weights and not swapped:
            report.skip(
                layer,
                "held in an attribute that is not a layer, list or tuple (e.g. a dict), which "
                "qat() does not rewrite; kept float",
                name=f"{prefix}{layer.name}",
            )


def _unquantizable_built(layer):
    try:
        return _unquantizable(layer)
    except Exception:  # layer.input is unavailable for a layer called eagerly
        if qat_kind(layer) == "batchnorm" and layer.axis not in (-1,):
            return f"BatchNormalization(axis={layer.axis}) is not on the channel axis"
        return None
