"""Quantization: quantization-aware training (QAT) that converts to fully int8 TFLite.

QAT keeps what compression made before it: the zeros of a pruned model (``preserve_sparsity``)
and the clusters of a clustered one (``preserve_clusters``: the centroids train, each weight
stays in its cluster, the int8 file holds at most ``n_clusters`` values per kernel).

Post-training modes (dynamic, float16, int8, int16x8) are options of `tfopt.export.tflite`;
below int8 (int4, mixed precision, w8a16: `tfopt.export.lowbit`, formats ``tflite-w4`` ...) goes
through Google's LiteRT Quantizer, and `sensitivity` / `choose_bits` measure each layer's cost
of int4 weights through LiteRT and pick per-layer bit widths under an accuracy budget.

Example:
    >>> q = tfopt.quantize.qat(model)
    >>> q.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    >>> q.fit(x, y, epochs=3, callbacks=[tfopt.callbacks.QuantizationSummaries("logs/qat")])
    >>> tfopt.export.tflite(q, "m.tflite", quantization="int8")
"""

from tfopt.quantize._attention import QuantizedMultiHeadAttention
from tfopt.quantize._layers import ActivationQuantizer, FloatBoundary, QuantizeWrapper
from tfopt.quantize._lowbit import MODES, BitPlan, Sensitivity, choose_bits, sensitivity
from tfopt.quantize._qat import SCHEMES, qat
from tfopt.quantize._subclassed import QuantizedSubclassModel

__all__ = [
    "MODES",
    "SCHEMES",
    "BitPlan",
    "Sensitivity",
    "choose_bits",
    "sensitivity",
    "ActivationQuantizer",
    "FloatBoundary",
    "QuantizeWrapper",
    "QuantizedMultiHeadAttention",
    "QuantizedSubclassModel",
    "qat",
]
