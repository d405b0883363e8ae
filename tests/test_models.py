import numpy as np
import pytest

import tfopt


def test_mnist1d_cnn_is_exactly_the_reference_architecture():
    m = tfopt.models.get("mnist1d_cnn")
    spec = [(type(layer).__name__, layer.get_config()) for layer in m.layers[1:]]
    convs = [c for name, c in spec if name == "Conv1D"]
    assert [
        (c["filters"], c["kernel_size"], c["strides"], c["padding"], c["activation"]) for c in convs
    ] == [
        (32, (5,), (1,), "same", "relu"),
        (32, (5,), (2,), "same", "relu"),
        (32, (5,), (2,), "same", "relu"),
    ]
    assert [name for name, _ in spec] == ["Conv1D", "Conv1D", "Conv1D", "Flatten", "Dense", "Dense"]
    assert spec[4][1]["units"] == 128 and spec[4][1]["activation"] == "relu"
    assert spec[5][1]["units"] == 10 and spec[5][1]["activation"] == "linear"
    assert m.input_shape == (None, 40, 1)
    assert m.count_params() == 52874


@pytest.mark.parametrize("name", ["mnist1d_cnn2d", "mnist1d_resnet", "digits_cnn"])
def test_zoo_models_build(name):
    shape = (8, 8, 1) if name == "digits_cnn" else (40, 1)
    m = tfopt.models.get(name)
    assert m.predict(np.zeros((2, *shape), "float32"), verbose=0).shape == (2, 10)


def test_width_options_and_unknown_name():
    assert tfopt.models.get("mnist1d_cnn", width=16, dense=64).count_params() < 20000
    with pytest.raises(ValueError, match="Unknown model 'mnist1d_nn'. Did you mean 'mnist1d_cnn'?"):
        tfopt.models.get("mnist1d_nn")


def test_load_user_keras_file_safe_mode(tmp_path):
    m = tfopt.models.get("digits_cnn")
    path = tmp_path / "m.keras"
    m.save(path)
    loaded = tfopt.models.load(path)
    x = np.random.default_rng(0).normal(size=(3, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), m.predict(x, verbose=0), atol=1e-6)
    with pytest.raises(
        ValueError, match=r"tfopt loads Keras 3 '.keras' files .* Received: '.*m.pt'"
    ):
        (tmp_path / "m.pt").write_bytes(b"x")
        tfopt.models.load(tmp_path / "m.pt")
    with pytest.raises(FileNotFoundError, match="No such model file"):
        tfopt.models.load(tmp_path / "missing.keras")


def _small_dense():
    import keras

    inp = keras.Input((6,), name="x")
    h = keras.layers.Dense(8, activation="relu", name="fc1")(inp)
    return keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="out")(h))


def test_load_legacy_h5_written_by_keras3(tmp_path):
    import warnings

    m = _small_dense()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras warns that .h5 is a legacy format
        m.save(tmp_path / "m.h5")
    loaded = tfopt.models.load(tmp_path / "m.h5")
    x = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), m.predict(x, verbose=0), atol=1e-6)
    assert [layer.name for layer in loaded.layers] == ["x", "fc1", "out"]
    # and a config accepts it as the model (`tfopt run --model m.h5`)
    cfg = tfopt.config.load(None, overrides=[f"model.path={tmp_path / 'm.h5'}", "model.name=null"])
    assert cfg.model.path.endswith("m.h5")


def test_unloadable_h5_and_corrupt_keras_say_what_to_do(tmp_path):
    from tfopt.errors import ArtifactError

    m = _small_dense()
    m.save_weights(tmp_path / "w.weights.h5")
    (tmp_path / "w.h5").write_bytes((tmp_path / "w.weights.h5").read_bytes())  # weights only
    with pytest.raises(
        ArtifactError, match=r"cannot load '.*w\.h5' as a Keras 3 model: .*tf_keras"
    ):
        tfopt.models.load(tmp_path / "w.h5")
    (tmp_path / "bad.keras").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ArtifactError, match=r"cannot load '.*bad\.keras' as a Keras 3 model: "):
        tfopt.models.load(tmp_path / "bad.keras")
    (tmp_path / "empty.keras").write_bytes(b"")
    with pytest.raises(ArtifactError, match=r"is empty \(0 bytes\): not a Keras model file"):
        tfopt.models.load(tmp_path / "empty.keras")


def test_load_h5_saved_by_tf_keras(tmp_path):
    """A Keras 2 user's model: written by tf_keras in a subprocess (never imported here)."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("tf_keras") is None:
        pytest.skip("tf_keras is not installed")
    script = (
        "import numpy as np, tf_keras as k\n"
        "m = k.Sequential([k.layers.Input((6,)), k.layers.Dense(8, activation='relu'),"
        " k.layers.Dense(3)])\n"
        "m.save(r'{}')\n"
        "np.save(r'{}', m.predict(np.ones((2, 6), 'float32'), verbose=0))\n"
    ).format(tmp_path / "k2.h5", tmp_path / "expected.npy")
    env = {**__import__("os").environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, timeout=1800
    )
    if done.returncode != 0:
        pytest.skip(f"tf_keras could not save a model here: {done.stderr.decode()[-300:]}")
    loaded = tfopt.models.load(tmp_path / "k2.h5")
    out = loaded.predict(np.ones((2, 6), "float32"), verbose=0)
    np.testing.assert_allclose(out, np.load(tmp_path / "expected.npy"), atol=1e-5)
