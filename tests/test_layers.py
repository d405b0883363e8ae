"""What the layer-spec registry (tfopt/_layers.py) tells each technique, and that they ask it."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfopt
from tfopt._layers import spec_of

L = keras.layers


def test_tflite_hint_names_the_layer_outside_the_builtins_not_recurrent_layers(tmp_path):
    """A Conv3D + MaxPool3D model: the hint names MaxPooling3D (no TFLite builtin), and says
    nothing about GRU/LSTM, which the model does not hold."""
    inputs = keras.Input((4, 4, 4, 1))
    x = L.Conv3D(2, 3, padding="same", name="conv3d")(inputs)
    x = L.MaxPool3D(2, name="pool3d")(x)
    model = keras.Model(inputs, L.Dense(2, name="head")(L.Flatten()(x)))
    with pytest.raises(RuntimeError) as info:
        tfopt.export.tflite(model, tmp_path / "m.tflite")
    text = str(info.value)
    assert "layer 'pool3d' (MaxPooling3D)" in text and "select_tf_ops=True" in text, text
    assert "GRU" not in text and "LSTM" not in text and "fixed_batch" not in text, text


def test_lowrank_factorizes_what_the_specs_say():
    """A subclass of Dense without a call of its own is a Dense (its spec, by MRO); the report's
    list of supported layers comes from the registry."""

    class PlainSubclass(L.Dense):
        pass

    inputs = keras.Input((32,))
    x = PlainSubclass(32, name="sub")(inputs)
    x = L.BatchNormalization(name="bn")(x)
    model = keras.Model(inputs, L.Dense(4, name="head")(x))
    small = tfopt.lowrank.factorize(model, rank_ratio=0.25)
    report = small.tfopt_report
    assert report.changed["sub"].startswith("rank 8 of 32"), report
    assert "Dense, Conv1D, Conv2D, Conv3D" in report.skipped["bn"], report
    assert set(tfopt.lowrank.SUPPORTED) == {L.Dense, L.Conv1D, L.Conv2D, L.Conv3D}


def test_logits_rule_reads_the_specs():
    from tfopt._training import outputs_probabilities

    inputs = keras.Input((4,))
    logits = L.Dense(3)(inputs)
    assert not outputs_probabilities(keras.Model(inputs, L.Dropout(0.5)(logits)))
    assert outputs_probabilities(keras.Model(inputs, L.Dropout(0.5)(L.Softmax()(logits))))
    assert outputs_probabilities(keras.Model(inputs, keras.ops.sigmoid(logits)))
    q = tfopt.quantize.qat(keras.Model(inputs, L.Softmax()(logits)))
    assert outputs_probabilities(q)  # through the QAT output range


def test_qat_quantizes_per_channel_where_the_spec_says():
    """Conv2D and DepthwiseConv2D (per_channel specs) get one range per output channel, Dense
    one per tensor: the same fake-quant the layer's own call then reads."""
    from tfopt.quantize._layers import fake_quant_weight

    rng = np.random.default_rng(0)
    dw = L.DepthwiseConv2D(3, depth_multiplier=2)
    dw.build((None, 8, 8, 3))
    kernel = rng.normal(size=(3, 3, 3, 2)).astype("float32")
    kernel[..., 0, 1] *= 100.0  # one output channel (input 0, multiplier 1) with a wide range
    weight = spec_of(dw).compressed()[0]
    got = keras.ops.convert_to_numpy(fake_quant_weight(kernel, weight))
    # the other channels keep their own (narrow) scale: rounding error <= max|w| / 254
    for c, m in np.ndindex(3, 2):
        step = np.abs(kernel[..., c, m]).max() / 127
        assert np.abs(got[..., c, m] - kernel[..., c, m]).max() <= step / 2 + 1e-6, (c, m)
    dense = spec_of(L.Dense).compressed()[0]
    assert not dense.per_channel and spec_of(L.Conv2D).compressed()[0].per_channel
