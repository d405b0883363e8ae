"""What the layer-spec registry (tfopt/_layers.py) tells each technique, and that they ask it."""

from __future__ import annotations

import dataclasses

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


# -- the layer-type questions that techniques ask the registry, not isinstance -------------------
@pytest.fixture
def registered():
    """Registers specs for a test and removes them afterwards."""
    from tfopt._layers import register_spec, unregister_layer

    classes = []

    def add(spec):
        classes.append(spec.cls)
        return register_spec(dataclasses.replace(spec, user=True))

    yield add
    for cls in classes:
        unregister_layer(cls)


class _Attention(L.Layer):
    """A user's attention-like layer, called as (query, value, key=None)."""

    def build(self, query_shape, value_shape, key_shape=None):
        self.kernel = self.add_weight(shape=(value_shape[-1], query_shape[-1]), name="kernel")

    def call(self, query, value, key=None):
        scores = keras.ops.softmax(keras.ops.matmul(query, keras.ops.swapaxes(value, 1, 2)))
        return keras.ops.matmul(keras.ops.matmul(scores, value), self.kernel)


def test_prune_wraps_a_layer_whose_spec_says_attention_with_the_attention_call(registered):
    from tfopt._layers import LayerSpec, Weight
    from tfopt.prune._wrapper import PruneLowMagnitude, PruneMultiHeadAttention, wrap

    spec = LayerSpec(_Attention, weights=(Weight("kernel", 1, 0),), prune=True)
    registered(spec)
    assert type(wrap(_Attention())) is PruneLowMagnitude  # called with one input
    registered(dataclasses.replace(spec, attention=True))
    wrapper = wrap(_Attention())
    assert type(wrapper) is PruneMultiHeadAttention
    query, value = np.ones((2, 3, 4), "float32"), np.ones((2, 5, 4), "float32")
    assert tuple(wrapper(query, value).shape) == (2, 3, 4)
    assert wrapper.layer.kernel.shape == (4, 4)


def test_qat_attention_stands_in_for_the_class_the_spec_names(registered):
    """QAT's attention rewrite asks the registry which class it replaces: an unregistered
    subclass of MultiHeadAttention stays float; registered as attention, it is taken."""
    from tfopt.quantize._attention import attention_unquantizable

    class Attention(L.MultiHeadAttention):
        pass

    layer = Attention(num_heads=2, key_dim=4)
    layer(np.ones((1, 3, 8), "float32"), np.ones((1, 3, 8), "float32"))
    assert "subclass) is not supported" in attention_unquantizable(layer)
    registered(dataclasses.replace(spec_of(L.MultiHeadAttention), cls=Attention))
    assert attention_unquantizable(layer) is None


def test_batchnorm_recalibration_recalibrates_what_the_specs_call_batch_statistics():
    """A BatchNormalization subclass with a call of its own registered with register_layer is
    the user's layer, not a BatchNorm: its statistics are left alone."""
    from tfopt._layers import unregister_layer
    from tfopt._training import recalibrate_batchnorm

    class Norm(L.BatchNormalization):
        def call(self, x, training=None):
            return super().call(x, training=training)

    inputs = keras.Input((4,))
    model = keras.Model(inputs, Norm(name="norm")(L.Dense(4)(inputs)))
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    assert recalibrate_batchnorm(model, x, batch_size=32) == 1  # a BatchNorm by its MRO
    tfopt.register_layer(Norm, weights={"gamma": {"out": 0}, "beta": {"out": 0}})
    try:
        assert recalibrate_batchnorm(model, x, batch_size=32) == 0
    finally:
        unregister_layer(Norm)


def _dense_model(head_cls, hidden=L.Dense):
    inputs = keras.Input((8,))
    x = L.Dense(8, activation="relu", name="fc1")(inputs)
    x = hidden(32, name="wide")(x)
    return keras.Model(inputs, head_cls(3, name="head")(x))


def test_a_registered_fully_connected_layer_is_a_dense_head_and_a_widest_dense():
    """register_layer with an (in, out) kernel and a width makes a fully-connected layer:
    `train.transfer` replaces it as a classifier head, and prune_channels' widest_dense scope
    picks it."""
    from _zoo import RegisteredDense, UnregisteredDense, register_users_layer

    from tfopt._layers import unregister_layer
    from tfopt.prune._channels_step import widest_hidden_dense

    with pytest.raises(ValueError, match="must be a Dense layer"):
        tfopt.train.transfer(_dense_model(UnregisteredDense), num_classes=5)
    assert widest_hidden_dense(_dense_model(L.Dense, hidden=UnregisteredDense)) == "fc1"
    register_users_layer()
    try:
        assert widest_hidden_dense(_dense_model(L.Dense, hidden=RegisteredDense)) == "wide"
        model = _dense_model(RegisteredDense)
        copy = tfopt.train.transfer(model, num_classes=5)
        head = copy.get_layer("head")
        assert type(head) is RegisteredDense and head.units == 5 and head.trainable
        assert tuple(copy.outputs[0].shape) == (None, 5) and model.get_layer("head").units == 3
    finally:
        unregister_layer(RegisteredDense)


def test_contributing_worked_example_runs():
    """CONTRIBUTING.md's "add a layer type in one file" block, run as written: the one
    register_layer call makes its layer work with prune, cluster, qat, prune_channels and the
    MAC counter."""
    import re
    from pathlib import Path

    from tfopt._layers import spec_flag, unregister_layer
    from tfopt._measure import count

    text = (Path(__file__).resolve().parents[1] / "CONTRIBUTING.md").read_text()
    section = text.split("### Worked example: add a layer type in one file", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "CONTRIBUTING.md", "exec"), scope)
    cls = scope["ScaledDense"]
    try:
        inputs = keras.Input((16,))
        x = L.Dense(16, activation="relu", name="fc1")(inputs)
        x = L.ReLU()(cls(16, scale=0.5, name="scaled")(x))
        model = keras.Model(inputs, L.Dense(3, name="logits")(x))
        assert count(model)["macs"] == 16 * 16 + 16 * 16 + 16 * 3 and spec_flag(cls, "dense")
        for made in (
            tfopt.prune.prune(model),
            tfopt.cluster.cluster(model, 4),
            tfopt.quantize.qat(model),
        ):
            assert "scaled" in made.tfopt_report.changed, made.tfopt_report
        small, plan = tfopt.prune.prune_channels(model, 0.5)
        assert small.get_layer("scaled").units == 8, plan
    finally:
        unregister_layer(cls)
