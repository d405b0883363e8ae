"""tfmot's side of qat_real_models.py, in its own process (tfmot needs tf_keras / Keras 2).

Usage:
    python benchmarks/_tfmot_real.py qat IN.npz OUT.tflite OUT.json
        IN.npz: x_train, y_train, the float model's weights (w0, w1, ... in get_weights order),
        model (its name), epochs, batch_size, learning_rate, seed. Builds the same architecture
        in tf_keras, loads the weights, applies ``quantize_model`` (tfmot's default 8-bit QAT),
        fine-tunes with the same recipe as tfopt's QAT and converts with Optimize.DEFAULT.
        OUT.json gets {"error": ...} when tfmot does not accept the model.
    python benchmarks/_tfmot_real.py step
        Builds MobileNetV2(alpha 0.35, 96x96), quantize_model, compiles it, prints "ready"; then
        for each line N read from stdin runs N training steps (batch 32) and prints their times
        in ms, so the parent can interleave them with its own float and tfopt QAT steps.
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json
import sys
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras


def settle_batchnorm(model, momentum=0.9):
    """keras.applications' BatchNorm momentum (0.999) leaves the inference statistics unsettled
    after a few epochs on ~1,300 images (accuracy stays at chance): use tfopt's builders' 0.9."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum
    return model


def build(name, input_shape, num_classes):
    if name == "mobilenet_v2":
        return settle_batchnorm(
            keras.applications.MobileNetV2(
                input_shape=input_shape, alpha=0.35, weights=None, classes=num_classes
            )
        )
    if name == "mobilenet_v3_small":
        return settle_batchnorm(
            keras.applications.MobileNetV3Small(
                input_shape=input_shape,
                alpha=0.35,
                weights=None,
                classes=num_classes,
                include_preprocessing=False,
            )
        )
    # tfopt's own builders: the same source, run against tf_keras
    src = (Path(__file__).resolve().parent.parent / "tfopt" / "models" / "_cnn.py").read_text()
    src = src.replace("from tfopt._backend import import_keras\n", "").replace(
        "keras = import_keras()", "import tf_keras as keras"
    )
    namespace: dict = {}
    exec(compile(src, "_cnn.py", "exec"), namespace)
    return namespace["CNN_FAMILIES"][name](input_shape, num_classes)


def _sentence(e) -> str:
    """The first sentence of an exception's message (tfmot's run to a paragraph)."""
    return str(e).strip().splitlines()[0].split(". ")[0][:160]


def qat(src, dst_tflite, dst_json):
    d = np.load(src)
    keras.utils.set_random_seed(int(d["seed"]))
    base = build(str(d["model"]), d["x_train"].shape[1:], 10)
    base.set_weights([d[f"w{i}"] for i in range(int(d["n_weights"]))])
    out = {"versions": {"tfmot": tfmot.__version__, "tf_keras": keras.__version__}}
    try:
        q = tfmot.quantization.keras.quantize_model(base)
    except Exception as e:  # tfmot rejects layers it does not know (e.g. TFOpLambda)
        out["error"] = _sentence(e)
        Path(dst_json).write_text(json.dumps(out))
        return
    q.compile(
        optimizer=keras.optimizers.Adam(float(d["learning_rate"])),
        loss="sparse_categorical_crossentropy",
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
    try:
        Path(dst_tflite).write_bytes(converter.convert())
    except Exception as e:
        out["error"] = f"conversion failed: {_sentence(e)}"
    Path(dst_json).write_text(json.dumps(out))


def step():
    keras.utils.set_random_seed(0)
    m = keras.applications.MobileNetV2(
        input_shape=(96, 96, 3), alpha=0.35, weights=None, classes=10
    )
    q = tfmot.quantization.keras.quantize_model(m)
    q.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).random((32, 96, 96, 3), dtype="float32")
    y = np.arange(32) % 10
    for _ in range(3):
        q.train_on_batch(x, y)
    print("ready", flush=True)
    for line in sys.stdin:
        times = []
        for _ in range(int(line)):
            t = time.perf_counter()
            q.train_on_batch(x, y)
            times.append(1000 * (time.perf_counter() - t))
        print(json.dumps(times), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "step":
        step()
    else:
        qat(*sys.argv[2:5])
