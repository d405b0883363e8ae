"""tfopt.export: every format from a tiny model, parity checks, errors, and `tfopt export`."""

import json

import keras
import numpy as np
import pytest

import tfopt


@pytest.fixture(scope="module")
def model():
    import keras

    import tfopt

    keras.utils.set_random_seed(1)
    return tfopt.models.get("mnist1d_cnn", width=4, dense=8)


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).normal(size=(128, 40, 1)).astype("float32")


@pytest.mark.parametrize(
    "fmt, min_agreement",
    [
        ("tflite", 0.99),
        ("tflite-float16", 0.99),
        ("tflite-dynamic", 0.95),
        ("tflite-int8", 0.9),
        ("tflite-int16x8", 0.95),
    ],
)
def test_tflite_formats_are_checked_and_keep_a_dynamic_batch(
    model, x, tmp_path, fmt, min_agreement
):
    from tfopt.bench import TFLiteRunner
    from tfopt.export import export

    art = export(model, tmp_path / "m.tflite", format=fmt, representative_data=x)
    assert art.format == fmt
    assert art.bytes == (tmp_path / "m.tflite").stat().st_size
    assert art.check["passed"] is True
    assert art.check["samples"] == 128
    assert art.check["min_agreement"] == min_agreement
    assert art.check["argmax_agreement"] >= min_agreement
    runner = TFLiteRunner(art.path)
    assert runner.shape_signature == [None, 40, 1]
    out = runner.invoke(x[:3])
    assert out.shape == (3, 10)
    if fmt == "tflite":
        np.testing.assert_allclose(out, model.predict(x[:3], verbose=0), atol=1e-5)
        assert art.check["max_abs_diff"] < 1e-5


def test_int8_io_model_is_fully_integer(model, x, tmp_path):
    from tfopt.bench import TFLiteRunner
    from tfopt.export import tflite

    art = tflite(
        model, tmp_path / "m.tflite", quantization="int8", representative_data=x, int8_io=True
    )
    assert TFLiteRunner(art.path).input_dtype == np.int8
    assert art.info["input"]["dtype"] == "int8"


def test_onnx_runs_in_onnxruntime_with_any_batch(model, x, tmp_path):
    import onnx
    import onnxruntime as ort

    from tfopt.export import export

    art = export(model, tmp_path / "m.onnx", format="onnx", opset=13, check_data=x)
    assert art.check["passed"] is True and art.check["argmax_agreement"] == 1.0
    assert art.check["max_abs_diff"] < 1e-4
    assert art.info["inputs"] == {"input": [None, 40, 1]}
    assert art.info["outputs"] == {"output_0": [None, 10]}
    assert [o.version for o in onnx.load(art.path).opset_import if o.domain in ("", "ai.onnx")] == [
        13
    ]
    session = ort.InferenceSession(str(art.path), providers=["CPUExecutionProvider"])
    for n in (1, 7):
        (out,) = session.run(["output_0"], {"input": x[:n]})
        np.testing.assert_allclose(out, model.predict(x[:n], verbose=0), atol=1e-5)


def test_savedmodel_reloads_with_a_serving_signature(model, x, tmp_path):
    import tensorflow as tf

    from tfopt.export import savedmodel

    art = savedmodel(model, tmp_path / "sm")
    assert art.format == "savedmodel" and art.check["passed"] is True
    assert art.check["max_abs_diff"] <= 1e-5
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    fn = loaded.signatures["serving_default"]
    out = fn(input=tf.constant(x[:5]))["output_0"].numpy()
    np.testing.assert_allclose(out, model.predict(x[:5], verbose=0), atol=1e-5)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        savedmodel(model, tmp_path / "sm")


EXPECTED_CONFIG = """name: "tiny"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [
  {
    name: "input"
    data_type: TYPE_FP32
    dims: [ 40, 1 ]
  }
]
output [
  {
    name: "output_0"
    data_type: TYPE_FP32
    dims: [ 10 ]
  }
]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 500
}
instance_group [
  {
    count: 2
    kind: KIND_CPU
  }
]
"""


def test_triton_repository_layout_and_config(model, tmp_path):
    from tfopt.bench import runner_for
    from tfopt.export import export

    art = export(
        model,
        tmp_path / "repo",
        format="triton",  # the ONNX Runtime backend by default
        name="tiny",
        max_batch_size=16,
        preferred_batch_sizes=(4, 8),
        max_queue_delay_us=500,
        instance_count=2,
    )
    assert art.path == tmp_path / "repo" / "tiny"
    assert (tmp_path / "repo" / "tiny" / "1" / "model.onnx").is_file()
    assert (tmp_path / "repo" / "tiny" / "config.pbtxt").read_text() == EXPECTED_CONFIG
    assert art.check["passed"] is True
    assert runner_for(art.path).runtime == "onnxruntime"  # bench finds the model file

    art = export(model, tmp_path / "repo", format="triton", version=2, backend="savedmodel")
    config = (tmp_path / "repo" / model.name / "config.pbtxt").read_text()
    assert (tmp_path / "repo" / model.name / "2" / "model.savedmodel" / "saved_model.pb").is_file()
    assert 'platform: "tensorflow_savedmodel"' in config
    assert "max_batch_size: 64" in config and "dynamic_batching {" in config
    assert 'name: "output_0"' in config and "dims: [ 10 ]" in config
    with pytest.raises(ValueError, match=r"Unrecognized backend='trt'"):
        export(model, tmp_path / "repo", format="triton", backend="trt")


def test_tensorrt_without_the_package_says_what_to_install(model, tmp_path):
    import importlib.util

    from tfopt import MissingDependencyError
    from tfopt.export import export

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed")
    with pytest.raises(MissingDependencyError, match=r"TensorFlow >= 2\.18.*pip install tensorrt"):
        export(model, tmp_path / "m.engine", format="tensorrt")
    assert not (tmp_path / "m.onnx").exists()  # failed before doing any work


def test_unknown_format_lists_the_supported_ones(model, tmp_path):
    from tfopt.export import export

    with pytest.raises(
        ValueError,
        match=r"format='tflite8'\. Did you mean 'tflite-int8'\? "
        r"Supported formats are: \['tflite', 'tflite-float16'",
    ):
        export(model, tmp_path / "m", format="tflite8")
    with pytest.raises(ValueError, match=r"format='trt'\. Did you mean 'tensorrt'\?"):
        export(model, tmp_path / "m", format="trt")
    with pytest.raises(ValueError, match=r"'onnx' does not take option\(s\) \['quantization'\]"):
        export(model, tmp_path / "m.onnx", format="onnx", quantization="int8")


def test_failed_parity_raises_unless_the_tolerance_is_relaxed(model, x, tmp_path):
    from tfopt import ExportCheckError
    from tfopt.export import export

    # float16 weights are not exact: a zero tolerance on the max abs diff must fail
    with pytest.raises(
        ExportCheckError, match=r"m\.tflite \(tflite-float16\) disagrees.*raise atol"
    ):
        export(model, tmp_path / "m.tflite", format="tflite-float16", check_data=x, atol=0.0)
    # int8 calibrated on inputs 1000x too small saturates on the real inputs
    with pytest.raises(ExportCheckError, match=r"needs an agreement of at least 90\.0%"):
        export(
            model,
            tmp_path / "q.tflite",
            format="tflite-int8",
            representative_data=x * 1e-3,
            check_data=x,
        )
    art = export(  # the failed file stays for inspection, and export() never replaces a file
        model,
        tmp_path / "q.tflite",
        format="tflite-int8",
        representative_data=x * 1e-3,
        check_data=x,
        min_agreement=0.0,
        overwrite=True,
    )
    assert art.check["passed"] is True and art.check["argmax_agreement"] < 0.9


@pytest.mark.parametrize(
    "fn, name, options",
    [
        ("tflite", "m.tflite", {}),
        ("tflite", "m.tflite", {"quantization": "int8"}),
        ("onnx", "m.onnx", {}),
        ("lowbit", "m.tflite", {"mode": "w8"}),
        ("tflm", "m_model_data.cc", {}),  # its C sources count too
        ("tensorrt", "m.onnx", {}),  # the ONNX file it writes beside the engine
    ],
    ids=["tflite", "tflite-int8", "onnx", "lowbit", "tflm_source", "tensorrt_onnx"],
)
def test_format_functions_refuse_an_existing_file_unless_overwrite(
    model, x, tmp_path, fn, name, options
):
    """As `export(overwrite=False)` does: before any work, one line naming the path and the
    flag; the file is left as it was."""
    from tfopt.errors import OutputDirError

    (tmp_path / name).write_text("mine\n")
    target = tmp_path / ("m.engine" if fn == "tensorrt" else "m.tflite" if fn != "onnx" else name)
    with pytest.raises(OutputDirError) as info:
        rep = {"representative_data": x} if fn in ("tflite", "lowbit", "tflm") else {}
        getattr(tfopt.export, fn)(model, target, **rep, **options)
    assert str(info.value) == (
        f"path: {tmp_path / name} already exists; pass overwrite=True to replace, or choose "
        "another path"
    )
    assert (tmp_path / name).read_text() == "mine\n"
    if fn == "tflite" and not options:  # asked for: replaced
        art = tfopt.export.tflite(model, target, check_data=x, overwrite=True)
        assert art.check["passed"] and target.read_bytes()[4:8] == b"TFL3"


def test_check_against_keras_measures_a_wrong_runner(model, x):
    from tfopt.export import check_against_keras

    class Wrong:
        def predict(self, x):
            y = model.predict(x, verbose=0)
            y[:32] = -y[:32]  # flips the argmax of the first quarter (the max becomes the min)
            return y

    check = check_against_keras(model, Wrong(), x, min_agreement=0.9, max_abs_diff=None)
    assert check["argmax_agreement"] == 0.75
    assert check["passed"] is False


@pytest.fixture(scope="module")
def gru():
    import keras

    inputs = keras.Input((12, 3), name="seq")
    h = keras.layers.GRU(8)(inputs)
    return keras.Model(inputs, keras.layers.Dense(4)(h))


def test_a_recurrent_model_converts_with_a_fixed_batch_when_a_dynamic_one_cannot(gru, tmp_path):
    """A GRU's dynamic batch lowers to TensorList ops that need TF ops: tflite() converts it with
    fixed_batch=1 by itself (tfopt auto could not search a GRU model: its float baseline failed
    to convert); the converter's own error still names both options."""
    from tfopt.bench import TFLiteRunner
    from tfopt.export import tflite
    from tfopt.export._tflite import _convert

    with pytest.raises(
        RuntimeError, match=r"TensorList.*Pass fixed_batch=1.*select_tf_ops=True"
    ) as e:
        _convert(gru, "float32", None, False, False)
    assert len(str(e.value)) < 800  # one readable message, not pages of MLIR
    art = tflite(gru, tmp_path / "g.tflite")
    assert art.info["fixed_batch"] == 1
    assert art.check["passed"] is True and art.check["max_abs_diff"] < 1e-5
    runner = TFLiteRunner(art.path)
    assert runner.shape_signature == [1, 12, 3]
    x = np.random.default_rng(0).normal(size=(5, 12, 3)).astype("float32")
    np.testing.assert_allclose(runner.predict(x), gru.predict(x, verbose=0), atol=1e-5)
    art = tflite(gru, tmp_path / "s.tflite", select_tf_ops=True)
    assert art.info["fixed_batch"] is None
    assert art.check["passed"] is None and "Flex" in art.check["skipped"]


def test_cli_export(model, tmp_path, capsys):
    from tfopt.cli import main
    from tfopt.export import default_path

    path = tmp_path / "m.keras"
    model.save(path)
    assert default_path(path, "tflite-int8") == tmp_path / "m_int8.tflite"
    assert default_path(path, "savedmodel") == tmp_path / "m_savedmodel"
    assert main(["export", str(path), "--format", "onnx", "--opset", "15"]) == 0
    out = capsys.readouterr().out
    assert f"onnx: {tmp_path / 'm.onnx'}" in out and "check passed: argmax agreement 100.0%" in out
    report = json.loads((tmp_path / "m.onnx.export.json").read_text())
    assert report["format"] == "onnx" and report["info"]["opset"] == 15
    assert report["check"]["passed"] is True
    assert main(["export", str(path), "--format", "tflite8"]) == 1
    assert "Did you mean 'tflite-int8'?" in capsys.readouterr().err


def _choices(argv_prefix, option):
    """The ``choices`` of ``option`` in the parser of a `tfopt` subcommand."""
    from tfopt.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    parser = sub.choices[argv_prefix]
    return next(a for a in parser._actions if option in a.option_strings)


def test_one_formats_table_feeds_config_cli_export_bench_and_search(
    model, x, tmp_path, monkeypatch
):
    """A format added to the table is known everywhere: config, CLI, export, default paths."""
    import tfopt
    from tfopt import _formats
    from tfopt.config import EXPORT_FORMATS, load

    names = [
        "tflite",
        "tflite-float16",
        "tflite-dynamic",
        "tflite-int8",
        "tflite-int16x8",
        "tflm",
        "tflite-w4",
        "tflite-w8",
        "tflite-dynamic-w4",
        "tflite-dynamic-w8",
        "tflite-w8a8",
        "tflite-w8a16",
        "onnx",
        "savedmodel",
        "triton",
        "tensorrt",
        "tensorrt-fp16",
        "tensorrt-int8",
    ]  # the user-facing names (README, DESIGN) do not change
    assert list(_formats.FORMATS) == list(tfopt.export.FORMATS) == list(EXPORT_FORMATS) == names
    targets = ("tflite", "tflite-float16", "tflite-dynamic", "tflite-int8", "tflm")
    assert tfopt.tune.TARGETS == _formats.targets() == targets
    assert tuple(_choices("auto", "--target").choices) == targets
    assert tfopt.export.TOLERANCES["tflite-int8"] == _formats.get("tflite-int8").tolerance
    assert (
        _formats.get("onnx").runtime == "onnxruntime" and _formats.get("tensorrt").runtime is None
    )
    with pytest.raises(ValueError, match=r"^Unrecognized format='onx'\. Did you mean 'onnx'\? "):
        _formats.get("onx")

    extra = _formats.Format(
        "tflite-half",
        exporter="tflite",
        runtime="tflite",
        min_agreement=0.99,
        max_abs_diff=2e-2,
        suffix=".tflite",
        tag="_half",
        fixed=(("quantization", "float16"),),
    )
    monkeypatch.setitem(_formats.FORMATS, "tflite-half", extra)
    assert load(overrides=["export.formats=[tflite-half]"]).export.formats == ["tflite-half"]
    assert "tflite-half" in _choices("export", "--format").help
    path = tfopt.export.default_path(tmp_path / "m.keras", "tflite-half")
    assert path == tmp_path / "m_half.tflite"
    art = tfopt.export.export(model, path, format="tflite-half", check_data=x[:16])
    assert art.info["quantization"] == "float16" and art.check["passed"]
    with pytest.raises(ValueError, match=r"does not take option\(s\) \['quantization'\]"):
        tfopt.export.export(model, path, format="tflite-half", quantization="int8")
    assert tfopt.bench.runner_for(art.path).runtime == "tflite"


def test_onnx_exports_exact_gelu_and_integer_inputs(tmp_path):
    # exact GELU lowers to TF's Erfc, which tf2onnx did not know (ORT: "No Op registered for Erfc")
    inp = keras.Input((6,))
    h = keras.activations.gelu(keras.layers.Dense(8)(inp), approximate=False)
    art = tfopt.export.export(
        keras.Model(inp, keras.layers.Dense(3)(h)), tmp_path / "g.onnx", format="onnx"
    )
    assert art.check["passed"] and art.check["max_abs_diff"] < 1e-4
    # token ids were fed as float32 to an int32 input (ORT: InvalidArgument)
    tokens = keras.Input((5,), dtype="int32")
    h = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(10, 4)(tokens))
    art = tfopt.export.export(
        keras.Model(tokens, keras.layers.Dense(2)(h)), tmp_path / "t.onnx", format="onnx"
    )
    assert art.check["passed"]
    # Normalization's mean/variance became ONNX graph inputs ("Required inputs ... are missing")
    images = keras.Input((4, 4, 3), name="images")
    h = keras.layers.Normalization(mean=[0.1, 0.2, 0.3], variance=[1.0, 2.0, 3.0])(images)
    art = tfopt.export.export(
        keras.Model(images, keras.layers.Dense(2)(keras.layers.Flatten()(h))),
        tmp_path / "n.onnx",
        format="onnx",
    )
    assert art.check["passed"] and list(art.info["inputs"]) == ["images"]


@keras.saving.register_keras_serializable(package="tfopt_tests")
class _Net(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(8, activation="relu")
        self.out = keras.layers.Dense(3)

    def call(self, x):
        return self.out(self.hidden(x))


def test_subclassed_and_mixed_precision_models_export(tmp_path):
    x = np.random.default_rng(0).normal(size=(8, 5)).astype("float32")
    net = _Net()
    net(x)
    net.save(tmp_path / "net.keras")
    loaded = keras.models.load_model(tmp_path / "net.keras")  # input shapes unknown to TFLite
    for fmt in ("tflite", "onnx"):
        art = tfopt.export.export(loaded, tmp_path / f"net.{fmt}", format=fmt, check_data=x)
        assert art.check["passed"], fmt
    inp = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, dtype="mixed_float16")(inp)
    out = keras.layers.Dense(2, dtype="float32")(keras.layers.Flatten()(h))
    art = tfopt.export.export(keras.Model(inp, out), tmp_path / "mp.tflite", format="tflite")
    assert art.check["passed"]  # converted as a float32 copy: TFLite has no float16 CONV_2D


# -- never a wrong label, never a traceback (issue 12) ------------------------------------------
def test_int8_refuses_empty_or_misshaped_calibration_data(model, x, tmp_path):
    from tfopt.errors import DataError

    with pytest.raises(
        DataError, match=r"representative_data holds no samples; .* shape \(40, 1\)"
    ):
        tfopt.export.tflite(
            model, tmp_path / "a.tflite", quantization="int8", representative_data=x[:0]
        )
    with pytest.raises(
        DataError,
        match=r"representative_data: expected samples of shape \(40, 1\) .* received .* \(20, 1\)",
    ):
        tfopt.export.tflite(
            model, tmp_path / "b.tflite", quantization="int8", representative_data=x[:, :20]
        )
    with pytest.raises(DataError, match=r"check_data: expected samples of shape \(40, 1\)"):
        tfopt.export.tflite(model, tmp_path / "c.tflite", check_data=x[:, :20, 0])
    assert not list(tmp_path.iterdir())  # nothing written


def test_int8_label_is_verified_from_the_tensor_types(model, x, tmp_path):
    from tfopt.errors import ExportCheckError
    from tfopt.export._tflite import check_tensor_types

    art = tfopt.export.tflite(
        model, tmp_path / "q.tflite", quantization="int8", representative_data=x
    )
    types = art.info["tensor_types"]
    assert types["float32"] == 2 and types["int8"] > 0  # only the float input and output
    assert art.info["float_ops"] == []  # every op computes in int8
    dyn = tfopt.export.tflite(model, tmp_path / "d.tflite", quantization="dynamic")
    # a model that is not int8 (float activations) is refused under the int8 label
    with pytest.raises(
        ExportCheckError, match=r"not int8: no op computes in int8 \(tensor types \{'float32': "
    ):
        check_tensor_types(dyn.path.read_bytes(), "int8")
    check_tensor_types(art.path.read_bytes(), "int8")


def test_cli_export_refuses_zero_samples_and_reads_bad_files_cleanly(model, x, tmp_path, capsys):
    from tfopt.cli import main

    path = tmp_path / "m.keras"
    model.save(path)
    npz = tmp_path / "d.npz"
    np.savez(npz, x_train=x, y_train=np.zeros(128, "int32"), x_test=x[:16], y_test=np.zeros(16))
    out = tmp_path / "m_int8.tflite"
    argv = ["export", str(path), "-f", "tflite-int8", "--data", str(npz), "--out", str(out)]
    assert main([*argv, "--samples", "0"]) == 1
    assert "--samples must be >= 1" in capsys.readouterr().err and not out.exists()
    (tmp_path / "empty.npz").write_bytes(b"")
    assert main([*argv[:4], "--data", str(tmp_path / "empty.npz"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "empty.npz' is empty (0 bytes), not a .npz file" in err and len(err.splitlines()) == 1
    (tmp_path / "bad.keras").write_bytes(b"garbage")
    assert main(["export", str(tmp_path / "bad.keras"), "-f", "tflite"]) == 1
    err = capsys.readouterr().err
    assert "cannot load" in err and "bad.keras' as a Keras 3 model" in err
    assert len(err.splitlines()) == 1


def test_corrupt_artifacts_give_an_artifact_error(model, tmp_path):
    from tfopt.bench import benchmark, runner_for
    from tfopt.errors import ArtifactError

    onnx = tfopt.export.export(model, tmp_path / "m.onnx", format="onnx").path
    (tmp_path / "cut.onnx").write_bytes(onnx.read_bytes()[:200])
    with pytest.raises(ArtifactError, match=r"cannot read '.*cut\.onnx' as a onnx model"):
        runner_for(tmp_path / "cut.onnx")
    (tmp_path / "junk.tflite").write_bytes(b"\x00" * 64)
    with pytest.raises(ArtifactError, match=r"cannot read '.*junk\.tflite' as a tflite model"):
        benchmark(tmp_path / "junk.tflite")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ArtifactError, match=r"empty\.onnx' is empty \(0 bytes\)"):
        runner_for(tmp_path / "empty.onnx")
