"""The one rewriter every technique uses: selection, copy policy, graph walk, report."""

import threading

import keras
import numpy as np
import pytest

import tfopt
from tfopt._rewrite import Report, layer_filter, rewrite


def _arith_model():
    """Plain arithmetic on tensors (MobileNetV3's hard-swish, a residual ``x + y``)."""
    inp = keras.Input((8, 8, 3), name="x")
    h = keras.layers.Conv2D(8, 3, padding="same", name="conv_a")(inp)
    h = h * keras.ops.relu6(h + 3.0) / 6.0
    r = keras.layers.Conv2D(8, 3, padding="same", name="conv_b")(h)
    h = (h + r) * 0.5
    out = keras.layers.Dense(4, name="head")(keras.layers.GlobalAveragePooling2D()(h))
    return keras.Model(inp, out)


def _x(shape=(4, 8, 8, 3)):
    return np.random.default_rng(0).normal(size=shape).astype("float32")


@pytest.mark.parametrize("technique", ["prune", "cluster", "qat"])
def test_models_with_keras_ops_nodes_are_rewritten(technique):
    # prune and cluster crashed here: AttributeError: 'Add' object has no attribute 'weights'
    model = _arith_model()
    x = _x()
    new = {
        "prune": lambda m: tfopt.prune.prune(m),
        "cluster": lambda m: tfopt.cluster.cluster(m, 4),
        "qat": lambda m: tfopt.quantize.qat(m),
    }[technique](model)
    assert set(new.tfopt_report.changed) == {"conv_a", "conv_b", "head"}
    if technique == "prune":  # masks start at one: same function
        np.testing.assert_allclose(new(x), model(x), atol=1e-5)


def test_one_filters_rule_for_every_technique():
    # Keras's Model.quantize rule: a list holds regexes, searched in the layer name
    model = _arith_model()
    expected = {"conv_a", "conv_b"}
    assert set(tfopt.prune.prune(model, filters=["conv"]).tfopt_report.changed) == expected
    assert set(tfopt.cluster.cluster(model, 4, filters=["conv"]).tfopt_report.changed) == expected
    assert set(tfopt.quantize.qat(model, filters=["conv"]).tfopt_report.changed) == expected
    _, plan = tfopt.prune.prune_channels(model, 0.5, filters=["conv_b"], dry_run=True)
    # conv_b is tied to conv_a by the residual add: with conv_a not selected, neither is pruned
    assert plan.report.changed == {}
    _, plan = tfopt.prune.prune_channels(model, 0.5, filters=["conv"], dry_run=True)
    assert set(plan.report.changed) == {"conv_a", "conv_b", "head"}  # head: fewer inputs
    small, plan = tfopt.prune.prune_channels(
        model, 0.5
    )  # through relu6(x + 3) / 6 and (h + r) * .5
    assert small.count_params() == plan.params_after == 280
    assert small(_x()).shape == (4, 4)
    select = layer_filter(lambda layer: layer.name.endswith("_b"))
    assert [n for n in ("conv_a", "conv_b") if select(model.get_layer(n))] == ["conv_b"]
    with pytest.raises(TypeError, match=r"Received: filters=3 of type builtins.int"):
        layer_filter(3)
    with pytest.raises(ValueError, match=r"not a valid regex"):
        layer_filter(["ok", "("])


class _Scale(keras.layers.Layer):
    """A layer with a weight whose config does not round-trip (``factor`` is not in it)."""

    def __init__(self, factor, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.w * self.factor


def test_qat_copies_a_layer_without_config_instead_of_sharing_it():
    # qat used to share such a layer with the user's model: fitting the copy changed the model
    inp = keras.Input((6,))
    h = _Scale(2.0, name="scale")(keras.layers.Dense(6, name="d")(inp))
    model = keras.Model(inp, keras.layers.Dense(3, name="out")(h))
    q = tfopt.quantize.qat(model)
    assert q.get_layer("scale") is not model.get_layer("scale")
    before = model.get_layer("scale").get_weights()[0].copy()
    q.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    q.fit(_x((16, 6)), np.ones((16, 3), "float32"), epochs=1, verbose=0)
    assert not np.array_equal(q.get_layer("scale").get_weights()[0], before)
    np.testing.assert_array_equal(model.get_layer("scale").get_weights()[0], before)


class _Uncopyable(_Scale):
    def __init__(self, **kwargs):
        super().__init__(1.0, **kwargs)
        self.lock = threading.Lock()  # neither a config round trip nor deepcopy

    def get_config(self):
        return {**super().get_config(), "bogus": 1}


@pytest.mark.parametrize("technique", ["prune", "cluster", "qat"])
def test_a_layer_that_cannot_be_copied_is_a_clear_error(technique):
    inp = keras.Input((6,))
    model = keras.Model(inp, keras.layers.Dense(3)(_Uncopyable(name="locked")(inp)))
    fn = {
        "prune": tfopt.prune.prune,
        "cluster": tfopt.cluster.cluster,
        "qat": tfopt.quantize.qat,
    }[technique]
    with pytest.raises(tfopt.RewriteError, match=r"Cannot copy layer 'locked' \(.*_Uncopyable\)"):
        fn(model)


def test_rewrite_keeps_shared_layers_shared_and_several_inputs_and_outputs():
    a, b = keras.Input((5,), name="a"), keras.Input((5,), name="b")
    shared = keras.layers.Dense(4, name="shared")
    ha, hb = shared(a), shared(b)
    model = keras.Model(
        {"a": a, "b": b}, {"sum": keras.layers.Dense(2, name="s")(ha + hb), "diff": ha - hb}
    )
    seen = []

    def replace(layer):
        seen.append(layer.name)
        return None

    new = rewrite(model, replace)
    assert seen.count("shared") == 1
    assert len([x for x in new.layers if x.name == "shared"]) == 1
    assert all(x is not y for x in new.layers for y in model.layers)
    xs = {"a": _x((3, 5)), "b": _x((3, 5)) + 1}
    got, want = new(xs), model(xs)
    for key in ("sum", "diff"):
        np.testing.assert_allclose(got[key], want[key], atol=1e-6)


def test_nested_models_are_rewritten_inside():
    inner = keras.Sequential([keras.Input((6,)), keras.layers.Dense(6, name="in_d")], name="inner")
    inp = keras.Input((6,))
    model = keras.Model(inp, keras.layers.Dense(2, name="head")(inner(inp)))
    pruned = tfopt.prune.prune(model)
    assert list(pruned.tfopt_report.changed) == ["in_d", "head"]
    assert pruned.get_layer("inner") is not inner


def test_report_is_a_json_record():
    report = tfopt.prune.prune(_arith_model(), filters="head").tfopt_report
    assert isinstance(report, tfopt.Report)
    assert report.changed == {"head": "_kernel"}
    assert report.skipped == {"conv_a": "excluded by filters", "conv_b": "excluded by filters"}
    again = Report.from_dict(report.to_dict())
    assert again == report
    assert str(again).startswith("prune: changed 1 layers, skipped 2")
