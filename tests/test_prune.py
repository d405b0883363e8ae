"""tfopt.prune: schedules, wrappers, prune/strip/sparsity, resume, callbacks and the recipe step."""

import glob
import math
import os

import keras
import numpy as np
import pytest
from _helpers import random_mnist1d

import tfopt
from tfopt.prune import (
    ConstantSparsity,
    GradualCubic,
    PolynomialDecay,
    PruneLowMagnitude,
    PruningScheduleWarning,
    prune,
    sparsity,
    strip,
)
from tfopt.prune._prune import wrappers_of


def _mlp(units=16, inputs=8, outputs=4):
    inp = keras.Input((inputs,))
    x = keras.layers.Dense(units, activation="relu", name="d1")(inp)
    out = keras.layers.Dense(outputs, name="d2")(x)
    return keras.Model(inp, out)


def _data(n=32, inputs=8, outputs=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, inputs)).astype("float32"), rng.normal(size=(n, outputs)).astype(
        "float32"
    )


def _compile(model, lr=0.01):
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    return model


def _masks(model):
    return {
        w.name: [keras.ops.convert_to_numpy(m.value) for m in w.masks] for w in wrappers_of(model)
    }


# -- schedules --------------------------------------------------------------------------------


def test_polynomial_decay_matches_tfmot_formula_in_python_and_tensorflow():
    import tensorflow as tf

    s = PolynomialDecay(0.1, 0.8, begin_step=10, end_step=110, power=3, frequency=10)
    for step in [0, 9, 10, 35, 60, 109, 110, 500]:
        p = min(1.0, max(0.0, (step - 10) / 100))
        expected = 0.0 if step < 10 else 0.8 + (0.1 - 0.8) * (1 - p) ** 3
        assert s(step) == pytest.approx(expected, abs=1e-9)
        assert float(s(tf.constant(step, tf.int64))) == pytest.approx(expected, abs=1e-6)
    assert [t for t in range(0, 130) if s.should_update(t)] == list(range(10, 111, 10))
    assert [t for t in range(0, 130) if bool(s.should_update(tf.constant(t)))] == list(
        range(10, 111, 10)
    )


def test_schedule_updates_at_end_step_even_off_the_frequency_grid():
    s = PolynomialDecay(0.0, 0.5, begin_step=0, end_step=25, frequency=10)
    assert [t for t in range(40) if s.should_update(t)] == [0, 10, 20, 25]
    assert s(25) == 0.5


def test_constant_and_cubic_schedules():
    c = ConstantSparsity(0.6, begin_step=5, frequency=3)
    assert (c(4), c(5), c(1000)) == (0.0, 0.6, 0.6)
    assert [t for t in range(15) if c.should_update(t)] == [5, 8, 11, 14]
    g = GradualCubic(0.0, 0.9, begin_step=0, end_step=100)
    assert g(50) == pytest.approx(0.9 * (1 - 0.5**3))
    assert g.power == 3.0 and g(100) == pytest.approx(0.9)


@pytest.mark.parametrize(
    "schedule",
    [
        ConstantSparsity(0.5, begin_step=3, end_step=9, frequency=2),
        PolynomialDecay(0.1, 0.7, begin_step=1, end_step=50, power=2.0, frequency=7),
        GradualCubic(0.0, 0.8, begin_step=0, end_step=40, frequency=4),
    ],
)
def test_schedules_serialize(schedule):
    from tfopt.prune._schedules import deserialize, serialize

    again = type(schedule).from_config(schedule.get_config())
    assert again == schedule and again(7) == schedule(7)
    assert deserialize(serialize(schedule)) == schedule


@pytest.mark.parametrize(
    "make, match",
    [
        (
            lambda: ConstantSparsity(1.2),
            r"target_sparsity must be in \[0, 1\). Received: target_sparsity=1.2",
        ),
        (lambda: ConstantSparsity(-0.1), r"Received: target_sparsity=-0.1"),
        (
            lambda: ConstantSparsity(0.5, frequency=0),
            r"frequency must be >= 1. Received: frequency=0",
        ),
        (
            lambda: PolynomialDecay(0.0, 0.8, begin_step=50, end_step=50),
            r"end_step=50, begin_step=50",
        ),
        (
            lambda: PolynomialDecay(0.0, 0.8, power=0),
            r"power must be a number > 0. Received: power=0",
        ),
        (
            lambda: PolynomialDecay(0.0, 0.8, begin_step=-1),
            r"begin_step must be >= 0. Received: begin_step=-1",
        ),
    ],
)
def test_bad_schedule_arguments_echo_the_value(make, match):
    with pytest.raises(ValueError, match=match):
        make()
    with pytest.raises(TypeError, match=r"Received: target_sparsity='0.5'"):
        ConstantSparsity("0.5")


def test_schedule_check_against_planned_steps():
    s = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=100, frequency=10)
    assert s.check(101) is True
    with pytest.warns(
        PruningScheduleWarning, match=r"reaches target_sparsity=0.8 at step 100.*runs 50 steps"
    ):
        assert s.check(50) is False
    with pytest.raises(ValueError, match=r"at most 49"):
        s.check(50, strict=True)
    assert s.check(60, start_step=50) is True  # resuming at step 50
    assert ConstantSparsity(0.0, begin_step=10**6).check(1) is True  # nothing to reach


# -- prune / fit / strip ----------------------------------------------------------------------


def test_prune_returns_new_model_and_leaves_the_users_model_alone():
    model = _mlp()
    before = [w.copy() for w in model.get_weights()]
    pruned = prune(model, ConstantSparsity(0.5, frequency=1))
    x, y = _data()
    np.testing.assert_array_equal(pruned.predict(x, verbose=0), model.predict(x, verbose=0))
    _compile(pruned).fit(x, y, batch_size=8, epochs=1, verbose=0)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert all(not isinstance(layer, PruneLowMagnitude) for layer in model.layers)
    assert sparsity(model).global_sparsity == 0.0
    assert sparsity(pruned).global_sparsity == pytest.approx(0.5, abs=0.01)
    assert list(pruned.pruning_report.changed) == ["d1", "d2"]


def test_zero_sparsity_is_a_no_op():
    model = _mlp()
    plain = keras.models.clone_model(model)
    plain.set_weights(model.get_weights())
    pruned = prune(model, ConstantSparsity(0.0, frequency=1))
    x, y = _data()
    _compile(plain).fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    _compile(pruned).fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    np.testing.assert_allclose(
        pruned.predict(x, verbose=0), plain.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )
    assert all(np.all(m == 1) for ms in _masks(pruned).values() for m in ms)
    assert [w.step for w in wrappers_of(pruned)] == [8, 8]


def test_target_reached_within_one_percent_at_end_step():
    model = _mlp(units=32)
    # 10 steps (0..9); end_step=9 is off the frequency grid (0, 4, 8) and is still reached.
    pruned = prune(model, PolynomialDecay(0.0, 0.8, begin_step=0, end_step=9, power=1, frequency=4))
    x, y = _data(n=80)
    _compile(pruned).fit(x[:72], y[:72], batch_size=8, epochs=1, shuffle=False, verbose=0)
    mid = sparsity(pruned)
    assert mid.global_sparsity == pytest.approx(0.8 * 8 / 9, abs=0.01)  # after step 8 only
    _compile(pruned).fit(x[72:], y[72:], batch_size=8, epochs=1, verbose=0)
    report = sparsity(pruned)
    for name, values in report.layers.items():
        assert abs(values["sparsity"] - 0.8) <= 0.01, (name, values)
    assert [w.step for w in wrappers_of(pruned)] == [10, 10]


def test_stop_and_restart_via_keras_file_keeps_step_masks_and_schedule(tmp_path):
    x, y = _data(n=64)
    schedule = PolynomialDecay(0.0, 0.75, begin_step=0, end_step=12, frequency=2)
    pruned = _compile(prune(_mlp(), schedule))
    pruned.fit(x[:40], y[:40], batch_size=8, epochs=1, shuffle=False, verbose=0)  # steps 0..4
    path = tmp_path / "mid.keras"
    pruned.save(path)
    loaded = keras.models.load_model(path)
    assert [w.step for w in wrappers_of(loaded)] == [5, 5]
    for a, b in zip(_masks(pruned).values(), _masks(loaded).values()):
        for ma, mb in zip(a, b):
            np.testing.assert_array_equal(ma, mb)
    assert wrappers_of(loaded)[0].schedule == schedule
    # both continue for 8 more steps (5..12) and end identical, at the target
    for m in (pruned, loaded):
        m.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert [w.step for w in wrappers_of(loaded)] == [13, 13]
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-5
    )
    for a, b in zip(_masks(pruned).values(), _masks(loaded).values()):
        for ma, mb in zip(a, b):
            np.testing.assert_array_equal(ma, mb)
    assert sparsity(loaded).global_sparsity == pytest.approx(0.75, abs=0.01)


def test_strip_matches_pruned_outputs_with_plain_layers():
    x, y = _data()
    pruned = _compile(prune(_mlp(), ConstantSparsity(0.6, frequency=1)))
    pruned.fit(x, y, batch_size=8, epochs=1, verbose=0)
    small = strip(pruned)
    assert [type(layer).__name__ for layer in small.layers] == ["InputLayer", "Dense", "Dense"]
    assert [layer.name for layer in small.layers[1:]] == ["d1", "d2"]
    np.testing.assert_allclose(small.predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-6)
    kernel = keras.ops.convert_to_numpy(small.get_layer("d1").kernel)
    assert (kernel == 0).mean() == pytest.approx(0.6, abs=0.01)
    assert sparsity(small).global_sparsity == pytest.approx(0.6, abs=0.01)
    assert len(wrappers_of(pruned)) == 2  # the pruned model is unchanged


def test_strip_warns_when_the_target_was_not_reached():
    pruned = prune(_mlp(), PolynomialDecay(0.0, 0.8, begin_step=0, end_step=100))
    with pytest.warns(PruningScheduleWarning, match=r"prune_d1 \(step 0, target at step 100\)"):
        strip(pruned)


def _conv_bn(seed=0):
    inp = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, use_bias=False, name="conv")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(3, name="fc")(x))
    bn = model.get_layer("bn")
    bn.moving_mean.assign(np.full(4, 5.0, "float32"))  # stale statistics
    bn.moving_variance.assign(np.full(4, 9.0, "float32"))
    return model


def test_strip_recomputes_batchnorm_statistics_on_batchnorm_data():
    x = np.random.default_rng(0).normal(size=(300, 6, 6, 2)).astype("float32")
    pruned = prune(_conv_bn(), ConstantSparsity(0.5, frequency=1))
    kept = strip(pruned)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(kept.get_layer("bn").moving_mean), 5)
    small = strip(pruned, batchnorm_data=x)
    batch = np.random.default_rng(0).permutation(300)[:256]  # one whole batch of 256
    conv = keras.ops.convert_to_numpy(small.get_layer("conv")(x[batch])).reshape(-1, 4)
    bn = small.get_layer("bn")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean), conv.mean(0), atol=1e-5)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(bn.moving_variance), conv.var(0), rtol=1e-4
    )
    assert bn.momentum == 0.99  # restored
    frozen = _conv_bn()
    frozen.get_layer("bn").trainable = False
    still = strip(prune(frozen), batchnorm_data=x)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(still.get_layer("bn").moving_mean), 5)


def test_two_four_pattern_holds_exactly_in_every_group():
    inp = keras.Input((6, 4))
    x = keras.layers.Conv1D(8, 3, name="conv")(inp)  # kernel (3, 4, 8): 12 rows per channel
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(4, name="fc")(x)  # kernel (32, 4)
    model = keras.Model(inp, out)
    pruned = _compile(prune(model, m_by_n=(2, 4)))
    rng = np.random.default_rng(1)
    xs, ys = (
        rng.normal(size=(16, 6, 4)).astype("float32"),
        rng.normal(size=(16, 4)).astype("float32"),
    )
    pruned.fit(xs, ys, batch_size=8, epochs=1, verbose=0)
    small = strip(pruned)
    for name in ("conv", "fc"):
        kernel = keras.ops.convert_to_numpy(small.get_layer(name).kernel)
        cols = kernel.reshape(-1, kernel.shape[-1]).T  # (out, reduction)
        groups = cols.reshape(cols.shape[0], -1, 4)
        assert np.all((groups == 0).sum(-1) == 2), name
    assert sparsity(small).global_sparsity == 0.5


def test_m_by_n_skips_layers_it_cannot_group_and_reports_why():
    inp = keras.Input((10, 1))
    x = keras.layers.Conv1D(4, 3, name="first")(inp)  # 3 reduction values: not a multiple of 4
    out = keras.layers.Dense(4, name="fc")(keras.layers.Flatten()(x))
    pruned = prune(keras.Model(inp, out), m_by_n=(2, 4))
    assert list(pruned.pruning_report.changed) == ["fc"]
    ((name, reason),) = pruned.pruning_report.skipped.items()
    assert name == "first" and "not a multiple of n=4" in reason


def test_block_sparsity_prunes_whole_blocks():
    pruned = _compile(prune(_mlp(units=16), ConstantSparsity(0.5, frequency=1), block_size=(2, 2)))
    x, y = _data()
    pruned.fit(x, y, batch_size=8, epochs=1, verbose=0)
    kernel = keras.ops.convert_to_numpy(strip(pruned).get_layer("d1").kernel)  # (8, 16)
    blocks = (kernel == 0).reshape(4, 2, 8, 2).transpose(0, 2, 1, 3).reshape(32, 4)
    assert set(blocks.sum(-1).tolist()) <= {0, 4}  # a block is all zero or all kept
    assert (kernel == 0).mean() == 0.5


def test_unsupported_layers_are_reported_not_crashing():
    class MyDense(keras.layers.Dense):
        def call(self, x):  # its own call: it may not read its kernel as Dense does
            return super().call(x) * 2.0

    inp = keras.Input((5, 3))
    x = keras.layers.LSTM(4, return_sequences=True, name="lstm")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Flatten()(x)
    x = MyDense(6, name="custom")(x)
    x = keras.layers.Dense(6, name="skipme")(x)
    out = keras.layers.Dense(2, name="head")(x)
    model = keras.Model(inp, out)
    pruned = prune(model, ConstantSparsity(0.5), filters=lambda layer: layer.name != "skipme")
    reasons = pruned.pruning_report.skipped
    assert set(reasons) == {"lstm", "bn", "custom", "skipme"}
    assert "LSTM has no prunable kernel" in reasons["lstm"]
    assert "a subclass of Dense" in reasons["custom"]
    assert reasons["skipme"] == "excluded by filters"
    assert list(pruned.pruning_report.changed) == ["head"]
    xs = np.random.default_rng(0).normal(size=(4, 5, 3)).astype("float32")
    np.testing.assert_allclose(
        pruned.predict(xs, verbose=0), model.predict(xs, verbose=0), atol=1e-6
    )
    assert "skipped 4" in str(pruned.pruning_report)


def test_filters_by_regex_and_names():
    assert list(prune(_mlp(), filters="^d2$").pruning_report.changed) == ["d2"]
    assert list(prune(_mlp(), filters=["d1"]).pruning_report.changed) == ["d1"]


def test_bad_arguments_echo_the_value():
    model = _mlp()
    with pytest.raises(TypeError, match=r"Received: schedule=0.5 of type builtins.float"):
        prune(model, 0.5)
    with pytest.raises(ValueError, match=r"0 < m < n.*Received: m_by_n=\(4, 2\)"):
        prune(model, m_by_n=(4, 2))
    with pytest.raises(ValueError, match=r"Received: block_size=\(0, 2\)"):
        prune(model, block_size=(0, 2))
    with pytest.raises(ValueError, match=r"m_by_n or block_size, not both"):
        prune(model, m_by_n=(2, 4), block_size=(2, 2))
    with pytest.raises(TypeError, match=r"Received: filters=5"):
        prune(model, filters=5)
    with pytest.raises(ValueError, match=r"not a valid regex.*Received: filters='\('"):
        prune(model, filters="(")
    with pytest.raises(TypeError, match=r"must be a keras.Model \(Keras 3\). Received: model=str"):
        prune("model.keras")
    with pytest.raises(ValueError, match=r"Cannot prune layer 'lstm': LSTM has no prunable kernel"):
        PruneLowMagnitude(keras.layers.LSTM(2, name="lstm"))


# -- every wrapper: .keras round trip ---------------------------------------------------------

_LAYERS = {
    "Dense": ((6,), lambda: keras.layers.Dense(4)),
    "EinsumDense": ((6,), lambda: keras.layers.EinsumDense("ab,bc->ac", output_shape=4)),
    "Conv1D": ((8, 2), lambda: keras.layers.Conv1D(4, 3)),
    "Conv2D": ((6, 6, 2), lambda: keras.layers.Conv2D(4, 3)),
    "Conv3D": ((4, 4, 4, 2), lambda: keras.layers.Conv3D(2, 2)),
    "DepthwiseConv1D": ((8, 2), lambda: keras.layers.DepthwiseConv1D(3, depth_multiplier=2)),
    "DepthwiseConv2D": ((6, 6, 2), lambda: keras.layers.DepthwiseConv2D(3, depth_multiplier=2)),
    "SeparableConv1D": ((8, 2), lambda: keras.layers.SeparableConv1D(4, 3)),
    "SeparableConv2D": ((6, 6, 2), lambda: keras.layers.SeparableConv2D(4, 3)),
    "Conv1DTranspose": ((5, 2), lambda: keras.layers.Conv1DTranspose(4, 3)),
    "Conv2DTranspose": ((4, 4, 2), lambda: keras.layers.Conv2DTranspose(4, 3)),
    "Embedding": ((5,), lambda: keras.layers.Embedding(20, 4)),
    "MultiHeadAttention": ((5, 4), lambda: keras.layers.MultiHeadAttention(2, 4)),
}


@pytest.mark.parametrize("kind", sorted(_LAYERS))
def test_keras_round_trip_of_every_wrapper(kind, tmp_path):
    shape, make = _LAYERS[kind]
    layer = make()
    inp = keras.Input(shape, dtype="int32" if kind == "Embedding" else "float32")
    out = layer(inp, inp) if kind == "MultiHeadAttention" else layer(inp)
    out = keras.layers.Flatten()(out)
    model = keras.Model(inp, out)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 20, (8, *shape)) if kind == "Embedding" else rng.normal(size=(8, *shape))
    y = np.zeros((8, out.shape[-1]), "float32")
    pruned = _compile(prune(model, ConstantSparsity(0.5, frequency=1)))
    assert [e.class_name for e in pruned.pruning_report.entries if e.status == "changed"] == [kind]
    pruned.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert sparsity(pruned).global_sparsity == pytest.approx(0.5, abs=0.05)
    pruned.save(tmp_path / "m.keras")
    loaded = tfopt.models.load(tmp_path / "m.keras")
    (w,) = wrappers_of(loaded)
    assert w.step == 1 and w.schedule == ConstantSparsity(0.5, frequency=1)
    for ma, mb in zip(*_masks(pruned).values(), *_masks(loaded).values()):
        np.testing.assert_array_equal(ma, mb)
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-5
    )
    np.testing.assert_allclose(
        strip(loaded).predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-5
    )


# -- model kinds ------------------------------------------------------------------------------


def test_sequential_model():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8), keras.layers.Dense(4)])
    pruned = _compile(prune(model, ConstantSparsity(0.5, frequency=1)))
    assert isinstance(pruned, keras.Sequential)
    x, y = _data()
    pruned.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert sparsity(pruned).global_sparsity == pytest.approx(0.5, abs=0.01)
    assert isinstance(strip(pruned), keras.Sequential)


@keras.saving.register_keras_serializable(package="tfopt_tests")
class SubModel(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.body = [keras.layers.Dense(16, activation="relu"), keras.layers.Dense(8)]
        self.head = keras.layers.Dense(4)

    def call(self, x, training=None):
        for layer in self.body:
            x = layer(x)
        return self.head(x)


@keras.saving.register_keras_serializable(package="tfopt_tests")
class NoTrainingModel(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.d = keras.layers.Dense(4)

    def call(self, x):
        return self.d(x)


def test_subclassed_model_is_pruned_on_a_copy(tmp_path):
    model = SubModel()
    x, y = _data()
    model(x)
    before = [w.copy() for w in model.get_weights()]
    pruned = _compile(prune(model, ConstantSparsity(0.5, frequency=1)))
    assert len(pruned.pruning_report.changed) == 3 and len(wrappers_of(pruned)) == 3
    assert len(pruned.trainable_weights) == len(model.trainable_weights)
    np.testing.assert_allclose(pruned.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    pruned.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert len(sparsity(pruned).layers) == 3
    assert sparsity(pruned).global_sparsity == pytest.approx(0.5, abs=0.01)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    pruned.save_weights(tmp_path / "p.weights.h5")  # documented way to save a pruned subclass
    fresh = SubModel()
    fresh(x)
    again = prune(fresh, ConstantSparsity(0.5, frequency=1))
    again.load_weights(tmp_path / "p.weights.h5")
    assert [w.step for w in wrappers_of(again)] == [4, 4, 4]
    np.testing.assert_allclose(again.predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-6)
    small = strip(pruned)
    assert not wrappers_of(small)
    np.testing.assert_allclose(small.predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-6)
    model2 = NoTrainingModel()
    model2(x)
    with pytest.raises(ValueError, match=r"call\(\) without a `training` argument"):
        prune(model2)


def test_keras_applications_prune_without_crashing():
    x = np.random.default_rng(0).random((1, 32, 32, 3)).astype("float32")
    apps = [
        (keras.applications.MobileNetV2, {"alpha": 0.35}),
        (keras.applications.EfficientNetB0, {}),
        (keras.applications.MobileNetV3Small, {"alpha": 0.75, "minimalistic": True}),
    ]
    for app, kwargs in apps:
        model = app(weights=None, input_shape=(32, 32, 3), classes=10, **kwargs)
        pruned = prune(model, ConstantSparsity(0.5))
        report = pruned.pruning_report
        assert len(report.changed) > 20, app.__name__
        assert any(
            e.class_name == "BatchNormalization" and e.status == "skipped" for e in report.entries
        )
        np.testing.assert_allclose(
            np.asarray(pruned(x)), np.asarray(model(x)), atol=1e-5, err_msg=app.__name__
        )


# -- callbacks and the recipe step ------------------------------------------------------------


def test_pruning_summaries_writes_per_layer_sparsity_events(tmp_path):
    import tensorflow as tf

    x, y = _data()
    pruned = _compile(
        prune(_mlp(), PolynomialDecay(0.0, 0.5, begin_step=0, end_step=7, frequency=1))
    )
    cb = tfopt.callbacks.PruningSummaries(tmp_path / "logs")
    pruned.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[cb])
    values = {}
    for path in glob.glob(str(tmp_path / "logs" / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                values.setdefault(v.tag, []).append(float(tf.make_ndarray(v.tensor)))
    assert set(values) == {"sparsity/d1", "sparsity/d2", "sparsity/global", "pruning/step"}
    assert values["pruning/step"] == [4.0, 8.0]
    assert values["sparsity/global"][-1] == pytest.approx(0.5, abs=0.01)
    assert values["sparsity/global"][0] < values["sparsity/global"][-1]


def test_pruning_summaries_checks_the_schedule_and_the_model(tmp_path):
    x, y = _data()
    pruned = _compile(prune(_mlp(), PolynomialDecay(0.0, 0.5, begin_step=0, end_step=100)))
    with pytest.warns(PruningScheduleWarning, match=r"runs 4 steps from step 0"):
        pruned.fit(
            x,
            y,
            batch_size=8,
            epochs=1,
            verbose=0,
            callbacks=[tfopt.callbacks.PruningSummaries(tmp_path)],
        )
    with pytest.raises(ValueError, match=r"has no pruning wrappers"):
        _compile(_mlp()).fit(
            x, y, verbose=0, callbacks=[tfopt.callbacks.PruningSummaries(tmp_path)]
        )
    with pytest.raises(ValueError, match=r"Received: update_freq=0"):
        tfopt.callbacks.PruningSummaries(tmp_path, update_freq=0)


def test_prune_recipe_step_returns_a_stripped_sparse_model(tmp_path):
    from tfopt._pipeline import StepContext
    from tfopt.config import validate
    from tfopt.config._steps import PruneStepConfig as Config
    from tfopt.data import Dataset
    from tfopt.prune import _step

    x, y = random_mnist1d(96)
    data = Dataset("tiny", x[:64], y[:64], x[64:80], y[64:80], x[80:], y[80:], 10)
    ctx = StepContext(data=data, run_dir=tmp_path, batch_size=16, verbose=0)
    cfg = Config(target_sparsity=0.7, epochs=2, end_fraction=1.0)
    model = tfopt.models.get("mnist1d_cnn", dense=16, width=8)
    out = _step.run(cfg, model, ctx)
    assert not wrappers_of(out)
    assert [type(layer).__name__ for layer in out.layers[1:4]] == ["Conv1D"] * 3
    assert sparsity(out).global_sparsity == pytest.approx(0.7, abs=0.01)
    assert ctx.records["baseline"]["global_sparsity"] == pytest.approx(0.7, abs=0.01)
    assert list(os.scandir(tmp_path / "logs" / "baseline" / "pruning"))
    assert _step.make_schedule(cfg, 8) == PolynomialDecay(0.0, 0.7, 0, 7, 3.0, 1)
    cfg_cubic = Config(schedule="cubic", target_sparsity=0.5, end_fraction=0.5)
    sched = _step.make_schedule(cfg_cubic, 400)
    assert isinstance(sched, GradualCubic) and sched.end_step == 199 and sched.frequency == 9
    with pytest.raises(Exception, match=r"end_fraction must be > begin_fraction"):
        Config(begin_fraction=0.5, end_fraction=0.4)
    with pytest.raises(Exception, match=r"target_sparsity"):
        validate({"steps": [{"type": "prune", "target_sparsity": 1.5}]})
    assert math.isclose(validate({"steps": [{"type": "prune"}]}).steps[0].target_sparsity, 0.8)


def test_stripped_model_exports_to_tflite_with_the_same_outputs(tmp_path, tiny_data):
    x, y = tiny_data
    model = tfopt.models.get("mnist1d_cnn", width=8, dense=16)
    pruned = prune(model, PolynomialDecay(0.0, 0.6, begin_step=0, end_step=3, frequency=1))
    pruned.compile(
        optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    pruned.fit(x, y, batch_size=16, epochs=1, verbose=0)
    small = strip(pruned)
    art = tfopt.export.tflite(small, tmp_path / "m.tflite", check_data=x[:16])
    assert art.check["argmax_agreement"] == 1.0
    from tfopt.bench._runners import TFLiteRunner

    out = TFLiteRunner(str(tmp_path / "m.tflite")).predict(x[:16])
    np.testing.assert_allclose(out, pruned.predict(x[:16], verbose=0), atol=1e-4)


def test_nested_model_layers_are_pruned_and_stripped():
    inner = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8, name="in_d")], name="inner")
    inp = keras.Input((8,))
    model = keras.Model(inp, keras.layers.Dense(4, name="head")(inner(inp)))
    pruned = _compile(prune(model, ConstantSparsity(0.5, frequency=1)))
    assert list(pruned.pruning_report.changed) == ["in_d", "head"]
    x, y = _data()
    pruned.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert sparsity(pruned).layers["in_d"]["sparsity"] == 0.5
    small = strip(pruned)
    assert [type(layer).__name__ for layer in small.get_layer("inner").layers] == ["Dense"]
    np.testing.assert_allclose(small.predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-6)


def test_a_layer_that_cannot_be_copied_gives_a_clear_error():
    class NoConfig(keras.layers.Layer):
        def __init__(self, factor):
            super().__init__(name="noconfig")
            self.factor = factor

        def call(self, x):
            return x * self.factor

        def get_config(self):
            raise NotImplementedError("no config")

    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(2)(NoConfig(2.0)(inp)))
    with pytest.raises(ValueError, match=r"Cannot copy layer 'noconfig'.*NotImplementedError"):
        prune(model)


def test_pruning_summaries_raises_when_the_wrappers_never_train(tmp_path):
    class InferenceOnly(keras.Model):  # calls the pruned model with training=False, always
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def call(self, x, training=None):
            return self.inner(x, training=False)

    x, y = _data()
    model = _compile(InferenceOnly(prune(_mlp(), ConstantSparsity(0.5, frequency=1))))
    cb = tfopt.callbacks.PruningSummaries(tmp_path)
    with pytest.raises(RuntimeError, match=r"did not see a training call"):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[cb])


@keras.saving.register_keras_serializable(package="tfopt_tests")
class _MyDense(keras.layers.Layer):
    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel")

    def call(self, x):
        return x @ self.kernel

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def test_register_prunable_opts_a_users_layer_in(tmp_path):
    inp = keras.Input((8,))
    model = keras.Model(inp, keras.layers.Dense(4, name="head")(_MyDense(16, name="mine")(inp)))
    assert "tfopt.register_layer" in prune(model).pruning_report.skipped["mine"]
    tfopt.prune.register_prunable(_MyDense, weights=("kernel",))
    try:
        pruned = _compile(prune(model, ConstantSparsity(0.5, frequency=1)))
        assert list(pruned.pruning_report.changed) == ["mine", "head"]
        x = np.random.default_rng(0).normal(size=(16, 8)).astype("float32")
        pruned.fit(x, np.zeros((16, 4), "float32"), batch_size=8, epochs=1, verbose=0)
        assert sparsity(pruned).layers["mine"]["sparsity"] == 0.5
        pruned.save(tmp_path / "m.keras")
        loaded = keras.models.load_model(tmp_path / "m.keras")
        np.testing.assert_allclose(loaded(x), pruned(x), atol=1e-6)
        small = strip(loaded)
        assert isinstance(small.get_layer("mine"), _MyDense)
        assert np.mean(small.get_layer("mine").get_weights()[0] == 0) == 0.5
    finally:
        tfopt._layers.unregister_layer(_MyDense)
    with pytest.raises(TypeError, match=r"Received: weights='kernel'"):
        tfopt.prune.register_prunable(_MyDense, weights="kernel")
