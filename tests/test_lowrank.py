"""Low-rank factorization (tfopt.lowrank): the SVD, the rank rule, the rewrite, the report, the step."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfopt
from tfopt.lowrank import choose_rank, factor_matrix, factorize


def _low_rank_kernel(shape, rank, seed=0):
    """A kernel whose (prod(shape[:-1]), shape[-1]) matrix has exactly ``rank``."""
    rng = np.random.default_rng(seed)
    m, n = int(np.prod(shape[:-1])), shape[-1]
    w = rng.normal(size=(m, rank)) @ rng.normal(size=(rank, n)) / np.sqrt(m)
    return w.reshape(shape).astype("float32")


def _model():
    inp = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(24, 3, strides=2, padding="same", activation="relu", name="c1")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Conv2D(32, 3, activation="relu", name="c2")(x)
    x = keras.layers.Reshape((16, 32))(x)
    x = keras.layers.Conv1D(32, 3, padding="causal", dilation_rate=2, name="c3")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(48, activation="relu", name="d1")(x)
    out = keras.layers.Dense(10, activation="softmax", name="d2")(x)
    return keras.Model(inp, out)


def test_factor_matrix_error_is_the_discarded_energy():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(40, 24))
    for r in (1, 5, 24):
        a, b, s = factor_matrix(w, r)
        assert a.shape == (40, r) and b.shape == (r, 24)
        err = float(((w - a.astype("float64") @ b.astype("float64")) ** 2).sum())
        # Eckart-Young: the squared Frobenius error is exactly the discarded squared spectrum
        # (up to the float32 rounding of the stored factors)
        assert err == pytest.approx(float((s[r:] ** 2).sum()), rel=1e-4, abs=1e-8)
    with pytest.raises(ValueError, match=r"rank must be in \[1, 24\]"):
        factor_matrix(w, 25)


def test_choose_rank_rules():
    s = np.array([3.0, 2.0, 1.0, 0.0])  # squared: 9, 4, 1, 0 of 14
    assert choose_rank(s, energy=9 / 14) == 1
    assert choose_rank(s, energy=0.65) == 2
    assert choose_rank(s, energy=13 / 14) == 2
    assert choose_rank(s, energy=0.95) == 3
    assert choose_rank(s, energy=1.0) == 3  # the zero singular value is never needed
    assert choose_rank(s, rank_ratio=0.5) == 2
    assert choose_rank(s, rank_ratio=0.1) == 1
    assert choose_rank(s, rank_ratio=1.0) == 4
    with pytest.raises(ValueError, match="exactly one of energy= and rank_ratio="):
        choose_rank(s, energy=0.9, rank_ratio=0.5)
    with pytest.raises(
        ValueError, match=r"energy must be a number in \(0, 1\]. Received: energy=1.5"
    ):
        choose_rank(s, energy=1.5)


def test_exact_rank_kernels_are_reproduced():
    """A kernel of rank 4 is factorized at rank 4 with energy=1.0 and computes the same outputs,
    for a strided 'same' Conv2D, a valid Conv2D, a causal dilated Conv1D and Dense layers."""
    model = _model()
    for name in ("c1", "c2", "c3", "d1", "d2"):
        layer = model.get_layer(name)
        layer.kernel.assign(_low_rank_kernel(tuple(layer.kernel.shape), 3))
    x = np.random.default_rng(0).normal(size=(8, 12, 12, 3)).astype("float32")
    small = factorize(model, energy=1.0)
    report = small.tfopt_report
    assert report.details["ranks"] == {"c1": 3, "c2": 3, "c3": 3, "d1": 3, "d2": 3}
    assert set(report.skipped) == {"bn"} and "not factorizable" in report.skipped["bn"]
    np.testing.assert_allclose(small(x), model(x), atol=2e-5)
    # the user's model is untouched, the copy is plain Keras layers
    assert [layer.name for layer in model.layers if "lowrank" in layer.name] == []
    assert small.get_layer("c1_lowrank").filters == 3 and small.get_layer("c1").kernel_size == (
        1,
        1,
    )
    assert small.get_layer("c1_lowrank").strides == (2, 2)
    assert small.get_layer("d1_lowrank").units == 3 and small.get_layer("d1").units == 48


def test_rank_rule_report_and_measures(tmp_path):
    model = _model()
    small = factorize(model, rank_ratio=0.25, filters=["^c2$", "^d"])
    report = small.tfopt_report
    # ceil(0.25 * min(m, n)): c2 (216x32) -> 8, d1 (512x48) -> 12, d2 (48x10) -> 3
    assert report.details["ranks"] == {"c2": 8, "d1": 12, "d2": 3}
    assert report.skipped["c1"] == "excluded by filters"
    assert report.changed["d1"] == "rank 12 of 48 (" + report.changed["d1"].split("(")[1]
    assert "512x48 kernel, 24576 -> 6720 weights" in report.changed["d1"]
    params = model.count_params()
    saved = (216 * 32 - 8 * 248) + (512 * 48 - 12 * 560) + (48 * 10 - 3 * 58)
    assert report.details["params_before"] == params
    assert report.details["params_after"] == small.count_params() == params - saved
    assert report.details["macs_after"] < report.details["macs_before"]
    # a rank that saves nothing is skipped with the numbers
    kept = factorize(model, energy=1.0, filters="d2")
    assert "saves nothing: r*(m+n) = 580 >= m*n = 480" in kept.tfopt_report.skipped["d2"]
    # .keras round trip
    path = tmp_path / "lr.keras"
    small.save(path)
    x = np.random.default_rng(0).normal(size=(4, 12, 12, 3)).astype("float32")
    np.testing.assert_allclose(keras.models.load_model(path)(x), small(x), atol=1e-6)


def test_sequential_nested_and_shared():
    inner = keras.Sequential([keras.Input((20,)), keras.layers.Dense(20, name="inner_fc")])
    shared = keras.layers.Dense(20, name="shared")
    inp = keras.Input((20,))
    y = shared(inner(inp))
    out = shared(y)
    model = keras.Model(inp, out)
    for w in (inner.layers[0].kernel, shared.kernel):
        w.assign(_low_rank_kernel((20, 20), 2, seed=3))
    small = factorize(model, energy=1.0)
    x = np.random.default_rng(0).normal(size=(5, 20)).astype("float32")
    np.testing.assert_allclose(small(x), model(x), rtol=1e-4, atol=1e-4)
    assert small.tfopt_report.details["ranks"] == {"inner_fc": 2, "shared": 2}
    # the shared layer stays one pair of layers called twice
    assert sum(layer.name == "shared_lowrank" for layer in small.layers) == 1
    seq = keras.Sequential(
        [
            keras.Input((20,)),
            keras.layers.Dense(16, name="dense"),
            keras.layers.Dense(3, name="dense_1"),
        ]
    )
    names = [layer.name for layer in factorize(seq, rank_ratio=0.25).layers[1:]]
    assert names == ["dense_lowrank", "dense", "dense_1_lowrank", "dense_1"], names


def test_errors():
    with pytest.raises(TypeError, match="subclassed model"):

        class Net(keras.Model):
            def __init__(self):
                super().__init__()
                self.fc = keras.layers.Dense(2)

            def call(self, x):
                return self.fc(x)

        net = Net()
        net(np.zeros((1, 3), "float32"))
        factorize(net)
    with pytest.raises(ValueError, match="rank_ratio must be a number in"):
        factorize(_model(), rank_ratio=0.0)


def test_lowrank_recipe_step(tmp_path, tiny_data):
    from tfopt._steps import StepContext, run_steps

    x, y = tiny_data
    data = tfopt.data.from_arrays(x, y, x_test=x[:16], y_test=y[:16])
    model = keras.Sequential(
        [
            keras.Input((40, 1)),
            keras.layers.Conv1D(16, 5, activation="relu", name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu", name="fc"),
            keras.layers.Dense(10, name="logits"),
        ]
    )
    steps = tfopt.config.validate_steps([{"type": "lowrank", "rank_ratio": 0.25, "epochs": 1}])
    ctx = StepContext(data=data, run_dir=tmp_path, verbose=0, tensorboard=False)
    out = run_steps(steps, model, ctx)
    record = ctx.records["1_lowrank"]["lowrank"]
    assert record["details"]["ranks"] == {"conv": 2, "fc": 8, "logits": 3}
    assert out.count_params() == record["details"]["params_after"] < model.count_params()
    assert out.optimizer is not None  # fine-tuned and compiled
    with pytest.raises(tfopt.ConfigError, match="energy or rank_ratio, not both"):
        tfopt.config.validate_steps([{"type": "lowrank", "energy": 0.8, "rank_ratio": 0.5}])
    with pytest.raises(tfopt.ConfigError, match="energy"):
        tfopt.config.validate_steps([{"type": "lowrank", "energy": 0.0}])


def test_lowrank_is_a_search_dimension():
    import keras_tuner

    steps = tfopt.tune.recipe_steps(
        {"lowrank_energy": 0.9, "sparsity": 0.5, "quantization": "qat", "epochs": 8}
    )
    assert [s.type for s in steps] == ["lowrank", "prune", "qat"]
    assert steps[0].energy == 0.9 and steps[0].epochs == 2
    assert tfopt.tune.describe(steps, "tflite-int8") == [
        "lowrank(0.9)",
        steps and "prune(0.5,polynomial,large)",
        "qat",
    ]
    assert [s.type for s in tfopt.tune.recipe_steps({"lowrank_energy": 0.0})] == []
    hm = tfopt.tune.CompressionHyperModel(
        builder="mnist1d_cnn", techniques=("lowrank",), space={"lowrank_energy": [0.8, 0.95]}
    )
    assert "lowrank_energy" in hm.hyperparameter_names()
    hp = keras_tuner.HyperParameters()
    hm.declare(hp)
    assert hp.values["lowrank_energy"] == 0.8
    assert [s.type for s in hm.steps(hp)] == ["lowrank"]
    # opt-in: the default search is the one measured before lowrank existed
    assert "lowrank" not in tfopt.tune.CompressionHyperModel(builder="mnist1d_cnn").techniques
