"""QAT MultiHeadAttention: int8 projections around a float attention core."""

from __future__ import annotations

from tfopt._backend import import_keras
from tfopt._layers import spec_of
from tfopt.quantize._layers import QuantizeWrapper, einsum_plan

keras = import_keras()
ops = keras.ops
fake_quant = keras.quantizers.fake_quant_with_min_max_vars

# (attribute, wrapper options): query/key/value (and the gate) read the layer's inputs, which carry
# int8 ranges in the QAT graph; the output projection reads the float attention output, so it
# tracks its input range itself.
_PROJECTIONS = (
    ("_query_dense", {}),
    ("_key_dense", {}),
    ("_value_dense", {}),
    ("_gate_dense", {}),
    ("_output_dense", {"quantize_input": True}),
)


def attention_unquantizable(layer) -> str | None:
    """Why `QuantizedMultiHeadAttention` cannot stand in for ``layer``, or None if it can."""
    spec = spec_of(layer)
    # it is rebuilt from the layer's config: only the class whose spec says qat="attention"
    if spec is None or spec.qat != "attention" or type(layer) is not spec.cls:
        return (
            f"{type(layer).__name__} (a MultiHeadAttention subclass) is not supported; kept float"
        )
    for attr, _ in _PROJECTIONS:
        sub = getattr(layer, attr, None)
        if sub is None:
            continue
        if getattr(sub, "quantization_mode", None) or getattr(sub, "lora_enabled", False):
            return f"{attr[1:]} projection uses LoRA or Keras quantization; kept float"
        if einsum_plan(sub) is None:
            return f"{attr[1:]} projection ({sub.equation!r}) is not a reshaped Dense; kept float"
    return None


@keras.saving.register_keras_serializable(package="tfopt")
class QuantizedMultiHeadAttention(keras.layers.MultiHeadAttention):
    """`keras.layers.MultiHeadAttention` whose projections are int8 QAT layers.

    The query, key, value (and gate) and output ``EinsumDense`` projections are wrapped in
    `QuantizeWrapper`: per-tensor int8 weights, an int8 output range, and for the output projection
    an int8 input range, so TFLite runs each projection as an int8 ``FULLY_CONNECTED``. The
    query-key scores and the softmax stay float (TFLite dequantizes the projected query and key);
    softmax x value runs as an int8 ``BATCH_MATMUL``, so the softmax output is rounded here as
    TFLite rounds it (unless a gate sits between that product and the output projection, in
    which case it stays float). It takes the same arguments as ``MultiHeadAttention``, plus
    ``quantize_inputs``, and saves to ``.keras`` like it.

    Args:
        quantize_inputs: the query/key/value projections track the range of their inputs
            themselves (for inputs that may come from float ops; in a QAT functional model the
            ranges are in the graph instead). Defaults to False.
        **kwargs: `keras.layers.MultiHeadAttention` arguments.

    Example:
        >>> mha = tfopt.quantize.QuantizedMultiHeadAttention(num_heads=2, key_dim=8)
        >>> y = mha(x, x)
    """

    def __init__(self, *args, quantize_inputs: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.quantize_inputs = bool(quantize_inputs)

    def get_config(self):
        return {**super().get_config(), "quantize_inputs": self.quantize_inputs}

    def build(self, query_shape, value_shape, key_shape=None):
        super().build(query_shape, value_shape, key_shape)
        key_shape = value_shape if key_shape is None else key_shape
        output_in = self._query_dense.compute_output_shape(query_shape)
        output_in = (*output_in[:-1], self._value_dim)
        shapes = {
            "_query_dense": query_shape,
            "_key_dense": key_shape,
            "_value_dense": value_shape,
            "_gate_dense": query_shape,
            "_output_dense": output_in,
        }
        for attr, options in _PROJECTIONS:
            sub = getattr(self, attr, None)
            if sub is None or isinstance(sub, QuantizeWrapper):
                continue
            if attr != "_output_dense":
                options = {"quantize_input": self.quantize_inputs}
            wrapper = QuantizeWrapper(sub, name=f"quant_{sub.name}", **options)
            wrapper.build(shapes[attr])
            setattr(self, attr, wrapper)
            if sub in self._layers:  # the wrapper owns it now; count its weights once
                self._layers.remove(sub)

    def _compute_attention(
        self,
        query,
        key,
        value,
        attention_mask=None,
        training=None,
        return_attention_scores=False,
        use_causal_mask=False,
    ):
        # MultiHeadAttention's explicit path (not the fused dot_product_attention), with the
        # softmax output rounded as TFLite rounds it: when the BATCH_MATMUL with value feeds the
        # output projection's int8 input directly (no gate in between), the converter runs it in
        # int8 and quantizes the softmax output to the fixed scale 1/256, zero point -128.
        if use_causal_mask:
            causal = self._compute_causal_mask(query, value)
            attention_mask = (
                causal
                if attention_mask is None
                else ops.logical_and(ops.cast(attention_mask, "bool"), causal)
            )
        query = ops.multiply(query, ops.cast(self._inverse_sqrt_key_dim, query.dtype))
        scores = ops.einsum(self._dot_product_equation, key, query)
        scores = self._masked_softmax(scores, attention_mask)
        if not getattr(self, "_use_gate", False):
            scores = fake_quant(scores, 0.0, 255.0 / 256.0, num_bits=8)
        final = self._dropout_layer(scores, training=training) if self._dropout > 0.0 else scores
        return ops.einsum(self._combine_equation, final, value), scores

    def copy_projection_weights(self, source) -> None:
        """Sets the projection weights from ``source``, a float ``MultiHeadAttention``."""
        for name, proj in self.projections().items():
            proj.layer.set_weights(getattr(source, f"_{name}_dense").get_weights())
            proj.update_mask()

    def projections(self) -> dict[str, QuantizeWrapper]:
        """Returns the wrapped projections by name (``query``, ``key``, ``value``, ...)."""
        return {
            attr[1:].removesuffix("_dense"): getattr(self, attr)
            for attr, _ in _PROJECTIONS
            if getattr(self, attr, None) is not None
        }
