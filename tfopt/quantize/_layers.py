"""QAT layers: an activation range tracker and a weight fake-quant wrapper.

Both emit ``keras.quantizers.fake_quant_with_min_max_vars`` (``tf.quantization.fake_quant_*`` on the
TensorFlow backend), which the TFLite converter turns into int8 kernels without representative data.
"""

from __future__ import annotations

import math
import re

import numpy as np

from tfopt._backend import import_keras
from tfopt._layers import (
    Weight,
    _add,
    channel_axis,
    overrides_call,
    resolve,
    spec_of,
    substituted,
)
from tfopt.cluster._layers import exact_codebook, gather_rows, kernel_rows, rows_to_kernel

keras = import_keras()
ops = keras.ops
fake_quant = keras.quantizers.fake_quant_with_min_max_vars

# Activations TFLite fuses into the op before them (their outputs are never negative).
FUSED_ACTIVATIONS = ("relu", "relu6")

# The smallest weight range: keeps the scale of an all-zero (pruned) channel valid.
_MIN_RANGE = 1e-6

# The QuantizeWrapper kinds a layer spec's ``qat`` may name (tfopt._layers). "substitute": the
# layer runs its own call with fake-quantized kernels (`tfopt._layers.substituted`), the way prune
# and cluster substitute theirs. The others run an op of their own, each for a reason of TFLite's:
# "conv1d" runs as a 2-D conv so that the per-channel axis of the kernel TFLite stores is last;
# "separable" needs an int8 range between its depthwise and pointwise halves, which its own call
# (one fused op) has no place for; "einsum" runs as one matmul (one int8 FULLY_CONNECTED);
# "batchnorm" (standalone) runs as multiply + add with a range in between.
WRAPPER_KINDS = ("substitute", "conv1d", "separable", "einsum", "batchnorm")

# qat(preserve_clusters=): the most centroids a kept codebook holds (a kernel with more distinct
# values per codebook is not treated as clustered)
MAX_CENTROIDS = 256


def qat_kind(layer) -> str | None:
    """The `QuantizeWrapper` kind of ``layer`` from its spec, or None when QAT does not wrap it."""
    spec = spec_of(layer)
    if spec is None or spec.qat not in WRAPPER_KINDS or overrides_call(layer, spec):
        return None
    return spec.qat


def qat_weight(layer, kind: str | None = None) -> Weight | None:
    """The spec of the kernel a `QuantizeWrapper` of ``layer`` masks, folds into, fake-quantizes
    and (with clusters) gathers: the first kernel, the pointwise one of a separable convolution,
    None for a BatchNormalization."""
    kind = kind or qat_kind(layer)
    if kind in (None, "batchnorm"):
        return None
    kernels = spec_of(layer).compressed()
    return kernels[-1] if kind == "separable" else kernels[0]


def check_preserve_clusters(value) -> None:
    """Raises the ValueError of a ``preserve_clusters`` that is not "auto", True or False."""
    if not any(value is v for v in (True, False)) and not (
        isinstance(value, str) and value == "auto"
    ):
        raise ValueError(
            "preserve_clusters must be 'auto', True or False (bool). Received: "
            f"preserve_clusters={value!r}"
        )


def cluster_plan(layer, preserve_clusters="auto") -> tuple[int, bool] | None:
    """How QAT keeps the clusters of ``layer``'s kernel: ``(k, per_channel)``, or None.

    One codebook for the kernel when it holds at most `MAX_CENTROIDS` distinct values (a
    per-channel clustering keeps its structure in it too: each channel's weights stay on their
    own values), else one per channel (the axis of `tfopt.cluster`'s ``per_channel``) when each
    holds at most that many; ``k`` is the most distinct values of a codebook. ``"auto"`` also
    asks that the kernel look clustered: at least 2 distinct values, and each non-zero value held
    by 2 or more weights on average (a trained float kernel, pruned or not, holds each value once;
    a clustered one ``n_clusters`` values).
    """
    check_preserve_clusters(preserve_clusters)
    weight = qat_weight(layer)
    if preserve_clusters is False or weight is None or not layer.built:
        return None
    kernel = np.asarray(ops.convert_to_numpy(resolve(layer, weight.attr)[2]))
    if preserve_clusters == "auto":
        nonzero = kernel[kernel != 0]
        if np.unique(kernel).size < 2 or 2 * np.unique(nonzero).size > nonzero.size:
            return None
    axis = channel_axis(weight) % kernel.ndim
    for per_channel in (False, True):
        k = max(np.unique(row).size for row in kernel_rows(kernel, axis, per_channel))
        if k <= MAX_CENTROIDS:
            return k, per_channel
    return None


@keras.saving.register_keras_serializable(package="tfopt")
class ActivationQuantizer(keras.layers.Layer):
    """Fake-quantizes a tensor to 8 bits with a range tracked as a moving average of min/max.

    The first training batch sets the range; later batches move it with ``momentum``. The range
    always contains 0 (TFLite's int8 zero point must be exact).

    Args:
        momentum: weight of the old range in the moving average. Defaults to 0.99.
        num_bits: bits of the integer type. Defaults to 8.
        nonnegative: the input is never negative (a ReLU's output): the range starts at 0 and
            training skips the batch-minimum reduction. Defaults to False.
        **kwargs: `keras.layers.Layer` arguments (``name``, ...).

    Example:
        >>> y = tfopt.quantize.ActivationQuantizer(name="q_out")(x)
    """

    def __init__(
        self, *, momentum: float = 0.99, num_bits: int = 8, nonnegative: bool = False, **kwargs
    ):
        super().__init__(**kwargs)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1). Received: momentum={momentum}")
        self.momentum = float(momentum)
        self.num_bits = int(num_bits)
        self.nonnegative = bool(nonnegative)
        self.supports_masking = True

    def build(self, input_shape):
        zeros = keras.initializers.Zeros()
        # "mean": under a tf.distribute strategy every replica's update is averaged, so the
        # replicas keep one range (with "none" each replica would drift to its own batches' range)
        sync = dict(shape=(), initializer=zeros, trainable=False, aggregation="mean")
        self.range_min = self.add_weight(name="min", **sync)
        self.range_max = self.add_weight(name="max", **sync)
        self.initialized = self.add_weight(name="initialized", **sync)

    def call(self, x, training=None):
        if training:
            xs = ops.stop_gradient(x)
            # each reduction is a full pass over the activation: a ReLU's minimum is known
            self._track(0.0 if self.nonnegative else ops.min(xs), ops.max(xs))
        return self._quantize(x)

    def _track(self, bmin, bmax):
        """Moves the range towards a batch's ``[bmin, bmax]`` (sets it on the first batch)."""
        first = ops.equal(self.initialized, 0.0)
        m = self.momentum
        self.range_min.assign(ops.where(first, bmin, m * self.range_min + (1 - m) * bmin))
        self.range_max.assign(ops.where(first, bmax, m * self.range_max + (1 - m) * bmax))
        self.initialized.assign(1.0)

    def _quantize(self, x):
        lo = ops.minimum(self.range_min, 0.0)
        hi = ops.maximum(ops.maximum(self.range_max, 0.0), lo + _MIN_RANGE)
        return mark_int8(fake_quant(x, lo, hi, num_bits=self.num_bits))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "momentum": self.momentum,
            "num_bits": self.num_bits,
            "nonnegative": self.nonnegative,
        }


def mark_int8(x):
    """Tags ``x`` as fake-quantized to its int8 range (a Python attribute, like Keras's masks)."""
    try:
        x._tfopt_int8 = True
    except AttributeError:  # a tensor type without attributes: the tag is only an optimization
        pass
    return x


def is_int8(x) -> bool:
    """Whether ``x`` is the output of an int8 range (see `mark_int8`).

    A `QuantizeWrapper` that tracks its input range skips it for such inputs: a second range on
    an int8 tensor would only requantize it, and before a reshape TFLite's converter rejects two
    scales on one tensor.
    """
    return bool(getattr(x, "_tfopt_int8", False))


def einsum_plan(layer) -> tuple[int, tuple[int, ...]] | None:
    """How to run an ``EinsumDense`` as ``reshape(x, (-1, K)) @ reshape(kernel, (K, N))``.

    That holds when the axes it contracts end the input, the output is the input's other axes
    followed by the kernel's other axes, and the bias spans only kernel axes: e.g. attention's
    query/key/value (``abc,cde->abde``) and output (``abcd,cde->abe``) projections, or a kernel
    stored transposed (``abc,dc->abd``).

    Returns:
        ``(number of contracted input axes, kernel axis order)``: transposing the kernel by that
        order puts the contracted axes first (in input order), then the output axes. None if the
        equation is not of that form.
    """
    eq = layer.equation.replace(" ", "")
    match = re.fullmatch(r"([a-z.]+),([a-z]+)->([a-z.]+)", eq)
    if match is None:
        return None
    x, k, out = match.groups()
    n = sum(c in x for c in k)
    contracted, free = x[len(x) - n :], x[: len(x) - n]
    kept = out[len(free) :]
    if (
        n == 0
        or len(set(k)) != len(k)
        or set(contracted) != set(k) - set(kept)
        or not out.startswith(free)
        or set(kept) != set(k) - set(contracted)
        or (layer.bias_axes and not set(layer.bias_axes) <= set(kept))
    ):
        return None
    return n, tuple(k.index(c) for c in contracted + kept)


def _symmetric(w, axis=None, bits: int = 8):
    """Symmetric narrow-range fake-quant of a weight: per tensor, or per channel on the last axis.

    ``bits=4``: 15 levels in [-7, 7]; the TFLite converter stores such weights as INT4.
    """
    if axis is None:
        m = ops.maximum(ops.max(ops.abs(w)), _MIN_RANGE)
        return fake_quant(w, -m, m, num_bits=bits, narrow_range=True)
    m = ops.maximum(ops.max(ops.abs(w), axis=tuple(range(len(w.shape) - 1))), _MIN_RANGE)
    return fake_quant(w, -m, m, num_bits=bits, narrow_range=True, axis=-1)


def fake_quant_weight(value, weight: Weight, bits: int = 8):
    """``value`` fake-quantized as its spec says TFLite stores it: per tensor, or (``per_channel``)
    one range per index of the axes from its channel axis to the end (flattened: a depthwise
    kernel's input channel x multiplier)."""
    if not weight.per_channel:
        return _symmetric(value, bits=bits)
    shape = tuple(value.shape)
    axis = channel_axis(weight) % len(shape)
    if axis == len(shape) - 1:
        return _symmetric(value, axis=-1, bits=bits)
    flat = ops.reshape(value, (*shape[:axis], math.prod(shape[axis:])))
    return ops.reshape(_symmetric(flat, axis=-1, bits=bits), shape)


def _per_channel(values, kernel, weight: Weight):
    """``values`` (one per output channel) shaped to multiply ``kernel``'s output channels."""
    rank = len(kernel.shape)
    axis = channel_axis(weight) % rank
    if weight.out_axis is None:  # depthwise: the outputs are the trailing in x multiplier axes
        return ops.reshape(values, tuple(kernel.shape[axis:]))
    return ops.reshape(values, (-1,) + (1,) * (rank - 1 - axis))


def _batch_norm(y, gamma, beta, eps):
    """Normalizes ``y`` over all but its last axis: ``(output, batch mean, batch variance)``.

    A 4-D float32 tensor on TensorFlow goes through one fused kernel (``FusedBatchNormV3``; Keras
    3's own BatchNormalization runs composite moments/normalize ops): those made MobileNetV2's QAT
    step 1.16x slower (benchmarks/qat_step_profile.py: 365 vs 315 ms).
    """
    if keras.backend.backend() == "tensorflow" and len(y.shape) == 4 and y.dtype == "float32":
        import tensorflow as tf

        ones = ops.ones((y.shape[-1],), "float32")
        out, mean, var = tf.compat.v1.nn.fused_batch_norm(
            y,
            ops.cast(gamma * ones, "float32"),
            ops.cast(beta * ones, "float32"),
            epsilon=eps,
            is_training=True,
        )
        # the kernel returns the unbiased variance; BatchNormalization tracks the biased one
        n = ops.cast(ops.prod(ops.shape(y)[:-1]), "float32")
        return out, mean, var * (n - 1) / ops.maximum(n, 1.0)
    mean, var = ops.moments(y, tuple(range(len(y.shape) - 1)))
    return (y - mean) * (gamma / ops.sqrt(var + eps)) + beta, mean, var


@keras.saving.register_keras_serializable(package="tfopt")
class QuantizeWrapper(keras.layers.Wrapper):
    """Runs a layer with fake-quantized weights, an optional folded BatchNorm and output range.

    The layer runs its own ``call`` with its kernels fake-quantized as its spec says
    (`tfopt._layers`: per channel for convolutions, per tensor for Dense, Conv2DTranspose,
    Embedding and a layer registered with `tfopt.register_layer`). Four kinds run an op of their
    own because TFLite needs it (see ``WRAPPER_KINDS``): Conv1D (as a 2-D conv), SeparableConv2D
    (an int8 range between its halves), EinsumDense (one that is a reshaped Dense, see
    `einsum_plan`: one matmul) and a standalone BatchNormalization (multiply + add with an int8
    range in between). A following ``BatchNormalization`` can be folded into a layer whose spec
    says ``fold_batchnorm``: training runs the layer once with the folded int8 kernel divided by
    the fold scale and normalizes its output with the batch statistics, as BatchNorm would;
    inference runs the folded kernel ``W * gamma / sqrt(var + eps)`` and bias that TFLite will see.

    Args:
        layer: the layer to wrap (built or not).
        batchnorm: a ``BatchNormalization`` layer (``axis=-1``) to fold into ``layer``. Defaults to
            None.
        quantize_output: track and fake-quantize the output range. Defaults to True.
        quantize_input: track and fake-quantize the input range too (for an input that comes
            from float ops inside a layer, e.g. attention's output projection), unless the input
            already comes out of an int8 range (see `is_int8`). Defaults to False.
        preserve_sparsity: keep the kernel's exact zeros at zero (a mask taken when the wrapper is
            built on a layer with weights). Defaults to True.
        clusters: keep the kernel's clusters (`cluster_plan`): the kernel is
            ``centroids[assignments]`` with ``clusters`` trainable centroids per codebook and
            assignments fixed by `update_clusters` (the layer's own kernel no longer trains and
            is kept only to rebuild the layer). None: the kernel itself trains. Defaults to None.
        clusters_per_channel: one codebook per channel (the channel axis of `tfopt.cluster`)
            instead of one for the kernel. Defaults to False.
        weight_bits: 8, or 4 (int4 weights: the TFLite converter stores them as INT4 and int8
            activations stay; LiteRT and TFLite Micro run Conv2D/FullyConnected with them).
            Defaults to 8.
        **kwargs: `keras.layers.Layer` arguments.

    Example:
        >>> q = tfopt.quantize.QuantizeWrapper(keras.layers.Conv2D(8, 3))
    """

    def __init__(
        self,
        layer,
        *,
        batchnorm=None,
        quantize_output: bool = True,
        quantize_input: bool = False,
        preserve_sparsity: bool = True,
        weight_bits: int = 8,
        clusters: int | None = None,
        clusters_per_channel: bool = False,
        **kwargs,
    ):
        super().__init__(layer, **kwargs)
        if weight_bits not in (4, 8) or isinstance(weight_bits, bool):
            raise ValueError(f"weight_bits must be 4 or 8. Received: weight_bits={weight_bits!r}")
        self.weight_bits = int(weight_bits)
        kind = qat_kind(layer)
        if kind is None:
            raise ValueError(
                f"QuantizeWrapper cannot wrap {type(layer).__name__} layers: its layer spec "
                "(tfopt._layers) gives it no QAT kind; describe a layer of yours with "
                "tfopt.register_layer"
            )
        spec = spec_of(layer)
        if kind == "einsum" and einsum_plan(layer) is None:
            raise ValueError(
                f"QuantizeWrapper wraps EinsumDense layers whose equation is a reshaped Dense "
                f"(e.g. 'abc,cde->abde'). Received: equation={layer.equation!r}, "
                f"bias_axes={layer.bias_axes!r}"
            )
        if quantize_input and spec.integer_inputs:
            raise ValueError(
                f"quantize_input=True does not apply to {type(layer).__name__} (integer inputs)."
            )
        if batchnorm is not None and not spec.fold_batchnorm:
            raise ValueError(f"batchnorm cannot be folded into a {type(layer).__name__} layer.")
        self.kind = kind
        self.batchnorm = batchnorm
        self.quantize_output = bool(quantize_output)
        self.quantize_input = bool(quantize_input)
        self.input_quantizer = ActivationQuantizer(name="input_range") if quantize_input else None
        self.preserve_sparsity = bool(preserve_sparsity) and kind != "batchnorm"
        if clusters is not None and (
            isinstance(clusters, bool) or not isinstance(clusters, int) or clusters < 1
        ):
            raise ValueError(
                f"clusters must be None or an int >= 1. Received: clusters={clusters!r}"
            )
        if clusters is not None and kind == "batchnorm":
            raise ValueError("clusters does not apply to a standalone BatchNormalization.")
        self.clusters = None if clusters is None else int(clusters)
        self.clusters_per_channel = bool(clusters_per_channel)
        # the wrapper applies a Keras layer's activation itself, after the pre-activation range
        self.owns_activation = not spec.user and hasattr(layer, "activation")
        act = getattr(getattr(layer, "activation", None), "__name__", "linear")
        self.output_quantizer = (
            ActivationQuantizer(name="output_range", nonnegative=act in FUSED_ACTIVATIONS)
            if quantize_output
            else None
        )
        self.mid_quantizer = (
            ActivationQuantizer(name="mid_range") if kind in ("separable", "batchnorm") else None
        )
        # TFLite fuses only RELU/RELU6 into the op; other activations (swish, sigmoid, ...) run as
        # their own int8 ops and need the range of their input.
        self.preactivation_quantizer = (
            ActivationQuantizer(name="preactivation_range")
            if self.owns_activation and act not in ("linear", *FUSED_ACTIVATIONS)
            else None
        )

    # -- building -------------------------------------------------------------------------------
    def _weight(self) -> Weight | None:
        """The spec of the kernel that is masked, folded into and fake-quantized here (see
        `qat_weight`)."""
        return qat_weight(self.layer, self.kind)

    def _kernel(self):
        w = self._weight()
        return None if w is None else resolve(self.layer, w.attr)[2]

    def build(self, input_shape):
        if self.layer.dtype_policy.compute_dtype != "float32":
            # QAT simulates int8 in float32 (the fold's statistics and ranges are float32); a
            # mixed-precision layer run through its own call would mix half and float tensors
            self.layer.dtype_policy = keras.DTypePolicy("float32")
        if not self.layer.built:
            self.layer.build(input_shape)
        out_shape = self.layer.compute_output_shape(input_shape)
        if self.batchnorm is not None and not self.batchnorm.built:
            self.batchnorm.build(out_shape)
        if self.batchnorm is not None and getattr(self.layer, "bias", None) is not None:
            # the folded BatchNorm's batch statistics cancel the bias while training, so its
            # gradient is 0 up to rounding; it still enters the inference offset
            self.layer.bias.trainable = False
        if self.output_quantizer is not None and not self.output_quantizer.built:
            self.output_quantizer.build(out_shape)
        if self.input_quantizer is not None and not self.input_quantizer.built:
            self.input_quantizer.build(input_shape)
        for q in (self.mid_quantizer, self.preactivation_quantizer):
            if q is not None and not q.built:
                q.build(out_shape)
        self.mask = None
        if self.preserve_sparsity:
            k = self._kernel()
            self.mask = self.add_weight(
                shape=k.shape, initializer="ones", trainable=False, name="sparsity_mask"
            )
            self.update_mask()
        if self.clusters is not None:
            self._build_clusters()
        self.built = True

    def _build_clusters(self):
        kernel = self._kernel()
        kernel.trainable = False  # the forward pass gathers the centroids instead
        self._cluster_layout = (
            tuple(kernel.shape),
            channel_axis(self._weight()) % len(kernel.shape),
            self.clusters_per_channel,
        )
        shape, axis, per_channel = self._cluster_layout
        rows = shape[axis] if per_channel else 1
        self.centroids = self.add_weight(
            name="centroids", shape=(rows, self.clusters), initializer="zeros", trainable=True
        )
        self.assignments = self.add_weight(
            name="assignments",
            shape=(rows, math.prod(shape) // rows),
            initializer="zeros",
            dtype="int32",
            trainable=False,
        )

    def update_mask(self):
        """Sets the sparsity mask to the kernel's non-zeros (call after loading pruned weights)."""
        if self.mask is not None:
            self.mask.assign(ops.cast(ops.not_equal(self._kernel(), 0.0), self.mask.dtype))

    def update_clusters(self):
        """Takes the codebook from the layer's kernel: its distinct values become the centroids
        and each weight's value fixes its assignment (call once the clustered weights are in).

        Raises:
            ValueError: a codebook of the kernel holds more than ``clusters`` distinct values.
        """
        if self.clusters is None:
            return
        shape, axis, per_channel = self._cluster_layout
        kernel = np.asarray(ops.convert_to_numpy(self._kernel()))
        try:
            centroids, assignments = exact_codebook(
                kernel_rows(kernel, axis, per_channel), self.clusters
            )
        except ValueError as e:
            raise ValueError(
                f"{self.name} cannot keep the clusters of {self.layer.name}'s kernel: {e}. "
                "Give clusters= at least that many, or None to train the kernel itself."
            ) from None
        self.centroids.assign(centroids)
        self.assignments.assign(assignments)

    def cluster_summary(self) -> str:
        """``"16 clusters"``, ``"16 clusters per channel"``, or ``"64 clusters (<= 4 per
        channel)"`` for one codebook that holds several per-channel ones."""
        if self.clusters is None:
            return "no clusters"
        shape, axis, per_channel = self._cluster_layout
        if per_channel:
            return f"{self.clusters} clusters per channel"
        kernel = np.asarray(ops.convert_to_numpy(self.trained_kernel()))
        per_row = max(np.unique(row).size for row in kernel_rows(kernel, axis, True))
        if per_row < self.clusters:
            return f"{self.clusters} clusters (<= {per_row} per channel)"
        return f"{self.clusters} clusters"

    def trained_kernel(self):
        """The kernel QAT trains: the layer's own, or ``centroids[assignments]`` (clusters)."""
        if self.clusters is None:
            return self._kernel()
        shape, axis, per_channel = self._cluster_layout
        return rows_to_kernel(
            gather_rows(self.centroids, self.assignments), shape, axis, per_channel
        )

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def _masked(self, kernel):
        return kernel if self.mask is None else kernel * self.mask

    def _quantized(self, kernel, weight: Weight | None = None):
        """``kernel`` fake-quantized as TFLite stores it (see `fake_quant_weight`)."""
        if self.kind == "conv1d":  # it runs as a 2-D conv: quantize the 4-D kernel TFLite stores
            kernel = ops.expand_dims(kernel, 0)
        if self.kind == "einsum":  # one matmul: the contracted axes first, then the outputs
            n, perm = einsum_plan(self.layer)
            kernel = ops.transpose(kernel, perm)  # constant-folded by the converter
            kernel = ops.reshape(kernel, (-1, math.prod(kernel.shape[n:])))
        return fake_quant_weight(kernel, weight or self._weight(), bits=self.weight_bits)

    # -- call -------------------------------------------------------------------------------------
    def call(self, x, training=None):
        if self.input_quantizer is not None and not is_int8(x):
            x = self.input_quantizer(x, training=training)
        y = self._call(x, training)
        return mark_int8(y) if self.quantize_output else y

    def _call(self, x, training):
        if self.kind == "batchnorm":
            return self._call_batchnorm(x, training)
        if self.kind == "einsum" or (spec_of(self.layer).last_axis and len(x.shape) > 2):
            # N-D inputs run as one 2-D matmul + bias + activation + range, which TFLite fuses into
            # a single int8 FULLY_CONNECTED; only the final reshape sees the N-D shape.
            n, perm = einsum_plan(self.layer) if self.kind == "einsum" else (1, (0, 1))
            lead = ops.shape(x)[: len(x.shape) - n]
            y = self._call_2d(ops.reshape(x, (-1, math.prod(x.shape[-n:]))), training)
            return ops.reshape(y, (*lead, *(self._kernel().shape[i] for i in perm[n:])))
        return self._call_2d(x, training)

    def _call_2d(self, x, training):
        if self.kind == "separable":
            layer = self.layer
            depthwise = spec_of(layer).compressed()[0]
            x = ops.depthwise_conv(
                x,
                self._quantized(layer.depthwise_kernel, depthwise),
                strides=layer.strides,
                padding=layer.padding,
                dilation_rate=layer.dilation_rate,
            )
            x = self.mid_quantizer(x, training=training)
        return self._out(self._folded(x, training), training)

    def _folded(self, x, training):
        """The linear part (activation not applied), with a BatchNorm folded in if there is one."""
        kernel, bn = self._masked(self.trained_kernel()), self.batchnorm
        if bn is None:
            return self._apply(x, self._quantized(kernel))
        gamma = bn.gamma if bn.scale else 1.0
        beta = bn.beta if bn.center else 0.0
        scale = gamma / ops.sqrt(bn.moving_variance + bn.epsilon)
        w = self._weight()
        if not training:
            offset = beta - bn.moving_mean * scale
            bias = self._bias()
            offset = offset if bias is None else offset + bias * scale
            return self._apply(x, self._quantized(kernel * _per_channel(scale, kernel, w)), offset)
        # One call of the layer, with the folded int8 kernel TFLite will run scaled back by the
        # fold scale (the "approximate" fold of PyTorch's ConvBn QAT, the scaling moved from the
        # output to the kernel): the layer's output, whose batch statistics normalize it as
        # BatchNorm would (its bias cancels). Running the float layer a second time only for the
        # statistics (Jacob et al. 2018) doubled the cost of a training step. The scale cancels
        # through the fake-quant's straight-through gradient, so its own gradient is only
        # rounding noise: stopping it (gamma still learns through the normalization) saves work.
        s = ops.stop_gradient(scale)
        folded = self._quantized(kernel * _per_channel(s, kernel, w))
        unscale = 1.0 / ops.where(ops.abs(s) < 1e-12, 1e-12, s)
        y = self._apply(x, folded * _per_channel(unscale, folded, w))
        out, mean, var = _batch_norm(y, gamma, beta, bn.epsilon)
        m = bn.momentum
        bn.moving_mean.assign(m * bn.moving_mean + (1 - m) * ops.stop_gradient(mean))
        bn.moving_variance.assign(m * bn.moving_variance + (1 - m) * ops.stop_gradient(var))
        return out

    def _bias(self):
        return getattr(self.layer, "bias", None) if getattr(self.layer, "use_bias", True) else None

    def _apply(self, x, kernel, bias=None):
        """The layer's linear part with ``kernel`` (fake-quantized) and ``bias`` (None: its own)."""
        if self.kind == "substitute":
            return self._substituted(x, kernel, bias)
        own = self._bias()
        bias = own if bias is None else bias
        if self.kind == "einsum":
            n, perm = einsum_plan(self.layer)
            y = ops.matmul(x, kernel)
            if bias is not None:  # it spans only kernel output axes: broadcast, then flatten
                out_dims = tuple(self._kernel().shape[i] for i in perm[n:])
                bias = ops.reshape(ops.broadcast_to(bias, out_dims), (-1,))
        elif self.kind == "conv1d":
            y = self._conv1d(x, kernel)
        else:  # the 1x1 pointwise half of a SeparableConv2D
            y = ops.conv(x, kernel, padding="valid")
        return y if bias is None else y + bias

    def _substituted(self, x, kernel, bias):
        """The layer's own call with ``kernel`` (and the fake-quantized other kernels, and ``bias``
        when given) in place of its weights."""
        layer, main = self.layer, self._weight()
        values = {main.attr: kernel}
        for w in spec_of(layer).compressed():
            if w.attr != main.attr:
                values[w.attr] = fake_quant_weight(resolve(layer, w.attr)[2], w, self.weight_bits)
        own_bias = self._bias()
        if bias is not None and own_bias is not None:
            values["bias"], bias = bias, None
        if self.owns_activation:
            values["activation"] = keras.activations.linear
        with substituted(layer, values):
            y = layer(x)
        return y if bias is None else y + bias

    def _conv1d(self, x, kernel):
        layer = self.layer
        x4 = ops.expand_dims(x, 1)
        padding = layer.padding
        if padding == "causal":
            pad = layer.dilation_rate[0] * (layer.kernel_size[0] - 1)
            x4 = ops.pad(x4, ((0, 0), (0, 0), (pad, 0), (0, 0)))
            padding = "valid"
        y = ops.conv(
            x4,
            kernel,  # (1, width, in, out), see `_quantized`
            strides=(1, layer.strides[0]),
            padding=padding,
            dilation_rate=(1, layer.dilation_rate[0]),
        )
        return ops.squeeze(y, 1)

    def _call_batchnorm(self, x, training):
        bn = self.layer
        gamma = bn.gamma if bn.scale else 1.0
        beta = bn.beta if bn.center else 0.0
        scale = gamma / ops.sqrt(bn.moving_variance + bn.epsilon)
        if training:
            self.mid_quantizer(x * scale, training=True)  # track the range TFLite's MUL will need
            return self._out(bn(x, training=True), training)
        y = self.mid_quantizer(x * _symmetric(scale), training=False)
        return self._out(y + (beta - bn.moving_mean * scale), training)

    def _out(self, y, training):
        if self.preactivation_quantizer is not None:
            y = self.preactivation_quantizer(y, training=training)
        if self.owns_activation:
            y = self.layer.activation(y)
        if self.output_quantizer is not None:
            y = self.output_quantizer(y, training=training)
        return y

    # -- config -----------------------------------------------------------------------------------
    def get_config(self):
        config = super().get_config()
        config.update(
            batchnorm=None
            if self.batchnorm is None
            else keras.saving.serialize_keras_object(self.batchnorm),
            quantize_output=self.quantize_output,
            quantize_input=self.quantize_input,
            preserve_sparsity=self.preserve_sparsity,
            weight_bits=self.weight_bits,
            clusters=self.clusters,
            clusters_per_channel=self.clusters_per_channel,
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["layer"] = keras.saving.deserialize_keras_object(
            config["layer"], custom_objects=custom_objects
        )
        if config.get("batchnorm") is not None:
            config["batchnorm"] = keras.saving.deserialize_keras_object(
                config["batchnorm"], custom_objects=custom_objects
            )
        return cls(**config)


@keras.saving.register_keras_serializable(package="tfopt")
class FloatBoundary(keras.layers.Layer):
    """Marks where int8 values enter a float-only layer (e.g. attention).

    TFLite's converter can otherwise propagate an int8 scale into the float layer's first
    FULLY_CONNECTED and emit an op with an int8 input and float weights, which does not run. The
    boundary is an elementwise ``maximum(x, lowest float)``: exact, and TFLite keeps it float, so
    a DEQUANTIZE goes right before it.

    Example:
        >>> y = tfopt.quantize.FloatBoundary()(x)
    """

    def call(self, x):
        return ops.maximum(x, -3.4e38)

    def compute_output_shape(self, input_shape):
        return input_shape


# QAT's own layers pass their input's values on (the logits rule looks through them)
_add((ActivationQuantizer, FloatBoundary), transparent=True)
