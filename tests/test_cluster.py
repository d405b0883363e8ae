"""Weight clustering: distinct values, sparsity, strip parity, save/load, TFLite size, errors."""

import gzip

import keras
import numpy as np
import pytest
from _helpers import compile_classifier

import tfopt
from tfopt.cluster import ClusterWeights, cluster, distinct_values, strip

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _model(width=8, dense=32):
    return tfopt.models.get("mnist1d_cnn", width=width, dense=dense)


def _fit(model, data, lr=1e-2, epochs=2):
    compile_classifier(model, lr).fit(*data, epochs=epochs, batch_size=16, verbose=0)


def _kernels(model):
    return {
        layer.name: np.array(layer.kernel.numpy())
        for layer in model.layers
        if isinstance(layer, keras.layers.Dense | keras.layers.Conv1D)
    }


def test_fit_then_strip_has_exactly_n_clusters_values_and_same_outputs(tiny_data):
    model = _model()
    before = _kernels(model)
    clustered = cluster(model, 4)
    assert all(isinstance(clustered.get_layer(n), ClusterWeights) for n in before)
    start = {n: clustered.get_layer(n).centroids.numpy().copy() for n in before}
    _fit(clustered, tiny_data)
    for name in before:  # the centroids trained
        assert not np.allclose(clustered.get_layer(name).centroids.numpy(), start[name])
    small = strip(clustered)
    assert all(type(layer).__module__.startswith("keras.") for layer in small.layers)
    assert distinct_values(small) == {n: 4 for n in before}
    x = tiny_data[0]
    np.testing.assert_allclose(
        small.predict(x, verbose=0), clustered.predict(x, verbose=0), atol=1e-6
    )
    # the user's model is untouched
    for name, kernel in _kernels(model).items():
        np.testing.assert_array_equal(kernel, before[name])
    assert not any(isinstance(layer, ClusterWeights) for layer in model.layers)


def test_per_channel_codebooks(tiny_data):
    clustered = cluster(_model(), 3, per_channel=True, filters=["conv2", "fc1"])
    _fit(clustered, tiny_data, epochs=1)
    small = strip(clustered)
    per_channel = distinct_values(small, per_channel=True)
    assert per_channel["conv2"] == 3 and per_channel["fc1"] == 3
    whole = distinct_values(small)
    assert whole["conv2"] > 3 and whole["fc1"] > 3  # each channel has its own 3 values
    assert whole["conv3"] == 320  # not selected by the filters: left float
    assert clustered.get_layer("conv2").centroids.shape == (8, 3)


def test_linear_init_spaces_centroids_evenly():
    model = _model()
    clustered = cluster(model, 5, init="linear", filters="fc1")
    kernel = model.get_layer("fc1").kernel.numpy()
    expected = np.linspace(kernel.min(), kernel.max(), 5).astype("float32")
    np.testing.assert_allclose(clustered.get_layer("fc1").centroids.numpy()[0], expected, rtol=1e-6)
    w = clustered.get_layer("fc1").clustered_kernel_numpy()
    nearest = expected[np.argmin(np.abs(kernel[..., None] - expected), axis=-1)]
    np.testing.assert_allclose(w, nearest, rtol=1e-6)


def _sparse_model(fraction=0.5):
    model = _model()
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if layer.weights:
            k = layer.kernel.numpy()
            k[rng.random(k.shape) < fraction] = 0.0
            layer.kernel.assign(k)
    return model


def test_preserve_sparsity_keeps_zeros_exactly(tiny_data):
    model = _sparse_model()
    zeros = {n: k == 0 for n, k in _kernels(model).items()}
    clustered = cluster(model, 4, preserve_sparsity=True)
    notes = clustered.cluster_report.changed.values()
    assert notes and all(", 0 zeros" not in n for n in notes)
    _fit(clustered, tiny_data, lr=5e-2)
    small = strip(clustered)
    for name, k in _kernels(small).items():
        np.testing.assert_array_equal(k == 0, zeros[name])  # same zeros, no new ones
        assert len(np.unique(k)) == 4  # zero + 3 trained centroids
    # without preserve_sparsity the zeros join ordinary clusters and move
    loose = cluster(model, 4, preserve_sparsity=False)
    _fit(loose, tiny_data, lr=5e-2)
    moved = _kernels(strip(loose))
    assert any((moved[n][zeros[n]] != 0).any() for n in zeros)


def test_sparsity_survives_tfopt_prune_then_cluster(tiny_data):
    pruned = tfopt.prune.prune(_model(), tfopt.prune.ConstantSparsity(0.75))
    _fit(pruned, tiny_data, lr=1e-3, epochs=1)
    sparse = tfopt.prune.strip(pruned)
    zeros = {n: k == 0 for n, k in _kernels(sparse).items()}
    assert np.mean(zeros["fc1"]) >= 0.7
    clustered = cluster(sparse, 8)
    _fit(clustered, tiny_data, lr=1e-2, epochs=1)
    for name, k in _kernels(strip(clustered)).items():
        np.testing.assert_array_equal(k == 0, zeros[name])


def test_stripped_sparse_clustered_model_keeps_zeros_through_qat(tiny_data):
    model = _sparse_model()
    clustered = cluster(model, 8)
    _fit(clustered, tiny_data, epochs=1)
    small = strip(clustered)
    zeros = {n: k == 0 for n, k in _kernels(small).items()}
    q = tfopt.quantize.qat(small)  # strip gave plain Keras layers: QAT takes them as usual
    assert sorted(q.qat_report.changed) == sorted(zeros)
    _fit(q, tiny_data, lr=1e-2, epochs=1)
    for name, zero in zeros.items():
        kernel = next(w for w in q.weights if w.path.endswith(f"/{name}/kernel"))
        np.testing.assert_array_equal(kernel.numpy() == 0, zero)


def test_report_lists_clustered_and_skipped_layers():
    inputs = keras.Input((40, 1))
    x = keras.layers.Conv1D(8, 5, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(32, name="fc")(x)
    outputs = keras.layers.Dense(2, name="tiny")(keras.layers.Dense(2, name="pre")(x))
    model = keras.Model(inputs, outputs)
    model.get_layer("conv").kernel.assign(np.zeros((5, 1, 8)))
    report = cluster(model, 16, filters=lambda layer: layer.name != "conv").cluster_report
    assert list(report.changed) == ["fc", "pre", "tiny"]
    assert report.skipped == {
        "conv": "excluded by filters (its 40 zero weights are not protected if the model is "
        "fine-tuned)",
        "bn": "BatchNormalization is not clusterable (supported: Dense, Conv1D, Conv2D, Conv3D, "
        "DepthwiseConv1D, DepthwiseConv2D)",
    }
    assert "+ fc (Dense)" in str(report)
    assert (
        "tiny (Dense): 4 weights, 0 zeros (4 weights in the kernel <= n_clusters=16: every "
        in str(report)
    )


@pytest.mark.parametrize("init", ["kmeans++", "linear"])
def test_small_kernels_are_clustered_losslessly(init):
    model = _model(width=4)  # conv1: 5 weights per channel
    k = model.get_layer("conv1").kernel.numpy()
    k[0] = 0.0
    model.get_layer("conv1").kernel.assign(k)
    clustered = cluster(model, 8, per_channel=True, init=init, filters="conv1")
    np.testing.assert_array_equal(clustered.get_layer("conv1").clustered_kernel_numpy(), k)


def test_keras_save_load_round_trip(tmp_path, tiny_data):
    clustered = cluster(_model(), 6, per_channel=True)
    _fit(clustered, tiny_data, epochs=1)
    path = tmp_path / "clustered.keras"
    clustered.save(path)
    loaded = tfopt.models.load(path)
    assert isinstance(loaded.get_layer("fc1"), ClusterWeights)
    assert loaded.get_layer("fc1").get_config()["n_clusters"] == 6
    x = tiny_data[0]
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), clustered.predict(x, verbose=0))
    np.testing.assert_array_equal(
        loaded.get_layer("conv2").assignments.numpy(),
        clustered.get_layer("conv2").assignments.numpy(),
    )
    assert distinct_values(strip(loaded), per_channel=True)["fc1"] == 6


def test_sequential_nested_and_depthwise_causal_layers(tiny_data):
    inner = keras.Sequential(
        [keras.Input((40, 8)), keras.layers.Conv1D(8, 3, padding="causal", name="causal")],
        name="inner",
    )
    inputs = keras.Input((40, 1))
    x = keras.layers.Conv1D(8, 5, padding="same", name="c1")(inputs)
    x = keras.layers.DepthwiseConv1D(5, padding="same", depth_multiplier=2, name="dw")(inner(x))
    outputs = keras.layers.Dense(10, name="out")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    clustered = cluster(model, 4, per_channel=True)
    assert list(clustered.cluster_report.changed) == ["c1", "causal", "dw", "out"]
    _fit(clustered, tiny_data, epochs=1)
    small = strip(clustered)
    np.testing.assert_allclose(
        small.predict(tiny_data[0], verbose=0),
        clustered.predict(tiny_data[0], verbose=0),
        atol=1e-5,
    )
    assert distinct_values(small, per_channel=True) == {"c1": 4, "causal": 4, "dw": 4, "out": 4}
    seq = keras.Sequential([keras.Input((40, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    assert len(cluster(seq, 4).cluster_report.changed) == 1


def test_stripped_float_tflite_gzips_smaller(tmp_path):
    model = _model(width=8, dense=32)
    small = strip(cluster(model, 8))
    gz = {}
    for name, m in (("float", model), ("clustered", small)):
        art = tfopt.export.tflite(m, tmp_path / f"{name}.tflite")
        gz[name] = len(gzip.compress(art.path.read_bytes()))
    assert gz["clustered"] < 0.5 * gz["float"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"n_clusters": 1},
            ValueError,
            r"n_clusters must be an integer >= 2. Received: n_clusters=1",
        ),
        ({"n_clusters": 4.0}, ValueError, r"Received: n_clusters=4.0"),
        ({"init": "kmeans"}, ValueError, r"Unrecognized init='kmeans'. Supported inits are"),
        ({"filters": 3}, TypeError, r"Received: filters=3"),
    ],
)
def test_bad_arguments_echo_the_value(kwargs, error, match):
    with pytest.raises(error, match=match):
        cluster(_model(), **kwargs)


def test_bad_models():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = keras.layers.Dense(4)

        def call(self, x):
            return self.d(x)

    sub = Sub()
    sub(np.zeros((1, 3), "float32"))
    with pytest.raises(tfopt.RewriteError, match=r"Sub does not support that.*get_config"):
        cluster(sub)
    unbuilt = keras.Sequential([keras.layers.Dense(4)])
    with pytest.raises(tfopt.RewriteError, match="is not built"):
        cluster(unbuilt)
    with pytest.raises(TypeError, match="must be a keras.Model"):
        cluster("model.keras")
    with pytest.raises(ValueError, match="ClusterWeights wraps"):
        ClusterWeights(keras.layers.LSTM(4))


def test_cluster_recipe_step(tmp_path, tiny_data):
    from tfopt._pipeline import StepContext
    from tfopt.cluster import _step
    from tfopt.config._steps import ClusterStepConfig

    x, y = tiny_data
    data = tfopt.data.from_arrays(x, y, x_test=x[:16], y_test=y[:16])
    ctx = StepContext(data=data, run_dir=tmp_path, verbose=0, stage="3_cluster")
    cfg = ClusterStepConfig(n_clusters=4, epochs=1, learning_rate=1e-2)
    out = _step.run(cfg, _model(), ctx)
    assert all(type(layer).__module__.startswith("keras.") for layer in out.layers)
    assert ctx.records["3_cluster"]["distinct_values"] == {
        "conv1": 4,
        "conv2": 4,
        "conv3": 4,
        "fc1": 4,
        "logits": 4,
    }
    assert ctx.records["3_cluster"]["cluster"]["details"]["n_clusters"] == 4
    cfg = tfopt.config.validate({"steps": [{"type": "cluster", "n_clusters": 8}]})
    assert cfg.steps[0].n_clusters == 8
    with pytest.raises(tfopt.ConfigError, match="n_clusters"):
        tfopt.config.validate({"steps": [{"type": "cluster", "n_clusters": 1}]})


@keras.saving.register_keras_serializable(package="tfopt_tests")
class _SubNet(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.body = [keras.layers.Dense(8, activation="relu"), keras.layers.Dense(8)]
        self.head = keras.layers.Dense(3)

    def call(self, x, training=None):
        for layer in self.body:
            x = layer(x)
        return self.head(x)


def test_subclassed_model_is_clustered_on_a_copy():
    net = _SubNet()
    x = np.random.default_rng(0).normal(size=(4, 5)).astype("float32")
    net(x)
    before = [w.copy() for w in net.get_weights()]
    clustered = cluster(net, 4)
    assert len(clustered.cluster_report.changed) == 3
    small = strip(clustered)
    assert max(distinct_values(small).values()) <= 4
    np.testing.assert_allclose(small(x), clustered(x), atol=1e-5)
    for a, b in zip(before, net.get_weights()):  # the user's model is untouched
        np.testing.assert_array_equal(a, b)
