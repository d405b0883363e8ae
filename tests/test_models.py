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
    with pytest.raises(ValueError, match=r"tfopt loads Keras 3 '.keras' files. Received: '.*m.h5'"):
        (tmp_path / "m.h5").write_bytes(b"x")
        tfopt.models.load(tmp_path / "m.h5")
    with pytest.raises(FileNotFoundError, match="No such model file"):
        tfopt.models.load(tmp_path / "missing.keras")
