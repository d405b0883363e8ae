"""tfmot's side of quantize_vs_tfmot.py: runs in its own process (tfmot needs tf_keras / Keras 2).

Usage: python benchmarks/_tfmot_qat.py IN.npz OUT.tflite OUT.json

IN.npz holds the training data (x_train, y_train), the float baseline's weights in the Conv2D(5x1)
form of `mnist1d_cnn2d` (w0, w1, ... in ``get_weights`` order) and the settings (epochs,
batch_size, learning_rate, seed). The script builds the tf_keras copy of `mnist1d_cnn2d`, loads the
weights, applies tfmot's default 8-bit QAT (``quantize_model``), fine-tunes with the same recipe as
tfopt's QAT, and converts it with ``Optimize.DEFAULT`` (tfmot's documented path to an int8 model).
The .tflite file is evaluated and timed by the parent process, beside the other artifacts.
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json
import sys

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras


def mnist1d_cnn2d(input_shape=(40, 1), num_classes=10, width=32, dense=128):
    conv = dict(kernel_size=(5, 1), padding="same", activation="relu")
    inputs = keras.Input(input_shape, name="input")
    x = keras.layers.Reshape((input_shape[0], 1, input_shape[1]), name="to_2d")(inputs)
    x = keras.layers.Conv2D(width, **conv, name="conv1")(x)
    x = keras.layers.Conv2D(width, strides=(2, 1), **conv, name="conv2")(x)
    x = keras.layers.Conv2D(width, strides=(2, 1), **conv, name="conv3")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(dense, activation="relu", name="fc1")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="mnist1d_cnn2d")


def main(src, dst_tflite, dst_json):
    d = np.load(src)
    weights = [d[f"w{i}"] for i in range(int(d["n_weights"]))]
    keras.utils.set_random_seed(int(d["seed"]))
    base = mnist1d_cnn2d(d["x_train"].shape[1:])
    base.set_weights(weights)
    q = tfmot.quantization.keras.quantize_model(base)
    q.compile(
        optimizer=keras.optimizers.Adam(float(d["learning_rate"])),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    q.fit(
        d["x_train"],
        d["y_train"],
        batch_size=int(d["batch_size"]),
        epochs=int(d["epochs"]),
        verbose=0,
    )
    converter = tf.lite.TFLiteConverter.from_keras_model(q)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    content = converter.convert()
    with open(dst_tflite, "wb") as f:
        f.write(content)
    out = {"versions": {"tfmot": tfmot.__version__, "tf_keras": keras.__version__}}
    with open(dst_json, "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
