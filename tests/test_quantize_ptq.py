"""Post-training quantization modes of tfopt.export.tflite, checked on the TFLite tensors."""

import numpy as np
import pytest
from _helpers import compile_classifier, signal_data
from _tflite import tflite_ops as _details

import tfopt

keras = pytest.importorskip("keras")
L = keras.layers


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    x, y = signal_data(256)
    i = keras.Input((24, 1))
    h = L.Conv1D(8, 5, padding="same", activation="relu", name="conv")(i)
    h = L.Flatten()(h)
    h = L.Dense(16, activation="relu", name="fc")(h)
    model = keras.Model(i, L.Dense(4, name="logits")(h))
    compile_classifier(model, 2e-3)
    model.fit(x, y, epochs=6, batch_size=32, verbose=0)
    return model, x


def test_int8_needs_representative_data(trained, tmp_path):
    model, _ = trained
    with pytest.raises(ValueError, match=r"quantization='int8' needs representative_data"):
        tfopt.export.tflite(model, tmp_path / "m.tflite", quantization="int8")
    with pytest.raises(ValueError, match=r"quantization='int16x8' needs representative_data"):
        tfopt.export.tflite(model, tmp_path / "m.tflite", quantization="int16x8")
    with pytest.raises(ValueError, match=r"int8_io=True needs quantization='int8' or 'int16x8'"):
        tfopt.export.tflite(model, tmp_path / "m.tflite", quantization="dynamic", int8_io=True)


def test_int8_full_integer_ops_and_tensors(trained, tmp_path):
    model, x = trained
    art = tfopt.export.tflite(
        model, tmp_path / "i8.tflite", quantization="int8", representative_data=x[:100]
    )
    it, ops = _details(art.path)
    kernels = [o for o in ops if o[0] in ("CONV_2D", "FULLY_CONNECTED")]
    assert len(kernels) == 3
    for _, ins, outs, _ in kernels:
        assert ins[:2] == ["int8", "int8"] and ins[2] == "int32" and outs == ["int8"]
    names = [o[0] for o in ops]
    assert names[0] == "QUANTIZE" and names[-1] == "DEQUANTIZE" and names.count("DEQUANTIZE") == 1
    assert it.get_input_details()[0]["dtype"] == np.float32
    assert art.check["argmax_agreement"] >= 0.95


def test_int8_io_makes_input_and_output_int8(trained, tmp_path):
    model, x = trained
    art = tfopt.export.tflite(
        model,
        tmp_path / "io.tflite",
        quantization="int8",
        representative_data=x[:100],
        int8_io=True,
    )
    it, ops = _details(art.path)
    assert it.get_input_details()[0]["dtype"] == np.int8
    assert it.get_output_details()[0]["dtype"] == np.int8
    assert it.get_input_details()[0]["quantization"][0] > 0
    assert all("float32" not in ins + outs for _, ins, outs, _ in ops)
    assert art.check["argmax_agreement"] >= 0.95


def test_dynamic_float16_and_int16x8_tensor_types(trained, tmp_path):
    model, x = trained
    float_art = tfopt.export.tflite(model, tmp_path / "f.tflite")
    dyn = tfopt.export.tflite(model, tmp_path / "d.tflite", quantization="dynamic", check_data=x)
    _, ops = _details(dyn.path)
    fc = [o for o in ops if o[0] == "FULLY_CONNECTED"]
    # int8 weights, float activations; the converter keeps weights under 1024 values float
    assert [ins[:2] for _, ins, _, _ in fc] == [["float32", "int8"], ["float32", "float32"]]
    assert dyn.bytes < float_art.bytes / 2  # most weights (fc: 3072 of 3204) take 1 byte, not 4

    f16 = tfopt.export.tflite(model, tmp_path / "h.tflite", quantization="float16", check_data=x)
    it, ops = _details(f16.path)
    f16_values = sum(
        int(np.prod(t["shape"])) for t in it.get_tensor_details() if t["dtype"] == np.float16
    )
    assert f16_values == model.count_params()  # every weight and bias is stored as float16
    assert "DEQUANTIZE" in [o[0] for o in ops]  # float16 weights -> float32 at load
    assert f16.bytes < float_art.bytes - model.count_params()  # 2 bytes saved per value

    i16 = tfopt.export.tflite(
        model, tmp_path / "s.tflite", quantization="int16x8", representative_data=x[:100]
    )
    _, ops = _details(i16.path)
    kernels = [o for o in ops if o[0] in ("CONV_2D", "FULLY_CONNECTED")]
    assert len(kernels) == 3
    for _, ins, outs, _ in kernels:
        assert ins[:2] == ["int16", "int8"] and outs == ["int16"]
    assert i16.check["argmax_agreement"] >= 0.95
