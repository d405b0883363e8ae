"""Cluster-preserving QAT: cluster -> strip -> qat(preserve_clusters) -> fit -> int8 TFLite keeps
at most n_clusters distinct int8 values per kernel (per channel where TFLite quantizes per
channel)."""

import numpy as np
import pytest
from _tflite import assert_fully_int8

import tfopt
from tfopt.bench._ops import tflite_kernels
from tfopt.quantize import QuantizeWrapper, qat

keras = pytest.importorskip("keras")
L = keras.layers


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 8, 8, 1)).astype("float32"), rng.integers(0, 4, n)


def _conv_dense_model():
    keras.utils.set_random_seed(0)
    i = keras.Input((8, 8, 1))
    h = L.Conv2D(8, 3, use_bias=False, name="conv")(i)
    h = L.BatchNormalization(name="bn")(h)  # folded into the conv: its kernel is scaled per channel
    h = L.DepthwiseConv2D(3, name="dw")(L.ReLU()(h))
    return keras.Model(i, L.Dense(4, name="fc")(L.Flatten()(h)))


def _clustered(per_channel=False, k=4):
    model = _conv_dense_model()
    return tfopt.cluster.strip(tfopt.cluster.cluster(model, k, per_channel=per_channel))


def _fit(q, x, y, lr=0.05):
    q.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    q.fit(x, y, batch_size=32, epochs=1, verbose=0)  # 2 steps with a large learning rate
    return q


def _int8_kernels(path) -> dict:
    """{op name: int8 kernel as TFLite stores it, one row per quantization channel}."""
    return dict(tflite_kernels(path))


def _distinct(w, per_channel: bool) -> int:
    if not per_channel:
        return len(np.unique(w))
    return max(len(np.unique(row)) for row in w.reshape(w.shape[0], -1))


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_layer", "per_channel"])
def test_int8_kernels_keep_at_most_n_clusters_values_after_qat(per_channel, tmp_path):
    x, y = _data()
    small = _clustered(per_channel)
    counts = tfopt.cluster.distinct_values(small, per_channel=per_channel)
    assert counts == {"conv": 4, "dw": 4, "fc": 4}
    counts = {}
    for preserve in ("auto", False):
        q = qat(small, preserve_clusters=preserve)
        fc = q.get_layer("quant_fc")
        before = None if fc.clusters is None else fc.centroids.numpy().copy()
        _fit(q, x, y)
        if preserve:
            assert not np.allclose(fc.centroids.numpy(), before)  # the centroids trained
        path = tmp_path / f"{preserve}.tflite"
        tfopt.export.tflite(q, path, quantization="int8", check_data=x, min_agreement=0.0)
        assert_fully_int8(path)  # the gather is constant-folded: int8 kernels, no float op
        w = _int8_kernels(path)
        assert len(w) == 3 and {v.dtype for v in w.values()} == {np.dtype("int8")}
        # TFLite quantizes convolutions per channel (and the folded BatchNorm scales each
        # channel): a per-layer codebook stays <= 4 values in each channel; Dense is per tensor
        counts[preserve] = {
            "conv": _distinct(w["CONV_2D"], per_channel=True),
            "dw": _distinct(w["DEPTHWISE_CONV_2D"], per_channel=True),
            "fc": _distinct(w["FULLY_CONNECTED"], per_channel),
        }
    assert max(counts["auto"].values()) <= 4, counts
    assert min(counts[False].values()) > 4, counts  # plain QAT: no clusters


def test_qat_report_and_defaults_say_which_kernels_keep_clusters():
    small = _clustered(per_channel=False)
    report = qat(small).qat_report.changed
    assert report["fc"] == "Dense, per-tensor weights, 4 clusters preserved"
    assert report["conv"] == "Conv2D, per-channel weights, folded bn, 4 clusters preserved"
    assert report["dw"] == "DepthwiseConv2D, per-channel weights, 4 clusters preserved"
    per_channel = qat(_clustered(per_channel=True)).qat_report.changed
    assert per_channel["fc"].endswith("16 clusters (<= 4 per channel) preserved")
    assert per_channel["conv"].endswith("32 clusters (<= 4 per channel) preserved")
    # a float model, and a pruned one (its non-zero values are all different), train as usual
    model = _conv_dense_model()
    assert "clusters" not in " ".join(qat(model).qat_report.changed.values())
    # True: each kernel with <= 256 values per codebook: the conv's 72 weights in one, the fc's
    # 128 x 4 per output channel
    forced = qat(model, preserve_clusters=True)
    conv, fc = forced.get_layer("quant_conv"), forced.get_layer("quant_fc")
    assert (conv.clusters, conv.clusters_per_channel) == (72, False)
    assert (fc.clusters, fc.clusters_per_channel) == (128, True)
    kernel = model.get_layer("fc").kernel
    k = kernel.numpy()
    k[np.abs(k) < np.quantile(np.abs(k), 0.8)] = 0.0
    kernel.assign(k)
    assert qat(model).qat_report.changed["fc"] == (
        "Dense, per-tensor weights, sparsity 79.9% preserved"  # 409 of 512 weights at 0
    )
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match=r"preserve_clusters must be 'auto', True or False"):
            qat(model, preserve_clusters=bad)
    with pytest.raises(ValueError, match=r"clusters must be None or an int >= 1"):
        QuantizeWrapper(L.Dense(2), clusters=0)
    wrapper = QuantizeWrapper(model.get_layer("conv"), clusters=8, name="quant_conv")
    wrapper.build((None, 8, 8, 1))
    with pytest.raises(
        ValueError, match=r"holds 72 distinct values, more than k=8. Give clusters="
    ):
        wrapper.update_clusters()


def test_centroid_gradient_is_the_sum_of_its_weights_gradients():
    x, y = _data(32)
    small = _clustered(per_channel=False)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    grads = {}
    for preserve in (True, False):
        q = qat(small, preserve_clusters=preserve)
        fc = q.get_layer("quant_fc")
        var = fc.centroids if preserve else fc.layer.kernel
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn(y, q(x, training=True))
        grads[preserve] = tape.gradient(loss, var).numpy()
        if preserve:
            assignments = fc.assignments.numpy().reshape(fc.layer.kernel.shape)
    summed = [grads[False][assignments == j].sum() for j in range(4)]
    np.testing.assert_allclose(grads[True][0], summed, rtol=1e-4, atol=1e-7)


def test_cluster_preserving_qat_round_trips_through_a_keras_file(tmp_path):
    x, y = _data(32)
    q = _fit(qat(_clustered(per_channel=True)), x, y)
    q.save(tmp_path / "q.keras")
    loaded = keras.models.load_model(tmp_path / "q.keras")
    fc = loaded.get_layer("quant_fc")
    assert isinstance(fc, QuantizeWrapper) and fc.clusters == 16
    np.testing.assert_array_equal(q.get_layer("quant_fc").centroids.numpy(), fc.centroids.numpy())
    np.testing.assert_array_equal(q.predict(x, verbose=0), loaded.predict(x, verbose=0))
    assert not fc.layer.kernel.trainable and fc.centroids.trainable


def test_qat_step_option_preserve_clusters():
    from pydantic import ValidationError

    from tfopt.config import STEP_CONFIGS

    Config = STEP_CONFIGS["qat"]
    assert Config().preserve_clusters == "auto"
    assert Config(preserve_clusters=False).preserve_clusters is False
    with pytest.raises(ValidationError, match=r"preserve_clusters"):
        Config(preserve_clusters="yes")


def test_recipe_cluster_then_qat_keeps_the_clusters(tmp_path):
    """`tfopt run`'s steps ``cluster`` then ``qat``: the qat step trains the 4 centroids of each
    kernel (its default ``preserve_clusters: auto``); ``false`` trains the kernels themselves."""
    from tfopt._steps import StepContext, run_steps

    x, y = _data(64)
    data = tfopt.data.from_arrays(x, y, x_test=x[:16], y_test=y[:16], val_fraction=0.25)
    for preserve, expect in (("auto", {"conv": 4, "dw": 4, "fc": 4}), (False, {})):
        steps = tfopt.config.validate_steps(
            [
                {"type": "cluster", "n_clusters": 4, "epochs": 1},
                {"type": "qat", "epochs": 1, "learning_rate": 0.05, "preserve_clusters": preserve},
            ]
        )
        ctx = StepContext(data=data, run_dir=tmp_path, verbose=0, tensorboard=False)
        q = run_steps(steps, _conv_dense_model(), ctx)
        kept = {
            w.layer.name: len(np.unique(np.asarray(w.trained_kernel())))
            for w in q.layers
            if isinstance(w, QuantizeWrapper) and w.clusters is not None
        }
        assert kept == expect, kept
        report = ctx.records["2_qat"]["qat_report"]["changed"]
        assert ("4 clusters preserved" in report["fc"]) == bool(expect), report
