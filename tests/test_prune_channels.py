"""Structural channel pruning: dependency groups, exact MAC/param counts, weights copied, export."""

import json
import warnings

import numpy as np
import pytest

import tfopt
from tfopt.prune import ChannelPlan, find_ratio, prune_channels, prune_channels_iterative
from tfopt.prune._channels_graph import keep_count

keras = pytest.importorskip("keras")
L = keras.layers


def _rng_x(shape, n=8, seed=0):
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype("float32")


def _randomize_bn(model, seed=1):
    """Non-trivial BatchNorm statistics so that copying the wrong channels shows."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            g, b, m, v = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, g.shape),
                    rng.normal(size=b.shape),
                    rng.normal(size=m.shape),
                    rng.uniform(0.5, 1.5, v.shape),
                ]
            )


def graph_model():
    """Conv-BN-ReLU, residual Add, Concatenate, DepthwiseConv, SeparableConv, Flatten -> Dense."""
    inp = keras.Input((8, 8, 3), name="input")
    x = L.Conv2D(8, 3, padding="same", name="stem")(inp)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU(name="stem_relu")(x)
    y = L.Conv2D(8, 3, padding="same", name="res_a")(x)
    y = L.BatchNormalization(name="res_a_bn")(y)
    y = L.ReLU(name="res_a_relu")(y)
    y = L.Conv2D(8, 3, padding="same", name="res_b")(y)
    x = L.Add(name="add")([x, y])
    x = L.ReLU(name="add_relu")(x)
    a = L.Conv2D(6, 1, name="branch_a")(x)
    b = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    b = L.Conv2D(4, 1, name="branch_b")(b)
    x = L.Concatenate(name="concat")([a, b])
    x = L.SeparableConv2D(8, 3, strides=2, padding="same", name="sep")(x)
    x = L.MaxPooling2D(name="pool")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(12, activation="relu", name="fc")(x)
    out = L.Dense(5, name="logits")(x)
    model = keras.Model(inp, out, name="graph_model")
    _randomize_bn(model)
    return model


def tiny_sequential():
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            L.Conv2D(8, 3, padding="same", name="c1"),
            L.BatchNormalization(name="bn1"),
            L.ReLU(name="r1"),
            L.Conv2D(8, 3, padding="same", name="c2"),
            L.GlobalAveragePooling2D(name="gap"),
            L.Dense(4, name="out"),
        ],
        name="tiny",
    )


def test_ratio_zero_reproduces_outputs_exactly_and_user_model_untouched():
    model = graph_model()
    before = [w.copy() for w in model.get_weights()]
    x = _rng_x((8, 8, 3))
    new, plan = prune_channels(model, 0.0)
    assert new is not model
    assert np.array_equal(model.predict(x, verbose=0), new.predict(x, verbose=0))
    assert plan.params_after == plan.params_before == model.count_params()
    assert all(x.status == "kept" for x in plan.layers)
    pruned, _ = prune_channels(model, 0.5)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert not set(map(id, pruned.layers)) & set(map(id, model.layers))  # nothing shared


def test_output_shape_unchanged_and_counts_match_the_built_model():
    model = graph_model()
    new, plan = prune_channels(model, 0.5)
    assert new.output_shape == model.output_shape == (None, 5)
    assert new.input_shape == model.input_shape
    assert plan.params_after == new.count_params()
    assert plan.params_before == model.count_params()
    assert [layer.name for layer in new.layers] == [layer.name for layer in model.layers]
    # every prunable group of 8 keeps 4; the output layer keeps its 5 units
    assert new.get_layer("stem").filters == 4 and new.get_layer("res_b").filters == 4
    assert new.get_layer("branch_a").filters == 3 and new.get_layer("branch_b").filters == 2
    assert new.get_layer("sep").filters == 4 and new.get_layer("fc").units == 6
    assert new.get_layer("logits").units == 5
    assert plan.layer("logits").reason == "output channels kept: model output"


def test_macs_and_params_exact_on_tiny_sequential_model():
    model = tiny_sequential()
    new, plan = prune_channels(model, 0.5)
    # c1: 64 positions * 9 * 3 * 8 -> *4; c2: 64 * 9 * 8 * 8 -> 64 * 9 * 4 * 4; out: 8*4 -> 4*4
    assert plan.layer("c1").macs == (13824, 6912)
    assert plan.layer("c2").macs == (36864, 9216)
    assert plan.layer("out").macs == (32, 16)
    assert (plan.macs_before, plan.macs_after) == (50720, 16144)
    assert plan.layer("c1").params == (3 * 9 * 8 + 8, 3 * 9 * 4 + 4)
    assert plan.layer("bn1").params == (32, 16)
    assert plan.layer("c2").params == (8 * 9 * 8 + 8, 4 * 9 * 4 + 4)
    assert plan.layer("out").params == (36, 20)
    assert plan.layer("c2").channels_in == (8, 4) and plan.layer("c2").channels_out == (8, 4)
    assert new.count_params() == plan.params_after == 112 + 16 + 148 + 20
    assert new.output_shape == (None, 4)


def test_keep_count_ratio_and_round_to():
    assert keep_count(8, 0.5, None) == 4
    assert keep_count(10, 0.25, None) == 8  # floor(2.5) = 2 removed
    assert keep_count(10, 0.5, 4) == 8  # keep 5, rounded up to a multiple of 4
    assert keep_count(6, 0.5, 4) == 4
    assert keep_count(3, 0.99, None) == 1  # never an empty layer
    assert keep_count(6, 0.1, 4) == 6  # never more than the original count
    _, plan = prune_channels(graph_model(), 0.5, round_to=4, dry_run=True)
    for g in plan.groups:
        if not g.frozen:
            assert g.keep % 4 == 0 or g.keep == g.size


def _kill(model, layer_name, channels):
    """Makes output channels of a producer exactly zero after its (optional) BatchNorm + ReLU."""
    layer = model.get_layer(layer_name)
    weights = layer.get_weights()
    kernel_index = 1 if isinstance(layer, L.SeparableConv2D) else 0
    if isinstance(layer, L.Conv2DTranspose):  # kernel (k, k, out, in)
        weights[0][..., channels, :] = 0.0
    else:
        weights[kernel_index][..., channels] = 0.0
    weights[-1][channels] = 0.0  # bias
    layer.set_weights(weights)


def test_dead_channels_are_the_ones_removed_and_outputs_are_unchanged():
    """Channels that contribute nothing are ranked last (L1) and pruning them changes nothing."""
    inp = keras.Input((6, 6, 2))
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inp)
    y = L.Conv2D(8, 3, padding="same", activation="relu", name="c2")(x)
    x = L.Add(name="add")([x, y])
    a = L.Conv2D(6, 1, activation="relu", name="a")(x)
    b = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    b = L.Conv2D(4, 1, activation="relu", name="b")(b)
    x = L.Concatenate(name="concat")([a, b])
    x = L.SeparableConv2D(8, 3, padding="same", activation="relu", name="sep")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(10, activation="relu", name="fc")(x)
    model = keras.Model(inp, L.Dense(3, name="out")(x))
    dead = {
        "c1": [1, 4, 6, 7],
        "c2": [1, 4, 6, 7],
        "a": [0, 2, 5],
        "b": [1, 3],
        "sep": [0, 3, 4, 5],
        "fc": [2, 3, 5, 7, 9],
    }
    for name, channels in dead.items():
        _kill(model, name, channels)
    x_in = _rng_x((6, 6, 2), n=16)
    new, plan = prune_channels(model, 0.5)
    for g in plan.groups:
        if g.frozen:
            continue
        removed = sorted(set(range(g.size)) - set(g.kept_indices))
        assert removed == dead[g.producers[0]], g.producers
    assert sorted(next(g.producers for g in plan.groups if "c1" in g.producers)) == ["c1", "c2"]
    np.testing.assert_allclose(
        new.predict(x_in, verbose=0), model.predict(x_in, verbose=0), rtol=1e-5, atol=1e-5
    )
    # concat offsets: sep's depthwise/pointwise keep rows [a kept] + [6 + b kept]
    rows = [1, 3, 4, 6 + 0, 6 + 2]
    old_pw = model.get_layer("sep").pointwise_kernel.numpy()
    new_pw = new.get_layer("sep").pointwise_kernel.numpy()
    np.testing.assert_array_equal(new_pw, old_pw[:, :, rows][..., [1, 2, 6, 7]])
    # Flatten -> Dense: rows s * 8 + c for the 36 positions and the 4 kept sep channels
    old_fc = model.get_layer("fc").kernel.numpy()
    fc_rows = (np.arange(36)[:, None] * 8 + np.array([1, 2, 6, 7])[None, :]).reshape(-1)
    np.testing.assert_array_equal(
        new.get_layer("fc").kernel.numpy(), old_fc[fc_rows][:, [0, 1, 4, 6, 8]]
    )


def test_residual_and_concat_couplings_stay_consistent():
    model = graph_model()
    new, plan = prune_channels(model, 0.5)
    res = next(g for g in plan.groups if "stem" in g.producers)
    assert sorted(res.producers) == ["res_b", "stem"]  # tied through the residual Add
    kept = res.kept_indices
    assert len(kept) == 4
    np.testing.assert_array_equal(
        new.get_layer("stem").kernel.numpy(), model.get_layer("stem").kernel.numpy()[..., kept]
    )
    np.testing.assert_array_equal(
        new.get_layer("res_b").kernel.numpy(),
        model.get_layer("res_b").kernel.numpy()[:, :, res_a_kept(plan)][..., kept],
    )
    np.testing.assert_array_equal(
        new.get_layer("dw").kernel.numpy(), model.get_layer("dw").kernel.numpy()[:, :, kept]
    )
    for w_new, w_old in zip(
        new.get_layer("stem_bn").get_weights(), model.get_layer("stem_bn").get_weights()
    ):
        np.testing.assert_array_equal(w_new, w_old[kept])
    ga = next(g for g in plan.groups if g.producers == ["branch_a"]).kept_indices
    gb = next(g for g in plan.groups if g.producers == ["branch_b"]).kept_indices
    rows = [*ga, *(6 + np.array(gb))]
    np.testing.assert_array_equal(
        new.get_layer("sep").depthwise_kernel.numpy(),
        model.get_layer("sep").depthwise_kernel.numpy()[:, :, rows],
    )
    assert new.get_layer("concat").output.shape[-1] == 5


def res_a_kept(plan):
    return next(g for g in plan.groups if g.producers == ["res_a"]).kept_indices


def test_dry_run_builds_nothing_and_matches_the_real_plan():
    model = graph_model()
    n_layers = len(model.layers)
    none, plan = prune_channels(model, 0.3, dry_run=True)
    assert none is None
    assert isinstance(plan, ChannelPlan)
    assert len(model.layers) == n_layers
    _, real = prune_channels(model, 0.3)
    assert plan.to_dict() == real.to_dict()
    text = str(plan)
    assert "| stem | Conv2D | 3 | 8 -> 6 |" in text
    assert "prunable groups" in text and "MACs" in text
    json.dumps(plan.to_dict())


def test_unsupported_layers_are_left_whole_and_named():
    inp = keras.Input((8, 4))
    x = L.Conv1D(8, 3, padding="same", name="c1")(inp)
    x = L.Reshape((8, 8), name="reshape")(x)  # tfopt does not see through Reshape
    x = L.Conv1D(8, 3, padding="same", groups=2, name="grouped")(x)
    x = L.Conv1D(8, 3, padding="same", name="c2")(x)
    x = L.Lambda(lambda t: t * 2.0, name="double")(x)
    x = L.Conv1D(8, 3, padding="same", name="c3")(x)
    x = L.GlobalAveragePooling1D()(x)
    model = keras.Model(inp, L.Dense(3, name="out")(x))
    new, plan = prune_channels(model, 0.5)
    assert plan.skipped == {
        "reshape": "layer type Reshape is not supported",
        "grouped": "grouped convolution (groups=2)",
        "double": "layer type Lambda is not supported",
    }
    assert plan.layer("grouped").status == "skipped"
    assert plan.layer("c1").channels_out == (8, 8)
    assert "feeds reshape" in plan.layer("c1").reason
    assert plan.layer("c2").channels_out == (8, 8)
    assert plan.layer("c3").channels_out == (8, 4)  # still pruned
    x_in = _rng_x((8, 4))
    assert new.predict(x_in, verbose=0).shape == (8, 3)
    assert "Left whole (not supported): reshape" in str(plan)


def test_importance_l1_l2_bn_gamma_and_callable():
    inp = keras.Input((4,))
    x = L.Dense(2, use_bias=False, name="d")(inp)
    x = L.BatchNormalization(name="bn")(x)
    model = keras.Model(inp, L.Dense(1, name="out")(x))
    # channel 0: [1, 1, 1, 1] (L1 4, L2 2); channel 1: [3, 0, 0, 0] (L1 3, L2 3)
    model.get_layer("d").set_weights([np.array([[1, 3], [1, 0], [1, 0], [1, 0]], "float32")])
    model.get_layer("bn").set_weights([np.array([0.1, 5.0]), np.zeros(2), np.zeros(2), np.ones(2)])

    def kept(**kw):
        return next(
            g
            for g in prune_channels(model, 0.5, dry_run=True, **kw)[1].groups
            if g.producers == ["d"]
        ).kept_indices

    assert kept(importance="l1") == [0]
    assert kept(importance="l2") == [1]
    assert kept(importance="bn_gamma") == [1]
    assert kept(importance=lambda layer: np.array([9.0, 1.0])) == [0]
    with pytest.raises(ValueError, match=r"one score per output channel of 'd': shape \(2,\)"):
        prune_channels(model, 0.5, importance=lambda layer: np.ones(3))


def test_bn_gamma_falls_back_to_l1_with_a_note():
    _, plan = prune_channels(tiny_sequential(), 0.5, importance="bn_gamma", dry_run=True)
    sources = {tuple(g.producers): g.importance for g in plan.groups if not g.frozen}
    assert sources == {("c1",): "bn_gamma", ("c2",): "l1"}
    assert any("no BatchNormalization follows c2" in n for n in plan.notes)


def test_filters_restrict_pruned_layers():
    model = graph_model()
    _, plan = prune_channels(model, 0.5, filters=["^branch_"], dry_run=True)
    changed = {g.producers[0] for g in plan.groups if g.keep < g.size}
    assert changed == {"branch_a", "branch_b"}
    assert "excluded by filters" in plan.layer("stem").reason
    _, plan = prune_channels(model, 0.5, filters=lambda layer: layer.name == "fc", dry_run=True)
    assert {g.producers[0] for g in plan.groups if g.keep < g.size} == {"fc"}


def test_macs_reduction_target_and_find_ratio():
    model = graph_model()
    r = find_ratio(model, 0.5)
    _, plan = prune_channels(model, macs_reduction=0.5, dry_run=True)
    assert plan.ratio == r
    assert plan.macs_reduction >= 0.5
    _, below = prune_channels(model, max(0.0, r - 2e-4), dry_run=True)
    assert below.macs_reduction < 0.5
    with pytest.raises(ValueError, match=r"macs_reduction=0.999 cannot be reached"):
        find_ratio(tiny_sequential(), 0.999)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"ratio": 1.2}, ValueError, r"ratio must be a number in \[0, 1\). Received: ratio=1.2"),
        ({"ratio": -0.1}, ValueError, r"Received: ratio=-0.1"),
        ({"ratio": "half"}, ValueError, r"Received: ratio='half'"),
        ({}, ValueError, r"exactly one of ratio= or macs_reduction=. Received: ratio=None"),
        ({"ratio": 0.5, "macs_reduction": 0.5}, ValueError, r"ratio=0.5, macs_reduction=0.5"),
        ({"ratio": 0.5, "importance": "l3"}, ValueError, r"Unrecognized importance='l3'"),
        (
            {"ratio": 0.5, "round_to": 0},
            ValueError,
            r"round_to must be a positive int or None. Received: round_to=0",
        ),
        ({"ratio": 0.5, "filters": 3}, TypeError, r"Received: filters=3"),
        ({"macs_reduction": 1.0}, ValueError, r"Received: macs_reduction=1.0"),
        (
            {"ratio": 0.5, "allocation": "greedy"},
            ValueError,
            r"Unrecognized allocation='greedy'. Supported: \['uniform', 'global'\]",
        ),
    ],
)
def test_bad_arguments_echo_the_value(kwargs, error, match):
    with pytest.raises(error, match=match):
        prune_channels(tiny_sequential(), **kwargs)


def test_wrong_model_kinds():
    with pytest.raises(TypeError, match="Received: model=str"):
        prune_channels("model.keras", 0.5)

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = L.Dense(2)

        def call(self, x):
            return self.d(x)

    sub = Sub()
    sub(np.zeros((1, 3), "float32"))
    with pytest.raises(TypeError, match="functional or Sequential.*subclassed model"):
        prune_channels(sub, 0.5)
    with pytest.raises(ValueError, match="is not built"):
        prune_channels(keras.Sequential([L.Dense(2)]), 0.5)


def test_pruned_model_trains_and_survives_keras_round_trip(tmp_path):
    new, _ = prune_channels(graph_model(), 0.5)
    new.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _rng_x((8, 8, 3), n=16), np.arange(16) % 5
    new.fit(x, y, epochs=1, verbose=0)
    new.save(tmp_path / "p.keras")
    loaded = keras.models.load_model(tmp_path / "p.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), new.predict(x, verbose=0), atol=1e-6)


def test_iterative_reaches_the_mac_target_and_fine_tunes(tiny_data):
    model = tfopt.models.get("mnist1d_resnet", width=16, blocks=1)
    x, y = tiny_data
    new, plans = prune_channels_iterative(
        model, (x, y), macs_reduction=0.5, steps=2, epochs_per_step=1, batch_size=32
    )
    assert len(plans) == 2
    total = 1 - plans[-1].macs_after / plans[0].macs_before
    assert 0.5 <= total < 0.65
    assert 0.25 <= plans[0].macs_reduction < 0.5  # step 1 aims at 75% of the MACs
    assert new.optimizer is not None and int(new.optimizer.iterations.numpy()) == 2
    assert new.output_shape == (None, 10)
    with pytest.raises(ValueError, match="steps must be an int >= 1. Received: steps=0"):
        prune_channels_iterative(model, (x, y), ratio=0.5, steps=0)
    with pytest.raises(ValueError, match="needs train=\\(x, y\\) or a fit="):
        prune_channels_iterative(model, ratio=0.5)


def test_recipe_step(tmp_path, tiny_data):
    from tfopt._pipeline import StepContext
    from tfopt._steps import step_module
    from tfopt.config import STEP_CONFIGS
    from tfopt.data import Dataset

    mod, Config = step_module("prune_channels"), STEP_CONFIGS["prune_channels"]
    with pytest.raises(ValueError, match="give ratio or macs_reduction, not both"):
        Config(ratio=0.3, macs_reduction=0.5)
    with pytest.raises(ValueError, match="extra"):
        Config(ratios=0.3)
    assert Config().macs_reduction == 0.5
    x, y = tiny_data
    ctx = StepContext(
        data=Dataset("tiny", x, y, x[:16], y[:16], x[:16], y[:16], 10),
        run_dir=tmp_path,
        verbose=0,
        stage="pc",
    )
    cfg = Config(ratio=0.5, steps=1, epochs_per_step=1, round_to=2)
    model = tfopt.models.get("mnist1d_resnet", width=8, blocks=1)
    new = mod.run(cfg, model, ctx)
    rec = ctx.records["pc"]
    assert rec["params_before"] == model.count_params()
    assert rec["params_after"] == new.count_params() < model.count_params()
    assert new.get_layer("stem_conv").filters == 4
    assert (tmp_path / "logs" / "pc_1").is_dir()


def test_mobilenetv2_prunes_and_converts_to_tflite(tmp_path):
    model = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10
    )
    new, plan = prune_channels(model, 0.5, round_to=8)
    assert plan.skipped == {}
    assert plan.macs_reduction > 0.5
    assert new.output_shape == (None, 10)
    x = _rng_x((32, 32, 3), n=4)
    art = tfopt.export.tflite(new, tmp_path / "m.tflite", check_data=x)
    assert art.check["passed"] and art.check["max_abs_diff"] < 1e-4
    assert new.get_layer("block_1_depthwise").kernel.shape[-2] % 8 == 0


@pytest.mark.slow
def test_resnet50_prunes_and_converts_to_tflite(tmp_path):
    model = keras.applications.ResNet50(input_shape=(32, 32, 3), weights=None, classes=10)
    new, plan = prune_channels(model, 0.5)
    assert plan.skipped == {}
    assert new.count_params() == plan.params_after < model.count_params() // 3
    x = _rng_x((32, 32, 3), n=4)
    art = tfopt.export.tflite(new, tmp_path / "r.tflite", check_data=x)
    assert art.check["passed"] and art.check["max_abs_diff"] < 1e-4


def test_shared_layers_stay_shared_and_scalar_ops_are_seen_through():
    inp = keras.Input((6, 4))
    c0 = L.Conv1D(4, 3, padding="same", name="c0")(inp)
    shared = L.Conv1D(4, 3, padding="same", name="shared")
    a = shared(c0)
    x = L.Add(name="add")([a, shared(a)])
    y = L.Conv1D(6, 1, name="c1")(x) * 2.0  # keras.ops multiply by a scalar: channel-tied
    y = L.Conv1D(6, 1, name="c2")(y)
    model = keras.Model(inp, L.Dense(2, name="o")(L.GlobalAveragePooling1D()(y)))
    x_in = _rng_x((6, 4))
    same, plan0 = prune_channels(model, 0.0)
    np.testing.assert_array_equal(same.predict(x_in, verbose=0), model.predict(x_in, verbose=0))
    new, plan = prune_channels(model, 0.5)
    assert plan.skipped == {"shared": "layer is called 2 times (shared weights)"}
    assert plan.layer("shared").macs == (2 * 6 * 3 * 4 * 4,) * 2  # both calls counted
    assert plan.params_before == model.count_params() and plan.params_after == new.count_params()
    assert new.get_layer("c1").filters == 3 and new.get_layer("c2").filters == 3
    assert len(new.get_layer("shared")._inbound_nodes) == 2  # one layer, called twice
    assert new.predict(x_in, verbose=0).shape == (8, 2)


def test_quantized_layers_are_left_whole():
    model = keras.Sequential([keras.Input((5,)), L.Dense(8, name="qd"), L.Dense(2, name="qo")])
    with warnings.catch_warnings():  # Keras warns that InputLayer has no quantize()
        warnings.simplefilter("ignore")
        model.quantize("int8")
    new, plan = prune_channels(model, 0.5)
    quantized = "already quantized by Keras (quantization_mode='int8')"
    assert plan.skipped == {"qd": quantized, "qo": quantized}
    x_in = _rng_x((5,))
    np.testing.assert_array_equal(new.predict(x_in, verbose=0), model.predict(x_in, verbose=0))


def test_transpose_conv_prelu_squeeze_excite_and_layernorm():
    inp = keras.Input((4, 4, 3))
    x = L.Conv2D(8, 3, padding="same", name="c1")(inp)
    x = L.PReLU(shared_axes=[1, 2], name="prelu")(x)
    s = L.GlobalAveragePooling2D(keepdims=True, name="se_pool")(x)
    s = L.Conv2D(4, 1, activation="relu", name="se_reduce")(s)
    s = L.Conv2D(8, 1, activation="sigmoid", name="se_expand")(s)
    x = L.Multiply(name="se_scale")([x, s])  # ties c1 and se_expand
    x = L.Conv2DTranspose(6, 3, strides=2, padding="same", activation="relu", name="up")(x)
    x = L.ZeroPadding2D(1, name="pad")(x)
    x = L.UpSampling2D(name="ups")(x)
    x = L.Conv2D(4, 3, activation="relu", name="c2")(x)
    x = L.GlobalMaxPooling2D(name="gmp")(x)
    model = keras.Model(inp, L.Dense(3, name="out")(x))
    dead = {"c1": [0, 3, 5, 6], "se_reduce": [1, 2], "up": [2, 4, 5], "c2": [0, 3]}
    for name, channels in dead.items():
        _kill(model, name, channels)
    x_in = _rng_x((4, 4, 3))
    new, plan = prune_channels(model, 0.5)
    assert plan.skipped == {}
    group = next(g for g in plan.groups if "c1" in g.producers)
    assert sorted(group.producers) == ["c1", "se_expand"]
    assert group.kept_indices == [1, 2, 4, 7]
    assert new.get_layer("prelu").alpha.shape == (1, 1, 4)
    assert new.get_layer("up").kernel.shape == (3, 3, 3, 4)  # (k, k, out, in)
    assert plan.params_after == new.count_params()
    np.testing.assert_allclose(
        new.predict(x_in, verbose=0), model.predict(x_in, verbose=0), rtol=1e-5, atol=1e-5
    )
    # LayerNormalization over the channels is pruned with them (gamma/beta sliced)
    inp = keras.Input((5, 8))
    y = L.Conv1D(8, 1, name="c")(inp)
    y = L.LayerNormalization(name="ln")(y)
    ln_model = keras.Model(inp, L.Dense(2, name="o")(L.Flatten()(y)))
    ln_new, ln_plan = prune_channels(ln_model, 0.25)
    assert ln_new.get_layer("ln").gamma.shape == (6,)
    assert ln_new.get_layer("o").kernel.shape == (30, 2)
    assert ln_plan.layer("o").macs == (80, 60)


def narrow_wide():
    """c1 (4 filters) -> c2 (12 filters) -> GAP -> Dense: MACs = 1728*k1 + 576*k1*k2 + 4*k2."""
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inp)
    x = L.Conv2D(12, 3, padding="same", activation="relu", name="c2")(x)
    return keras.Model(inp, L.Dense(4, name="out")(L.GlobalAveragePooling2D()(x)))


def _keeps(plan):
    return {g.producers[0]: g.keep for g in plan.groups if not g.frozen}


def test_global_allocation_meets_the_mac_target_where_uniform_overshoots():
    model = narrow_wide()
    flat = lambda layer: np.ones(layer.filters)  # noqa: E731 - equal importance everywhere
    # 34608 MACs; the target is <= 17304. Uniform: ratio 5/12 keeps (3, 7) = 17308 MACs, so
    # it must go to ratio 0.5, (2, 6) = 10392 MACs: 70% removed.
    _, uni = prune_channels(model, macs_reduction=0.5, importance=flat, dry_run=True)
    assert (uni.macs_before, uni.macs_after, _keeps(uni)) == (34608, 10392, {"c1": 2, "c2": 6})
    # Global: LAMP scores 1/12, 1/11, ... thin c2 first; (4, 4) = 6912 + 9216 + 16 = 16144.
    for round_to in (None, 4):
        new, plan = prune_channels(
            model, macs_reduction=0.5, importance=flat, allocation="global", round_to=round_to
        )
        assert _keeps(plan) == {"c1": 4, "c2": 4}
        assert plan.macs_after == 16144 and plan.ratio == 0.5 and plan.allocation == "global"
        assert new.count_params() == plan.params_after == (3 * 9 * 4 + 4) + (4 * 9 * 4 + 4) + 20
    assert "allocation='global'" in str(plan) and "removed over all groups" in str(plan)
    # ratio with global: that fraction of all 16 prunable channels, least LAMP score first
    _, plan = prune_channels(model, 0.25, importance=flat, allocation="global", dry_run=True)
    assert _keeps(plan) == {"c1": 4, "c2": 8} and plan.ratio == 0.25


def test_global_allocation_ranks_by_lamp_score_and_gives_back_what_fits():
    model = narrow_wide()
    scores = lambda layer: np.arange(1.0, layer.filters + 1)  # noqa: E731
    # LAMP of the i-th weakest channel: s_i / sum(s_j, j >= i). c2: 1/78, 2/77, ..., 6/63
    # (0.095) go before c1's 1/10; then c2's 7/57 (0.123) loses to c1's 0.1: (3, 6) has
    # 5184 + 10368 + 24 = 15576 MACs <= 17304. Giving c2's channel back would make 17308.
    _, plan = prune_channels(
        model, macs_reduction=0.5, importance=scores, allocation="global", dry_run=True
    )
    assert _keeps(plan) == {"c1": 3, "c2": 6} and plan.macs_after == 15576
    kept = {g.producers[0]: g.kept_indices for g in plan.groups if not g.frozen}
    assert kept == {"c1": [1, 2, 3], "c2": [6, 7, 8, 9, 10, 11]}
    with pytest.raises(ValueError, match=r"macs_reduction=0.9 cannot be reached: keeping 4"):
        prune_channels(model, macs_reduction=0.9, allocation="global", round_to=4)


def test_global_mac_model_is_exact_on_every_coupling():
    from tfopt.prune._channels import _MacModel, _Planner

    model = graph_model()  # residual Add, Concatenate, DepthwiseConv, SeparableConv, Flatten
    planner = _Planner(model, "l1", None)
    macs = _MacModel(planner.graph)
    groups = [g for g in planner.graph.groups if not g.frozen]
    rng = np.random.default_rng(0)
    for _ in range(10):
        counts = {g.id: int(rng.integers(2, g.size + 1)) for g in groups}
        gid = groups[int(rng.integers(len(groups)))].id
        before = planner.plan(0.0, None, counts)[0].macs_after
        saved = macs.saving(counts, gid, 1)
        counts[gid] -= 1
        assert before - planner.plan(0.0, None, counts)[0].macs_after == saved
    x = _rng_x((8, 8, 3))
    new, plan = prune_channels(model, macs_reduction=0.4, allocation="global", round_to=2)
    assert plan.macs_reduction >= 0.4 and plan.params_after == new.count_params()
    assert all(g.keep % 2 == 0 or g.keep == g.size for g in plan.groups)
    assert new.predict(x, verbose=0).shape == (8, 5)


def test_global_allocation_in_iterative_mode_and_recipe_config():
    model = narrow_wide()
    _, plans = prune_channels_iterative(
        model, fit=lambda m, k: None, macs_reduction=0.5, steps=2, allocation="global"
    )
    assert [p.allocation for p in plans] == ["global", "global"]
    assert 1 - plans[-1].macs_after / plans[0].macs_before >= 0.5
    with pytest.raises(ValueError, match="Unrecognized allocation='x'"):
        prune_channels_iterative(model, fit=lambda m, k: None, ratio=0.5, allocation="x")
    from tfopt.config import STEP_CONFIGS

    Config = STEP_CONFIGS["prune_channels"]
    assert Config(allocation="global").allocation == "global"
    assert Config().allocation == "uniform"
    with pytest.raises(ValueError, match="allocation"):
        Config(allocation="lamp")
