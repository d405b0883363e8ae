"""Quantization-aware training: tfopt.quantize.qat -> fit -> fully int8 TFLite."""

import glob
from types import SimpleNamespace

import numpy as np
import pytest
from _helpers import compile_classifier, signal_data
from _tflite import KERNEL_OPS as _KERNEL_OPS
from _tflite import assert_fully_int8 as _assert_fully_int8
from _tflite import assert_int8_agrees
from _tflite import tflite_ops as _ops

import tfopt
from tfopt.errors import ArtifactError
from tfopt.quantize import ActivationQuantizer, QuantizeWrapper, qat

keras = pytest.importorskip("keras")
L = keras.layers


# -- helpers -------------------------------------------------------------------------------------


def _conv1d_bn_model():
    i = keras.Input((24, 1), name="x")
    h = L.Conv1D(8, 5, padding="same", use_bias=False, name="c1")(i)
    h = L.BatchNormalization(name="bn1")(h)
    h = L.ReLU(name="r1")(h)
    s = L.Conv1D(8, 3, padding="same", activation="relu", name="c2")(h)
    s = L.BatchNormalization(name="bn2")(s)  # BN after a conv with its own activation
    h = L.Add(name="add")([h, s])
    h = L.ReLU(name="r2")(h)
    h = L.MaxPooling1D(2, name="pool")(h)
    h = L.Concatenate(name="cat")([h, L.AveragePooling1D(1, name="avg")(h)])
    h = L.Flatten(name="flat")(h)
    h = L.Dense(16, activation="relu", name="fc")(h)
    return keras.Model(i, L.Dense(4, name="logits")(h), name="c1d")


@pytest.fixture(scope="module")
def trained_qat(tmp_path_factory):
    """A float Conv1D+BN model, its QAT copy after fine-tuning and the int8 export."""
    keras.utils.set_random_seed(0)
    x, y = signal_data()
    xt, yt = signal_data(256, seed=1)
    model = compile_classifier(_conv1d_bn_model(), 2e-3)
    model.fit(x, y, epochs=8, batch_size=32, verbose=0)
    before = [w.copy() for w in model.get_weights()]
    q = compile_classifier(qat(model), 5e-4)
    q.fit(x, y, epochs=2, batch_size=32, verbose=0)
    path = tmp_path_factory.mktemp("qat") / "m.tflite"
    art = tfopt.export.tflite(q, path, quantization="int8", check_data=xt)
    return SimpleNamespace(model=model, before=before, q=q, art=art, x=x, y=y, xt=xt, yt=yt)


# -- the main path -------------------------------------------------------------------------------


def test_qat_conv1d_bn_residual_model_exports_fully_int8(trained_qat):
    t = trained_qat
    names = _assert_fully_int8(t.art.path)
    assert names.count("CONV_2D") == 2 and names.count("FULLY_CONNECTED") == 2
    assert {"ADD", "MAX_POOL_2D", "AVERAGE_POOL_2D", "CONCATENATION", "MUL"} <= set(names)
    assert_int8_agrees(t.q, t.art.path, t.xt)
    from tfopt.bench._runners import TFLiteRunner

    got = TFLiteRunner(t.art.path).predict(t.xt).argmax(-1)
    assert np.mean(got == t.yt) >= 0.9


def test_qat_leaves_the_users_model_untouched(trained_qat):
    t = trained_qat
    assert [type(layer).__name__ for layer in t.model.layers].count("QuantizeWrapper") == 0
    for a, b in zip(t.before, t.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert t.q is not t.model and t.q.get_layer("quant_c1").layer is not t.model.get_layer("c1")


def test_qat_report_lists_quantized_folded_and_ranges(trained_qat):
    r = trained_qat.q.qat_report
    assert r.changed == {
        "c1": "Conv1D, per-channel weights (run as 2-D conv), folded bn1",
        "c2": "Conv1D, per-channel weights (run as 2-D conv)",
        "bn2": "BatchNormalization, int8 multiply + add",
        "fc": "Dense, per-tensor weights",
        "logits": "Dense, per-tensor weights",
    }
    assert r.details["folded"] == {"bn1": "c1"}
    assert r.skipped == {}
    # input, after the fused ReLUs and the concatenation (the average pool keeps its input's range)
    assert r.details["ranges"] == ["x_range", "r1_range", "r2_range", "cat_range"]
    assert "qat: changed 5 layers, skipped 0 (1 folded, 4 ranges)" in r.summary()


def test_folded_batchnorm_matches_the_float_model_at_inference():
    keras.utils.set_random_seed(1)
    x, y = signal_data(128)
    model = compile_classifier(_conv1d_bn_model(), 2e-3)
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    q = qat(model)
    q.get_layer("quant_c1")  # exists
    # ranges from one pass in training mode, weights unchanged (lr 0)
    q.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    for layer in q._flatten_layers():
        if isinstance(layer, ActivationQuantizer):
            layer.momentum = 0.0
    q(x, training=True)
    moving = q.get_layer("quant_c1").batchnorm.moving_mean.numpy()
    # the training pass updated the folded BatchNorm's statistics like BatchNorm would, from the
    # convolution with the int8 (per-channel, error <= max|w| / 254 per weight) folded kernel
    bn = model.get_layer("bn1")
    conv_out = keras.Model(model.input, model.get_layer("c1").output).predict(x, verbose=0)
    m = bn.momentum
    expected = m * bn.moving_mean.numpy() + (1 - m) * conv_out.mean(axis=(0, 1))
    np.testing.assert_allclose(moving, expected, rtol=0.01, atol=0.01 * np.abs(expected).max())
    q.get_layer("quant_c1").batchnorm.moving_mean.assign(bn.moving_mean)
    q.get_layer("quant_c1").batchnorm.moving_variance.assign(bn.moving_variance)
    # at inference the folded conv + BN + ReLU equals the float one up to int8 rounding
    want = keras.Model(model.input, model.get_layer("r1").output).predict(x, verbose=0)
    got = keras.Model(q.input, q.get_layer("r1_range").output).predict(x, verbose=0)
    assert np.abs(got - want).max() < 0.02 * np.abs(want).max()


@pytest.mark.parametrize("shape", [(4, 5, 6, 3), (7, 3)])
def test_folded_batchnorm_normalizes_with_the_batch_statistics(shape):
    from tfopt.quantize._layers import _batch_norm

    # 4-D runs the fused kernel, 2-D the composite ops: both are BatchNorm's training formula
    y = np.random.default_rng(0).normal(2.0, 3.0, shape).astype("float32")
    gamma, beta = np.float32([0.5, 2.0, -1.0]), np.float32([0.1, 0.0, 3.0])
    out, mean, var = (np.asarray(t) for t in _batch_norm(y, gamma, beta, 1e-3))
    axes = tuple(range(len(shape) - 1))
    np.testing.assert_allclose(mean, y.mean(axes), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(var, y.var(axes), rtol=1e-4)  # biased, as BatchNormalization
    want = (y - y.mean(axes)) / np.sqrt(y.var(axes) + 1e-3) * gamma + beta
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)


def test_folded_batchnorm_tracks_the_float_layers_statistics_and_trains_gamma():
    import tensorflow as tf

    i = keras.Input((8, 8, 3))
    c = L.Conv2D(4, 3, name="c", bias_initializer=keras.initializers.Constant(5.0))(i)
    model = keras.Model(i, L.BatchNormalization(momentum=0.0, name="bn")(c))
    x = np.random.default_rng(0).normal(size=(16, 8, 8, 3)).astype("float32")
    conv = model.get_layer("c")(x).numpy()  # the float layer's output, bias included
    q = qat(model)
    wrapper = q.get_layer("quant_c")
    assert wrapper.batchnorm is not None
    with tf.GradientTape() as tape:
        loss = keras.ops.sum(q(x, training=True) ** 2)
    bn = wrapper.batchnorm
    # the statistics are the float conv's up to int8 weight rounding (<< the bias of 5)
    np.testing.assert_allclose(bn.moving_mean.numpy(), conv.mean((0, 1, 2)), atol=0.05)
    np.testing.assert_allclose(bn.moving_variance.numpy(), conv.var((0, 1, 2)), rtol=0.05)
    gamma, kernel = tape.gradient(loss, [bn.gamma, wrapper.layer.kernel])
    assert all(g is not None and np.abs(g.numpy()).sum() > 0 for g in (gamma, kernel))
    # the normalization cancels the bias (its gradient is 0 up to rounding), so it is not trained
    # (Keras warned "Gradients do not exist for variables [.../bias]" on every QAT fit of a
    # conv-BN model)
    assert wrapper.layer.bias.path not in {v.path for v in q.trainable_variables}


def test_relu_ranges_start_at_zero_without_a_minimum():
    i = keras.Input((6, 6, 2))
    h = L.Conv2D(3, 3, activation="relu", name="c")(i)
    r = L.ReLU(name="r")(L.Conv2D(3, 1, name="d")(h))
    leaky = L.ReLU(negative_slope=0.1, name="leaky")(L.Conv2D(3, 1, name="e")(r))
    q = qat(keras.Model(i, L.Flatten()(leaky)))
    assert q.get_layer("quant_c").output_quantizer.nonnegative
    assert q.get_layer("r_range").nonnegative and not q.get_layer("leaky_range").nonnegative
    for layer in q._flatten_layers():
        if isinstance(layer, ActivationQuantizer):
            layer.momentum = 0.0
    x = np.random.default_rng(0).normal(size=(8, 6, 6, 2)).astype("float32")
    q(x, training=True)
    rng = q.get_layer("r_range")
    relu_out = keras.Model(q.input, q.get_layer("r").output)(x).numpy()
    assert float(rng.range_min) == 0.0
    np.testing.assert_allclose(float(rng.range_max), relu_out.max(), rtol=1e-6)
    assert float(q.get_layer("leaky_range").range_min) < 0
    reloaded = ActivationQuantizer.from_config(rng.get_config())
    assert reloaded.nonnegative


def test_qat_model_round_trips_through_a_keras_file(trained_qat, tmp_path):
    t = trained_qat
    path = tmp_path / "q.keras"
    t.q.save(path)
    loaded = tfopt.models.load(path)
    assert isinstance(loaded.get_layer("quant_c1"), QuantizeWrapper)
    assert loaded.get_layer("quant_c1").batchnorm.name == "bn1"
    assert isinstance(loaded.get_layer("x_range"), ActivationQuantizer)
    np.testing.assert_array_equal(t.q.predict(t.xt, verbose=0), loaded.predict(t.xt, verbose=0))
    art = tfopt.export.tflite(loaded, tmp_path / "l.tflite", quantization="int8", check_data=t.xt)
    assert_int8_agrees(loaded, art.path, t.xt)


# -- sparsity-preserving QAT ---------------------------------------------------------------------


def test_pruned_zeros_stay_zero_through_qat_and_in_the_int8_file(tmp_path):
    keras.utils.set_random_seed(2)
    x, y = signal_data(256)
    i = keras.Input((24, 1))
    h = L.Conv1D(16, 5, padding="same", activation="relu", name="conv")(i)
    h = L.Flatten()(h)
    model = compile_classifier(keras.Model(i, L.Dense(4, name="fc")(h)), 2e-3)
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    zeros = {}
    for name in ("conv", "fc"):  # prune 80% by magnitude, as a stripped pruned model would be
        layer = model.get_layer(name)
        k = layer.kernel.numpy()
        k[np.abs(k) < np.quantile(np.abs(k), 0.8)] = 0.0
        layer.kernel.assign(k)
        zeros[name] = k == 0
    q = compile_classifier(qat(model), 1e-3)
    assert f"sparsity {zeros['fc'].mean():.1%} preserved" in q.qat_report.changed["fc"]
    q.fit(x, y, epochs=2, batch_size=32, verbose=0)
    fc = q.get_layer("quant_fc")
    assert np.all(fc.layer.kernel.numpy()[zeros["fc"]] == 0.0)
    assert np.all(q.get_layer("quant_conv").layer.kernel.numpy()[zeros["conv"]] == 0.0)
    art = tfopt.export.tflite(q, tmp_path / "s.tflite", quantization="int8", check_data=x)
    it, ops = _ops(art.path)
    weights = {}
    for name, _ins, _, idx in ops:
        if name in ("FULLY_CONNECTED", "CONV_2D"):
            weights[name] = it.get_tensor(idx[1])
    w_fc = weights["FULLY_CONNECTED"]  # TFLite stores (out, in)
    assert w_fc.dtype == np.int8 and np.all(w_fc.T[zeros["fc"]] == 0)
    w_conv = weights["CONV_2D"]  # (out, 1, k, in)
    assert w_conv.dtype == np.int8
    assert np.all(np.transpose(w_conv[:, 0], (1, 2, 0))[zeros["conv"]] == 0)


# -- coverage ------------------------------------------------------------------------------------


def _fit_export(q, x, y, path, **kwargs):
    compile_classifier(q, 1e-3).fit(x, y, epochs=1, batch_size=16, verbose=0)
    return tfopt.export.tflite(
        q, path, quantization="int8", check_data=x, min_agreement=0.0, **kwargs
    )


def test_conv2d_depthwise_separable_transpose_and_batchnorm_everywhere(tmp_path):
    x = np.random.default_rng(0).normal(size=(32, 8, 8, 3)).astype("float32")
    y = np.arange(32) % 4
    i = keras.Input((8, 8, 3))
    h = L.BatchNormalization(name="bn_in")(i)  # BatchNorm first
    h = L.Conv2D(8, 3, padding="same", name="conv")(h)
    h = L.BatchNormalization(name="bn_conv")(h)
    h = L.Activation("relu", name="act")(h)
    h = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(h)
    h = L.BatchNormalization(name="bn_dw")(h)
    h = L.ReLU(6.0, name="relu6")(h)
    h = L.SeparableConv2D(8, 3, padding="same", activation="relu", name="sep")(h)
    h = L.Conv2DTranspose(4, 3, strides=2, padding="same", name="tconv")(h)
    h = L.BatchNormalization(name="bn_t")(h)
    h = L.AveragePooling2D(2, name="avg")(h)
    h = L.GlobalAveragePooling2D(name="gap")(h)
    h = L.Dense(8, name="fc")(h)
    h = L.BatchNormalization(name="bn_fc")(h)  # BatchNorm after Dense
    model = keras.Model(i, L.Dense(4, name="logits")(h))
    q = qat(model)
    r = q.qat_report
    assert r.details["folded"] == {"bn_conv": "conv", "bn_dw": "dw", "bn_t": "tconv", "bn_fc": "fc"}
    assert r.changed["sep"] == "SeparableConv2D, per-channel weights"
    assert r.changed["dw"] == "DepthwiseConv2D, per-channel weights, folded bn_dw"
    assert r.changed["tconv"] == "Conv2DTranspose, per-tensor weights, folded bn_t"
    assert r.changed["bn_in"] == "BatchNormalization, int8 multiply + add"
    art = _fit_export(q, x, y, tmp_path / "c2d.tflite")
    names = _assert_fully_int8(art.path)
    assert names.count("DEPTHWISE_CONV_2D") == 2  # the depthwise and the separable's first half
    assert names.count("TRANSPOSE_CONV") == 1 and names.count("CONV_2D") == 2


@pytest.mark.parametrize(
    "layer_fn",
    [
        lambda: L.SeparableConv2D(4, 3, strides=2, padding="same"),
        lambda: L.DepthwiseConv2D(3, strides=2, depth_multiplier=2, padding="valid"),
        lambda: L.Conv2DTranspose(4, 3, strides=2, padding="same"),
        lambda: L.Conv1D(4, 3, strides=2, dilation_rate=1, padding="causal"),
    ],
)
def test_wrapped_layers_compute_what_the_float_layer_computes(layer_fn):
    is_1d = "Conv1D" in type(layer_fn()).__name__
    shape = (8, 3) if is_1d else (8, 8, 3)
    x = np.random.default_rng(0).normal(size=(16, *shape)).astype("float32")
    i = keras.Input(shape)
    model = keras.Model(i, layer_fn()(i))
    q = qat(model)
    q(x, training=True)  # sets the ranges
    want = model.predict(x, verbose=0)
    got = q.predict(x, verbose=0)
    assert got.shape == want.shape
    assert np.abs(got - want).max() < 0.03 * np.abs(want).max()  # int8 rounding only


def test_embedding_weights_are_int8(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 50, size=(32, 12)).astype("int32")
    y = np.arange(32) % 4
    i = keras.Input((12,), dtype="int32")
    h = L.Embedding(50, 16, name="emb")(i)
    h = L.Conv1D(8, 3, activation="relu", name="conv")(h)
    h = L.GlobalAveragePooling1D()(h)
    q = qat(keras.Model(i, L.Dense(4, name="fc")(h)))
    assert q.qat_report.changed["emb"] == "Embedding, per-tensor embeddings"
    assert (
        "input_range" not in q.qat_report.details["ranges"]
    )  # integer inputs are not fake-quantized
    art = _fit_export(q, x, y, tmp_path / "emb.tflite")
    it, ops = _ops(art.path)
    gather = [o for o in ops if o[0] == "GATHER"]
    assert len(gather) == 1 and gather[0][1][0] == "int8" and gather[0][2] == ["int8"]
    assert it.get_tensor(gather[0][3][0]).shape == (50, 16)
    assert all("float32" not in o[1] for o in ops if o[0] in _KERNEL_OPS)
    assert_int8_agrees(q, art.path, x)


def _attention_model():
    i = keras.Input((10, 16), name="x")
    h = L.Dense(16, name="proj")(i)
    a = L.MultiHeadAttention(2, 8, name="mha")(h, h)
    h = L.LayerNormalization(name="ln1")(L.Add(name="res1")([h, a]))
    f = L.Dense(16, name="ffn2")(L.Dense(32, activation="relu", name="ffn1")(h))
    h = L.LayerNormalization(name="ln2")(L.Add(name="res2")([h, f]))
    h = L.GlobalAveragePooling1D(name="gap")(h)
    return keras.Model(i, L.Dense(4, name="logits")(h))


def test_attention_projections_run_as_int8_kernels(tmp_path):
    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(256, 10, 16)).astype("float32")
    y = x[:, :, :4].mean(axis=1).argmax(-1).astype("int32")  # learnable through the attention
    model = compile_classifier(_attention_model(), 2e-3)
    model.fit(x, y, epochs=4, batch_size=32, verbose=0)
    q = qat(model)
    r = q.qat_report
    assert set(r.skipped) == {"ln1", "ln2"}
    assert set(r.changed) == {"proj", "mha", "ffn1", "ffn2", "logits"}
    assert "query, key, value, output projection weights" in r.changed["mha"]
    mha = q.get_layer("mha")
    assert isinstance(mha, tfopt.quantize.QuantizedMultiHeadAttention)
    np.testing.assert_array_equal(
        mha.projections()["query"].layer.kernel.numpy(), model.get_layer("mha").query_dense.kernel
    )
    compile_classifier(q, 5e-4).fit(x, y, epochs=1, batch_size=32, verbose=0)
    art = tfopt.export.tflite(q, tmp_path / "mha.tflite", quantization="int8", check_data=x)
    it, ops = _ops(art.path)
    fc = [o for o in ops if o[0] == "FULLY_CONNECTED"]
    # proj, query, key, value, attention output, ffn1, ffn2, logits: int8 in, weights, out
    assert len(fc) == 8
    assert all(o[1][:2] == ["int8", "int8"] and o[2] == ["int8"] for o in fc), fc
    assert {it.get_tensor(o[3][1]).shape for o in fc} >= {(16, 16), (32, 16), (16, 32)}
    bmm = [(o[1], o[2]) for o in ops if o[0] == "BATCH_MATMUL"]
    # query x key in float (softmax input), softmax x value in int8 (feeds the output projection)
    assert bmm == [(["float32", "float32"], ["float32"]), (["int8", "int8"], ["int8"])]
    assert {"SOFTMAX", "RSQRT"} <= {o[0] for o in ops if "float32" in o[1]}
    # 0.988 was measured on one CPU with oneDNN: a near-tie may flip, a confident output may not
    assert_int8_agrees(q, art.path, x)
    path = tmp_path / "mha.keras"
    q.save(path)
    loaded = tfopt.models.load(path)
    assert isinstance(loaded.get_layer("mha"), tfopt.quantize.QuantizedMultiHeadAttention)
    np.testing.assert_array_equal(q.predict(x, verbose=0), loaded.predict(x, verbose=0))


def test_einsum_dense_is_quantized_when_it_is_a_reshaped_dense(tmp_path):
    x = np.random.default_rng(0).normal(size=(32, 6, 8)).astype("float32")
    y = np.arange(32) % 4
    i = keras.Input((6, 8))
    h = L.EinsumDense("abc,bd->acd", output_shape=(8, 8), name="mixing")(i)  # over time
    h = L.EinsumDense("abc,cde->abde", output_shape=(8, 2, 4), bias_axes="de", name="ed")(h)
    h = L.EinsumDense("abcd,cde->abe", output_shape=(8, 8), bias_axes="e", name="merge")(h)
    h = L.EinsumDense("abc,dc->abd", output_shape=(8, 8), name="transposed")(h)
    h = L.GlobalAveragePooling1D()(h)
    model = keras.Model(i, L.Dense(4, name="logits")(h))
    q = qat(model)
    r = q.qat_report
    assert r.changed["ed"] == "EinsumDense, per-tensor weights (run as one matmul)"
    assert {"merge", "transposed"} <= set(r.changed)
    assert "'abc,bd->acd'" in r.skipped["mixing"]
    q(x, training=True)
    sub = keras.Model(q.input, q.get_layer("quant_merge").output)
    want = keras.Model(model.input, model.get_layer("merge").output).predict(x, verbose=0)
    got = sub.predict(x, verbose=0)
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()  # int8 rounding only
    art = _fit_export(q, x, y, tmp_path / "ed.tflite")
    fc = [o for o in _ops(art.path)[1] if o[0] == "FULLY_CONNECTED"]
    # ed, merge, transposed, logits; the converter also runs the float-kept "mixing" (transpose +
    # FC) in int8 on its own, as its input and output carry int8 ranges
    assert len(fc) == 5 and all(o[1][:2] == ["int8", "int8"] and o[2] == ["int8"] for o in fc)
    with pytest.raises(ValueError, match=r"reshaped Dense.*equation='abc,bd->acd'"):
        QuantizeWrapper(L.EinsumDense("abc,bd->acd", output_shape=(8, 8)))


def test_gru_is_left_float_and_the_rest_quantized(tmp_path):
    x = np.random.default_rng(0).normal(size=(32, 10, 4)).astype("float32")
    y = np.arange(32) % 4
    i = keras.Input((10, 4))
    h = L.Conv1D(8, 3, activation="relu", name="conv")(i)
    h = L.GRU(8, name="gru")(h)
    q = qat(keras.Model(i, L.Dense(4, name="fc")(h)))
    assert list(q.qat_report.skipped) == ["gru"]
    assert "no int8 GRU kernel" in q.qat_report.skipped["gru"]
    art = _fit_export(q, x, y, tmp_path / "gru.tflite", fixed_batch=1)
    _, ops = _ops(art.path)
    kernels = {o[0]: o for o in ops if o[0] in _KERNEL_OPS}
    assert kernels["CONV_2D"][1][:2] == ["int8", "int8"]
    assert kernels["FULLY_CONNECTED"][1][:2] == ["int8", "int8"]
    assert "WHILE" in [o[0] for o in ops]
    assert_int8_agrees(q, art.path, x)


def test_sequential_and_subclassed_models(tmp_path):
    x, y = signal_data(64)
    seq = keras.Sequential(
        [
            keras.Input((24, 1)),
            L.Conv1D(4, 3, activation="relu"),
            L.BatchNormalization(),
            L.Flatten(),
            L.Dense(4),
        ]
    )
    q = qat(seq)
    assert len(q.qat_report.changed) == 3
    _assert_fully_int8(_fit_export(q, x, y, tmp_path / "seq.tflite").path)

    class Net(keras.Model):
        def __init__(self, classes=4, **kwargs):
            super().__init__(**kwargs)
            self.classes = classes
            self.conv = L.Conv1D(8, 3, activation="relu")
            self.pool = L.GlobalAveragePooling1D()
            self.heads = [L.Dense(8, activation="relu"), L.Dense(classes)]

        def call(self, x):
            h = self.pool(self.conv(x))
            return self.heads[1](self.heads[0](h))

        def get_config(self):
            return {**super().get_config(), "classes": self.classes}

    net = Net()
    net(x[:2])
    q = qat(net)
    assert sorted(v.split(",")[0] for v in q.qat_report.changed.values()) == [
        "Conv1D",
        "Dense",
        "Dense",
    ]
    assert type(net.conv).__name__ == "Conv1D"  # the original keeps its layers
    art = _fit_export(q, x, y, tmp_path / "sub.tflite")
    assert_int8_agrees(q, art.path, x)
    names = [o[0] for o in _ops(art.path)[1]]
    assert names.count("CONV_2D") == 1 and names.count("FULLY_CONNECTED") == 2
    q.save(tmp_path / "sub.keras")  # Net is not registered: Keras cannot find it when loading
    with pytest.raises(ArtifactError, match=r"Could not locate class 'Net'.*register_keras_serial"):
        tfopt.models.load(tmp_path / "sub.keras")


@keras.saving.register_keras_serializable(package="tfopt_tests")
class Block(keras.layers.Layer):
    def __init__(self, filters=8, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.conv = L.Conv1D(filters, 3, padding="same", activation="relu")
        self.norm = L.LayerNormalization()

    def call(self, x):
        return self.norm(self.conv(x))

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


@keras.saving.register_keras_serializable(package="tfopt_tests")
class SubclassedNet(keras.Model):
    def __init__(self, classes=4, **kwargs):
        super().__init__(**kwargs)
        self.classes = classes
        self.block = Block(8, name="block")
        self.attention = L.MultiHeadAttention(2, 4, name="attention")
        self.pool = L.GlobalAveragePooling1D()
        self._heads = [L.Dense(8, activation="relu", name="hidden"), L.Dense(classes, name="out")]

    def call(self, x):
        h = self.block(x)
        h = self.pool(h + self.attention(h, h))
        return self._heads[1](self._heads[0](h))

    def get_config(self):
        return {**super().get_config(), "classes": self.classes}


def test_qat_copy_of_a_registered_subclassed_model_round_trips_through_keras_file(tmp_path):
    keras.utils.set_random_seed(4)
    x, y = signal_data(192)
    net = SubclassedNet()
    compile_classifier(net, 2e-3).fit(x, y, epochs=4, batch_size=32, verbose=0)  # decisive logits
    q = qat(net, filters=lambda layer: layer.name != "hidden")
    r = q.qat_report
    conv_name = net.block.conv.name  # the user's names, not the copy's
    assert set(r.changed) == {f"block/{conv_name}", "attention", "out"}
    assert r.skipped == {
        f"block/{net.block.norm.name}": r.skipped[f"block/{net.block.norm.name}"],
        "hidden": "excluded by filters",
    }
    compile_classifier(q, 5e-4).fit(x, y, epochs=1, batch_size=32, verbose=0)
    path = tmp_path / "sub.keras"
    keras.saving.save_model(q, path)
    loaded = tfopt.models.load(path)
    sub = loaded.get_layer(f"quant_{net.name}")
    assert isinstance(sub, tfopt.quantize.QuantizedSubclassModel)
    assert sorted(sub.wrappers()) == ["_heads[1]", "attention", "block.conv"]
    assert isinstance(sub.layer.block.conv, QuantizeWrapper)
    assert isinstance(sub.layer.attention, tfopt.quantize.QuantizedMultiHeadAttention)
    assert type(sub.layer._heads[0]).__name__ == "Dense"
    for a, b in zip(q.weights, loaded.weights):
        assert a.path.split("/")[-1] == b.path.split("/")[-1]
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(q.predict(x, verbose=0), loaded.predict(x, verbose=0))
    art = tfopt.export.tflite(loaded, tmp_path / "sub.tflite", quantization="int8", check_data=x)
    assert_int8_agrees(loaded, art.path, x)
    kernels = [o for o in _ops(art.path)[1] if o[0] in _KERNEL_OPS]
    # the conv, the attention projections and "out" read int8 (they track their input ranges),
    # "hidden" was filtered out
    assert [(o[0], o[1][:2]) for o in kernels] == [
        ("CONV_2D", ["int8", "int8"]),
        *[("FULLY_CONNECTED", ["int8", "int8"])] * 4,
        ("FULLY_CONNECTED", ["float32", "float32"]),
        ("FULLY_CONNECTED", ["int8", "int8"]),
    ]


def test_subclassed_models_report_what_qat_cannot_rewrite():
    class Dicty(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.parts = {"a": L.Dense(4, name="in_dict")}
            self.head = L.Dense(2, name="head")

        def call(self, x):
            return self.head(self.parts["a"](x))

    model = Dicty()
    model(np.zeros((1, 3), "float32"))
    r = qat(model).qat_report
    assert list(r.changed) == ["head"]
    assert "(e.g. a dict), which qat() does not rewrite" in r.skipped["in_dict"]

    class Forgetful(keras.Model):  # get_config drops `width`
        def __init__(self, width=4, **kwargs):
            super().__init__(**kwargs)
            self.dense = L.Dense(width)

        def call(self, x):
            return self.dense(x)

        def get_config(self):
            return {"name": self.name}

    model = Forgetful(width=8)
    model(np.zeros((1, 3), "float32"))
    with pytest.raises(
        tfopt.RewriteError, match=r"builds a model with other weights.*get_config\(\) must"
    ):
        qat(model)


# -- options and errors --------------------------------------------------------------------------


def test_filters_select_layers_and_bad_arguments_raise():
    model = _conv1d_bn_model()
    q = qat(model, filters=r"^(c1|logits)$")
    assert set(q.qat_report.changed) == {"c1", "logits"}
    assert q.qat_report.skipped["fc"] == "excluded by filters"
    q = qat(model, filters=["fc"])
    assert set(q.qat_report.changed) == {"fc"}
    q = qat(model, filters=lambda layer: layer.name.startswith("c"))
    assert set(q.qat_report.changed) == {"c1", "c2"}
    with pytest.raises(ValueError, match=r"Unrecognized scheme='int4'. Supported schemes are"):
        qat(model, scheme="int4")
    with pytest.raises(TypeError, match=r"filters must be a regex.*Received: filters=3"):
        qat(model, filters=3)
    with pytest.raises(TypeError, match=r"must be a keras.Model"):
        qat("model.keras")
    with pytest.raises(ValueError, match=r"is not built"):
        qat(keras.Sequential([L.Dense(2)]))
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\). Received: momentum=1.5"):
        ActivationQuantizer(momentum=1.5)
    with pytest.raises(ValueError, match=r"cannot wrap LSTM layers"):
        QuantizeWrapper(L.LSTM(2))


# -- TensorBoard and the recipe step -------------------------------------------------------------


def test_quantization_summaries_write_the_learned_ranges(tmp_path):
    import tensorflow as tf

    x, y = signal_data(64)
    i = keras.Input((24, 1), name="x")
    h = L.Flatten()(L.Conv1D(4, 3, activation="relu", name="conv")(i))
    q = compile_classifier(qat(keras.Model(i, L.Dense(4, name="fc")(h))), 2e-3)
    cb = tfopt.callbacks.QuantizationSummaries(tmp_path / "logs")
    q.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[cb])
    values = {}
    for path in glob.glob(str(tmp_path / "logs" / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                values.setdefault(v.tag, []).append((event.step, float(tf.make_ndarray(v.tensor))))
    names = ["x_range", "quant_conv/output_range", "quant_fc/output_range"]
    assert set(values) == {f"quantization/{n}/{k}" for n in names for k in ("min", "max", "scale")}
    assert [s for s, _ in values["quantization/x_range/max"]] == [4, 8]
    conv = q.get_layer("quant_conv").output_quantizer
    assert values["quantization/quant_conv/output_range/max"][-1][1] == pytest.approx(
        float(conv.range_max.numpy())
    )
    assert values["quantization/quant_conv/output_range/min"][-1][1] == pytest.approx(0.0)
    with pytest.raises(ValueError, match=r"update_freq must be 'epoch' or an int >= 1"):
        tfopt.callbacks.QuantizationSummaries(tmp_path, update_freq=0)
    float_model = compile_classifier(
        keras.Sequential([keras.Input((24, 1)), L.Flatten(), L.Dense(4)]), 2e-3
    )
    with pytest.raises(TypeError, match=r"has no ActivationQuantizer layers"):
        float_model.fit(
            x, y, epochs=1, verbose=0, callbacks=[tfopt.callbacks.QuantizationSummaries(tmp_path)]
        )


def test_qat_recipe_step_returns_the_fitted_qat_model(tmp_path):
    from pydantic import ValidationError

    from tfopt._steps import step_module
    from tfopt.config import STEP_CONFIGS

    step, Config = step_module("qat"), STEP_CONFIGS["qat"]
    cfg = Config(epochs=1, learning_rate=1e-3)
    assert (cfg.scheme, cfg.preserve_sparsity, cfg.filters) == ("int8", True, None)
    with pytest.raises(ValidationError, match=r"epochs"):
        Config(epochs=0)
    with pytest.raises(ValidationError, match=r"Extra inputs are not permitted"):
        Config(nbits=4)
    with pytest.raises(ValidationError, match=r"bits"):
        Config(bits=4)  # per-layer {regex: 4 | 8} or "sensitivity", not a number
    x, y = signal_data(64)
    fits, records = [], {}

    class Ctx:
        data = SimpleNamespace(x_train=x, y_train=y)

        def log(self, msg):
            pass

        def log_dir(self, stage=None):
            return tmp_path / "logs" / "qat"

        def summaries(self, make, subdir):
            return [make(self.log_dir() / subdir)]

        def fit(self, model, *, epochs, learning_rate, callbacks=()):
            fits.append((epochs, learning_rate))
            compile_classifier(model, learning_rate)
            return model.fit(x, y, epochs=epochs, verbose=0, callbacks=list(callbacks))

        def record(self, key, value):
            records[key] = value

    out = step.run(cfg, _conv1d_bn_model(), Ctx())
    assert fits == [(1, 1e-3)]
    assert isinstance(out.get_layer("quant_c1"), QuantizeWrapper)
    assert records["qat_report"]["details"]["folded"] == {"bn1": "c1"}
    assert glob.glob(str(tmp_path / "logs" / "qat" / "quantization" / "events.out.tfevents.*"))
