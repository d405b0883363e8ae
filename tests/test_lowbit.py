"""Below int8 through LiteRT Quantizer (litert-quantizer): formats, storage types, runtimes, sensitivity, bit plans."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from _helpers import compile_classifier

import tfopt
from tfopt.bench._runners import TFLiteRunner
from tfopt.quantize._lowbit import MODES, weight_types

pytest.importorskip("litert_quantizer")


def _model():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu", name="fc"),
            keras.layers.Dense(10, name="logits"),
        ]
    )


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype("float32").reshape(-1, 8, 8, 1)
    return x, d.target.astype("int32")


@pytest.fixture(scope="module")
def trained(digits):
    keras.utils.set_random_seed(0)
    x, y = digits
    model = _model()
    compile_classifier(model, 3e-3)
    model.fit(x[:1200], y[:1200], batch_size=64, epochs=4, verbose=0)
    return model


def test_int4_format_runs_in_litert_with_int4_weights(trained, digits, tmp_path):
    x, _ = digits
    art = tfopt.export.export(
        trained, tmp_path / "m.tflite", format="tflite-w4", check_data=x[1200:1400]
    )
    content = art.path.read_bytes()
    # the flatbuffer stores every kernel as INT4 (TensorType 17), read back from the file
    assert weight_types(content, ["conv", "fc", "logits"]) == {
        "conv": "INT4",
        "fc": "INT4",
        "logits": "INT4",
    }
    assert art.info["bits"] == {"conv": 4, "fc": 4, "logits": 4}
    assert art.check["passed"] and art.check["argmax_agreement"] >= 0.8
    w8 = tfopt.export.export(trained, tmp_path / "m8.tflite", format="tflite-w8", check_data=x[:64])
    # 8 * 10 + 288 * 32 + 32 * 10 weights: int4 halves them (scales and the graph stay)
    saved = w8.bytes - art.bytes
    assert (
        (8 * 9 + 288 * 32 + 32 * 10) // 2 - 200 <= saved <= (8 * 9 + 288 * 32 + 32 * 10) // 2 + 200
    )
    # mixed precision: fc at 4 bits, the rest int8, the logits kept float
    mixed = tfopt.export.lowbit(
        trained,
        tmp_path / "mix.tflite",
        mode="w8",
        bits={"^fc$": 4, "logits": None},
        check_data=x[:64],
    )
    assert mixed.info["types"] == {"conv": "INT8", "fc": "INT4", "logits": "FLOAT32"}
    with pytest.raises(ValueError, match="bits key 'nope' matches no layer"):
        tfopt.export.lowbit(trained, tmp_path / "x.tflite", bits={"nope": 4})
    with pytest.raises(ValueError, match="bits values must be 4, 8 or None"):
        tfopt.export.lowbit(trained, tmp_path / "x.tflite", bits={"fc": 2})
    with pytest.raises(ValueError, match="needs representative_data"):
        tfopt.export.lowbit(trained, tmp_path / "x.tflite", mode="w8a16")


def test_modes_run_where_they_say(trained, digits, tmp_path):
    """MODES[...].runtimes is measured: TFLite Micro runs w8a16 and refuses int4 weights."""
    tflm = pytest.importorskip("tflite_micro")
    x, _ = digits
    a16 = tfopt.export.export(
        trained, tmp_path / "a16.tflite", format="tflite-w8a16", representative_data=x[:64]
    )
    assert a16.check["argmax_agreement"] >= 0.95
    assert "tflm" in MODES["w8a16"].runtimes and "tflm" not in MODES["w4"].runtimes
    micro = tflm.runtime.Interpreter.from_bytes(a16.path.read_bytes())
    d = micro.get_input_details(0)
    scale, zero = (
        d["quantization_parameters"]["scales"][0],
        d["quantization_parameters"]["zero_points"][0],
    )
    micro.set_input(np.clip(np.round(x[:1] / scale + zero), -32768, 32767).astype("int16"), 0)
    micro.invoke()
    assert micro.get_output(0).dtype == np.int16
    w4 = tfopt.export.export(trained, tmp_path / "w4.tflite", format="tflite-w4", check_data=x[:64])
    with pytest.raises(RuntimeError):
        tflm.runtime.Interpreter.from_bytes(w4.path.read_bytes())


def test_sensitivity_and_choose_bits(trained, digits):
    x, y = digits
    val = (x[1200:1500], y[1200:1500])
    table = tfopt.quantize.sensitivity(trained, val, mode="w8")
    assert [r["layer"] for r in table.rows] == ["conv", "fc", "logits"]
    assert [r["op"] for r in table.rows] == ["CONV_2D", "FULLY_CONNECTED", "FULLY_CONNECTED"]
    assert [r["weights"] for r in table.rows] == [72, 9216, 320]
    assert table.samples == 300 and 0.8 <= table.float_accuracy <= 1.0
    for r in table.rows:
        assert r["drop"] == pytest.approx(table.base_accuracy - r["accuracy"])
        assert r["bytes"] < table.base_bytes  # int4 weights for one layer: a smaller file
    assert "| fc | FULLY_CONNECTED | 9216 |" in table.to_markdown()
    plan = tfopt.quantize.choose_bits(trained, val, max_accuracy_drop=0.02, table=table)
    assert set(plan.bits) == {"conv", "fc", "logits"}
    assert plan.accuracy >= plan.float_accuracy - 0.02
    assert len(plan.steps) == 3
    assert [s["layer"] for s in plan.steps] == [
        r["layer"] for r in sorted(table.rows, key=lambda r: (r["drop"], -r["weights"]))
    ]
    assert {s["layer"] for s in plan.steps if s["kept"]} == {
        k for k, v in plan.bits.items() if v == 4
    }
    with pytest.raises(ValueError, match="max_accuracy_drop must be >= 0"):
        tfopt.quantize.choose_bits(trained, val, max_accuracy_drop=-1.0, table=table)


def test_qat_int4_weights_are_int4_in_the_converted_file(trained, digits, tmp_path):
    """qat(bits={regex: 4}): 15-level fake-quant weights; the TFLite converter stores them as
    INT4 (packed), int8 activations stay, and both LiteRT and TFLite Micro run the file."""
    x, _ = digits
    q = tfopt.quantize.qat(trained, bits={"conv|fc": 4})
    assert "int4 weights" in q.qat_report.changed["conv"]
    assert "int4" not in q.qat_report.changed["logits"]
    from tfopt.quantize._layers import _symmetric

    w = keras.ops.convert_to_numpy(_symmetric(q.get_layer("quant_fc").layer.kernel, bits=4))
    assert len(np.unique(w)) <= 15  # narrow-range 4 bits: the levels -7..7
    art = tfopt.export.tflite(q, tmp_path / "q4.tflite", quantization="int8", check_data=x[:200])
    assert art.check["argmax_agreement"] >= 0.9
    content = art.path.read_bytes()
    assert weight_types(content, ["quant_conv", "quant_fc", "quant_logits"]) == {
        "quant_conv": "INT4",
        "quant_fc": "INT4",
        "quant_logits": "INT8",
    }
    path = tmp_path / "q4.keras"
    q.save(path)
    assert keras.models.load_model(path).get_layer("quant_fc").weight_bits == 4
    tflm = pytest.importorskip("tflite_micro")
    micro = tflm.runtime.Interpreter.from_bytes(content)
    micro.set_input(x[:1], 0)
    micro.invoke()
    np.testing.assert_allclose(micro.get_output(0), TFLiteRunner(content).predict(x[:1]), atol=1e-4)
    with pytest.raises(ValueError, match="bits values must be 4 or 8"):
        tfopt.quantize.qat(trained, bits={"fc": 2})


def test_missing_quantizer_says_what_to_install(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "litert_quantizer", None)  # import fails as if absent
    with pytest.raises(tfopt.MissingDependencyError, match=r"pip install 'tfopt\[lowbit\]'"):
        tfopt.export.lowbit(_model(), tmp_path / "m.tflite")


def test_static_calibration_takes_min_max_over_all_samples():
    """AEQ's default calibration keeps a moving average of each sample's min/max, which shrinks
    the ranges to a typical sample's and clipped the MNIST-1D CNN by 10-14 points at w8a8 and
    w8a16 alike; tfopt calibrates with the min/max over every sample, like the TFLite converter."""
    from ai_edge_litert.interpreter import Interpreter

    from tfopt.quantize._lowbit import _float_tflite, _layer_names, quantize_flatbuffer

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu", name="fc"),
         keras.layers.Dense(4, name="logits")]
    )  # fmt: skip
    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    x[0] *= 8.0  # the largest sample first: a moving average forgets it by the 64th
    out, _ = quantize_flatbuffer(
        _float_tflite(model), "w8a16", layer_names=_layer_names(model), representative_data=x
    )
    scale = Interpreter(model_content=out).get_input_details()[0]["quantization"][0]
    # int16 activations are symmetric: the input range is scale * 32767 = max |x| of all samples
    assert scale * 32767 == pytest.approx(float(np.abs(x).max()), rel=1e-4)


def test_qat_step_picks_per_layer_bits_by_sensitivity(trained, digits, tmp_path):
    """``weight_bits: mixed`` (the search dimension) -> the qat step's ``bits: sensitivity``:
    `choose_bits` on the val data decides which layers QAT trains (and the converter stores) at
    4 bits; the artifact's weight types are that plan, read back from the file."""
    from tfopt.tune._recipe import describe, recipe_steps
    from tfopt.tune._tuner import run_candidate

    x, y = digits
    val = (x[1200:1500], y[1200:1500])
    steps = recipe_steps({"quantization": "qat", "weight_bits": "mixed", "epochs": 4})
    assert [(s.type, s.bits, s.bits_max_drop) for s in steps] == [("qat", "sensitivity", 0.01)]
    assert describe(steps, "tflite-int8") == ["qat(w4/8)"]
    _, metrics, facts = run_candidate(
        trained, steps, train=(x[:1200], y[:1200]), val=val, out_dir=tmp_path, seed=0
    )
    (recorded,) = [r["bits"] for r in facts.values() if isinstance(r, dict) and "bits" in r]
    plan = recorded["plan"]  # choose_bits' plan: post-training int4 within 0.01 on val
    assert set(plan) == {"conv", "fc", "logits"} and 4 in plan.values()
    assert recorded["accuracy"] >= recorded["float_accuracy"] - 0.01
    content = (tmp_path / "model.tflite").read_bytes()
    types = weight_types(content, ["quant_conv", "quant_fc", "quant_logits"])
    assert types == {f"quant_{k}": {4: "INT4", 8: "INT8"}[v] for k, v in plan.items()}
    assert metrics["val_accuracy"] >= 0.8
    four = recipe_steps({"quantization": "qat", "weight_bits": 4})
    assert four[0].bits == {".*": 4} and describe(four, "tflite-int8") == ["qat(w4)"]
    assert recipe_steps({"quantization": "qat"})[0].bits is None
    with pytest.raises(ValueError, match="weight_bits must be 8, 4, 'mixed' or 'plan"):
        recipe_steps({"quantization": "qat", "weight_bits": 2})
