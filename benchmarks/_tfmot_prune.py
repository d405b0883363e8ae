"""tfmot's side of prune_vs_tfmot.py: runs in its own process (tfmot needs tf_keras / Keras 2).

Usage: python benchmarks/_tfmot_prune.py IN.npz OUT.json

IN.npz holds the data (x_train, y_train, x_test, y_test), the float baseline's weights (w0, w1, ...
in ``get_weights`` order) and the settings (epochs, batch_size, learning_rate, final_sparsity,
end_step, frequency, power, timing_rounds, seeds). The script builds a tf_keras copy of `mnist1d_cnn`, loads
the weights, prunes it with tfmot's prune_low_magnitude + PolynomialDecay + UpdatePruningStep,
fine-tunes and strips once per seed, converts the first to float TFLite, and times training epochs of the pruned model against
an unpruned copy, interleaved in this process.
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import gzip
import json
import statistics
import sys
import time

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras


def mnist1d_cnn(input_shape=(40, 1), num_classes=10, width=32, dense=128):
    conv = dict(kernel_size=5, padding="same", activation="relu")
    inputs = keras.Input(input_shape, name="input")
    x = keras.layers.Conv1D(width, **conv, name="conv1")(inputs)
    x = keras.layers.Conv1D(width, strides=2, **conv, name="conv2")(x)
    x = keras.layers.Conv1D(width, strides=2, **conv, name="conv3")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(dense, activation="relu", name="fc1")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="mnist1d_cnn")


def compile_model(model, lr):
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def main(src, dst):
    d = np.load(src)
    weights = [d[f"w{i}"] for i in range(int(d["n_weights"]))]
    epochs, batch = int(d["epochs"]), int(d["batch_size"])
    lr = float(d["learning_rate"])

    def schedule():
        return tfmot.sparsity.keras.PolynomialDecay(
            initial_sparsity=0.0,
            final_sparsity=float(d["final_sparsity"]),
            begin_step=0,
            end_step=int(d["end_step"]),
            power=float(d["power"]),
            frequency=int(d["frequency"]),
        )

    def pruned_copy():
        base = mnist1d_cnn(d["x_train"].shape[1:])
        base.set_weights(weights)
        model = tfmot.sparsity.keras.prune_low_magnitude(base, pruning_schedule=schedule())
        compile_model(model, lr)
        return model

    # One pruned run per seed (the seed sets initial shuffling and dropout); the file sizes are
    # those of the first seed's model.
    accs, sparsities, wrong = [], [], []
    for i, seed in enumerate(np.atleast_1d(d["seeds"])):
        keras.utils.set_random_seed(int(seed))
        model = pruned_copy()
        model.fit(
            d["x_train"],
            d["y_train"],
            batch_size=batch,
            epochs=epochs,
            verbose=0,
            callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
        )
        stripped = tfmot.sparsity.keras.strip_pruning(model)
        compile_model(stripped, lr)
        accs.append(float(stripped.evaluate(d["x_test"], d["y_test"], verbose=0)[1]))
        predicted = stripped.predict(d["x_test"], verbose=0).argmax(-1)
        wrong.append(np.flatnonzero(predicted != d["y_test"]).tolist())  # for paired deltas
        kernels = [w for layer in stripped.layers for w in layer.weights if "kernel" in w.name]
        zeros = sum(int(np.sum(w.numpy() == 0)) for w in kernels)
        sparsities.append(zeros / sum(int(w.numpy().size) for w in kernels))
        if i == 0:
            tflite = tf.lite.TFLiteConverter.from_keras_model(stripped).convert()
            gz = len(gzip.compress(tflite, compresslevel=9))

    # Train-step time: pruned vs unpruned copy, one epoch each, interleaved, after a warm-up epoch.
    timed = pruned_copy()
    dense = mnist1d_cnn(d["x_train"].shape[1:])
    dense.set_weights(weights)
    compile_model(dense, lr)
    x, y = d["x_train"], d["y_train"]
    cb = [tfmot.sparsity.keras.UpdatePruningStep()]
    timed.fit(x, y, batch_size=batch, epochs=1, verbose=0, callbacks=cb)
    dense.fit(x, y, batch_size=batch, epochs=1, verbose=0)
    t_pruned, t_dense = [], []
    for r in range(int(d["timing_rounds"])):
        for which in ("dense", "pruned") if r % 2 == 0 else ("pruned", "dense"):
            t = time.perf_counter()
            if which == "dense":
                dense.fit(x, y, batch_size=batch, epochs=1, verbose=0)
                t_dense.append(time.perf_counter() - t)
            else:
                timed.fit(x, y, batch_size=batch, epochs=1, verbose=0, callbacks=cb)
                t_pruned.append(time.perf_counter() - t)
    steps = int(np.ceil(len(x) / batch))
    out = {
        "accuracies": accs,
        "wrong": wrong,
        "sparsities": sparsities,
        "tflite_bytes": len(tflite),
        "tflite_gzip_bytes": gz,
        "epoch_seconds_pruned": min(t_pruned),
        "epoch_seconds_dense": min(t_dense),
        "step_ms_pruned": 1000 * min(t_pruned) / steps,
        "step_ms_dense": 1000 * min(t_dense) / steps,
        "step_time_ratio": min(t_pruned) / min(t_dense),
        "step_time_ratio_median_paired": statistics.median(
            p / q for p, q in zip(t_pruned, t_dense)
        ),
        "versions": {"tfmot": tfmot.__version__, "tf_keras": keras.__version__},
    }
    with open(dst, "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
