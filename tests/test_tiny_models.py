"""The MLPerf Tiny reference architectures in the model zoo (tfopt/models/_tiny.py)."""

from __future__ import annotations

import numpy as np
import pytest

import tfopt
from tfopt._measure import count_params

# params of mlcommons/tiny's own Keras definitions built at their reference input shapes
# (keyword_spotting/keras_model.py ds_cnn (49, 10, 1) 12 classes; image_classification
# resnet_v1_eembc v1.0 (32, 32, 3); visual_wake_words/vww_model.py (96, 96, 3) 2 classes;
# anomaly_detection/keras_model.py get_model(640))
PUBLISHED_PARAMS = {
    "tiny_dscnn": 24908,
    "tiny_resnet8": 78666,
    "tiny_mobilenet_v1_025": 221794,
    "tiny_fc_autoencoder": 269992,
}


@pytest.mark.parametrize("name", list(PUBLISHED_PARAMS))
def test_reference_shapes_have_the_published_params(name):
    model = tfopt.models.get(name)
    assert model.count_params() == PUBLISHED_PARAMS[name]
    assert count_params(model) == PUBLISHED_PARAMS[name]


def test_configurable_shapes_and_heads():
    ds = tfopt.models.get("tiny_dscnn", input_shape=(40, 1), num_classes=10)
    assert ds.input_shape == (None, 40, 1) and ds.output_shape == (None, 10)
    # the reference's layers (its stem also sees 1 channel); the head has 10 classes, not 12
    assert ds.count_params() == 24908 - 2 * (64 + 1)
    res = tfopt.models.get("tiny_resnet8", input_shape=(8, 8, 1))
    assert res.count_params() == 78666 - 9 * 2 * 16  # a 1-channel stem: 16 3x3 kernels fewer
    mob = tfopt.models.get(
        "tiny_mobilenet_v1_025", input_shape=(8, 8, 1), num_classes=10, softmax=True
    )
    out = mob(np.zeros((2, 8, 8, 1), "float32"), training=False)
    np.testing.assert_allclose(np.sum(out, -1), 1.0, rtol=1e-5)  # softmax=True: the reference head
    ae = tfopt.models.get("tiny_fc_autoencoder", input_shape=(40, 1))
    assert ae.output_shape == (None, 40, 1)
    with pytest.raises(ValueError, match="input_shape must be"):
        tfopt.models.get("tiny_resnet8", input_shape=(4, 4, 4, 1))
