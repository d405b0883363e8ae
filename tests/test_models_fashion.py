"""The Fashion-MNIST reference models and the packaged config that trains one."""

import numpy as np
import pytest

import tfopt
from tfopt._training import fit
from tfopt.config._schema import TrainConfig


@pytest.mark.parametrize(
    "name, params, layer_types",
    [
        ("fashion_cnn", 66218, {"Conv2D": 4, "BatchNormalization": 4, "MaxPooling2D": 2}),
        ("fashion_mobilenet", 114986, {"DepthwiseConv2D": 6, "Add": 4, "Conv2D": 13}),
    ],
)
def test_fashion_models_shape_params_and_one_training_step(name, params, layer_types):
    model = tfopt.models.get(name)
    assert model.input_shape == (None, 28, 28, 1) and model.output_shape == (None, 10)
    assert model.count_params() == params
    kinds = [type(layer).__name__ for layer in model.layers]
    assert {k: kinds.count(k) for k in layer_types} == layer_types
    assert model.layers[-1].get_config()["activation"] == "linear"  # logits, as the zoo's
    rng = np.random.default_rng(0)
    # every class in every split: tfopt refuses a validation class that training never holds
    x, y = rng.random((40, 28, 28, 1), "float32"), np.arange(40) % 10
    data = tfopt.data.from_arrays(x, y, x_test=x[:10], y_test=y[:10], val_fraction=0.25)
    train = TrainConfig(epochs=1, batch_size=16, augment={"flip": True, "crop": 2})
    before = [w.copy() for w in model.get_weights()]
    history = fit(model, train, data, validate=False)
    assert len(history.history["loss"]) == 1 and np.isfinite(history.history["loss"][0])
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_fashion_cnn_options_and_softmax():
    assert tfopt.models.get("fashion_cnn", width=16).count_params() < 20_000
    m = tfopt.models.get("fashion_cnn", blocks=3, softmax=True)
    assert m.layers[-1].get_config()["activation"] == "softmax"
    with pytest.raises(
        ValueError, match="width and blocks must be >= 1. Received: width=32, blocks=0"
    ):
        tfopt.models.get("fashion_cnn", blocks=0)


def test_packaged_fashion_config_trains_fashion_cnn_on_fashion_mnist():
    cfg = tfopt.config.load("fashion")
    assert (cfg.data.name, cfg.model.name) == ("fashion_mnist", "fashion_cnn")
    assert cfg.train.lr_schedule == "cosine" and cfg.train.augment.crop == 2
    assert cfg.export.formats == ["tflite", "tflite-int8"]
