"""tfmot's side of fashion_vs_tfmot.py, in its own process (tfmot needs tf_keras / Keras 2).

Usage: python benchmarks/_tfmot_fashion.py IN.npz

IN.npz holds the training images (x_train, y_train), the trained float fashion_cnn's weights (w0,
w1, ... in ``get_weights`` order), the path of the model's source file (tfopt's own builder,
run against tf_keras) with its options (``model_options``, JSON: width, blocks) and the
representative images of PTQ. The process prints "ready", then
answers one JSON request per stdin line with one JSON line:

- ``{"row": {...}, "seed": S, "out": PATH}``: fine-tunes the row's technique (the same recipe the
  parent uses for tfopt: `fine_tune_subset`, epochs, batch, learning rate, schedule), converts
  it to PATH.tflite and answers ``{"sparsity": ..., "seconds": ...}`` or ``{"error": ...}``.
- ``{"time": {...}}``: one-epoch fits of each technique's model on the same small slice,
  interleaved with an unwrapped float copy; answers the per-round seconds of each.
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras

sparsity_api = tfmot.sparsity.keras
cluster_api = tfmot.clustering.keras
quant_api = tfmot.quantization.keras
combine = tfmot.experimental.combine


def fine_tune_subset(n: int, fraction: float, seed: int) -> np.ndarray:
    """The training indices of one fine-tune (the parent uses the same rule)."""
    if fraction >= 1.0:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[: int(round(fraction * n))])


class Side:
    def __init__(self, src):
        d = np.load(src)
        self.x, self.y = d["x_train"], d["y_train"]
        self.weights = [d[f"w{i}"] for i in range(int(d["n_weights"]))]
        self.representative = d["representative"]
        code = Path(str(d["model_source"])).read_text()
        code = code.replace("from tfopt._backend import import_keras\n", "").replace(
            "keras = import_keras()", "import tf_keras as keras"
        )
        namespace: dict = {}
        exec(compile(code, "model_source", "exec"), namespace)
        builder = namespace[str(d["model_name"])]
        options = json.loads(str(d["model_options"])) if "model_options" in d else {}
        self.builder = lambda: builder(**options)
        self.cache: dict = {}  # (row name, seed) -> stripped model, for PQAT / CQAT

    def float_model(self):
        model = self.builder()
        model.set_weights(self.weights)
        return model

    # -- techniques ---------------------------------------------------------------------------
    def schedule(self, row, steps):
        s = row["schedule"]
        if row.get("m_by_n"):
            return sparsity_api.ConstantSparsity(0.5, begin_step=0, frequency=s["frequency"])
        return sparsity_api.PolynomialDecay(
            initial_sparsity=0.0,
            final_sparsity=row["sparsity"],
            begin_step=s["begin_step"],
            end_step=s["end_step"],
            power=s["power"],
            frequency=s["frequency"],
        )

    def pruned(self, row):
        extra = {"sparsity_m_by_n": tuple(row["m_by_n"])} if row.get("m_by_n") else {}
        return sparsity_api.prune_low_magnitude(
            self.float_model(), pruning_schedule=self.schedule(row, None), **extra
        )

    def clustered(self, row):
        return cluster_api.cluster_weights(
            self.float_model(),
            number_of_clusters=row["clusters"],
            cluster_centroids_init=cluster_api.CentroidInitialization.KMEANS_PLUS_PLUS,
        )

    def preserving_qat(self, row, base):
        annotated = quant_api.quantize_annotate_model(base)
        if row["kind"] == "pqat":
            scheme = combine.Default8BitPrunePreserveQuantizeScheme()
        else:
            scheme = combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=False)
        return quant_api.quantize_apply(annotated, scheme)

    def wrapped(self, row, seed):
        """The row's model before fine-tuning and its fit callbacks (seed None: for timing)."""
        kind = row["kind"]
        if kind == "prune":
            return self.pruned(row), [sparsity_api.UpdatePruningStep()]
        if kind == "cluster":
            return self.clustered(row), []
        if kind == "qat":
            return quant_api.quantize_model(self.float_model()), []
        if kind in ("pqat", "cqat"):
            base = self.timing_base(row) if seed is None else self.prerequisite(row["base"], seed)
            return self.preserving_qat(row, base), []
        if kind == "float":
            return self.float_model(), []
        raise ValueError(f"unknown row kind {kind!r}")

    def timing_base(self, row):
        """A model shaped like PQAT's / CQAT's input without fine-tuning one (step time only)."""
        model = self.builder()
        model.set_weights([synthetic_base(w, row["kind"]) for w in self.weights])
        return model

    def prerequisite(self, row, seed):
        key = (row["name"], seed)
        if key not in self.cache:
            self.cache[key] = self.fine_tuned(row, seed)[0]
        return self.cache[key]

    def fine_tuned(self, row, seed):
        """Fine-tunes the row's model; returns (stripped model, quantized?)."""
        keras.utils.set_random_seed(seed)
        model, callbacks = self.wrapped(row, seed)
        f = row["fine_tune"]
        idx = fine_tune_subset(len(self.x), f["fraction"], seed)
        model.compile(
            optimizer=keras.optimizers.Adam(f["learning_rate"]),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        model.fit(
            self.x[idx],
            self.y[idx],
            batch_size=f["batch_size"],
            epochs=f["epochs"],
            verbose=0,
            callbacks=callbacks,
        )
        if row["kind"] == "prune":
            return sparsity_api.strip_pruning(model), False
        if row["kind"] == "cluster":
            return cluster_api.strip_clustering(model), False
        return model, True

    def convert(self, model, quantized: bool, *, ptq: bool = False) -> bytes:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        if quantized or ptq:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if ptq:

            def representative():
                for x in self.representative:
                    yield [x[None].astype("float32")]

            converter.representative_dataset = representative
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        return converter.convert()

    def run_row(self, row, seed, out):
        started = time.perf_counter()
        if row["kind"] == "ptq":
            model, quantized = self.float_model(), False
            content = self.convert(model, False, ptq=True)
        else:
            model, quantized = self.fine_tuned(row, seed)
            if row["kind"] in ("prune", "cluster"):
                self.cache[(row["name"], seed)] = model
            content = self.convert(model, quantized)
        Path(out).write_bytes(content)
        return {"sparsity": kernel_sparsity(model), "seconds": time.perf_counter() - started}

    # -- train-step time ----------------------------------------------------------------------
    def time_steps(self, spec):
        """Per-round seconds of a one-epoch fit on the same slice, each model interleaved."""
        n = spec["steps"] * spec["batch_size"]
        x, y = self.x[:n], self.y[:n]
        models = {"float": (self.float_model(), [])}
        for row in spec["rows"]:
            models[row["name"]] = self.wrapped(row, None)
        for model, _ in models.values():
            model.compile(
                optimizer=keras.optimizers.Adam(1e-4),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
        seconds = {k: [] for k in models}
        keys = list(models)
        for r in range(spec["rounds"] + 1):  # round 0 warms up (tracing)
            for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
                model, callbacks = models[k]
                t = time.perf_counter()
                model.fit(
                    x, y, batch_size=spec["batch_size"], epochs=1, verbose=0, callbacks=callbacks
                )
                if r:
                    seconds[k].append(time.perf_counter() - t)
        return {"seconds": seconds}


def synthetic_base(w, kind):
    """Kernels with half their weights zeroed (pqat) or snapped to 16 levels (cqat)."""
    if w.ndim < 2:
        return w
    if kind == "pqat":
        return np.where(np.abs(w) >= np.median(np.abs(w)), w, 0.0).astype(w.dtype)
    levels = np.linspace(w.min(), w.max(), 16)
    return levels[np.abs(w[..., None] - levels).argmin(-1)].astype(w.dtype)


def kernel_sparsity(model) -> float:
    kernels = [w.numpy() for w in model.weights if "kernel" in w.name and "quantize" not in w.name]
    return float(sum(int((k == 0).sum()) for k in kernels) / sum(k.size for k in kernels))


def main(src):
    side = Side(src)
    print(json.dumps({"ready": True, "tfmot": tfmot.__version__, "tf_keras": keras.__version__}))
    sys.stdout.flush()
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if "time" in request:
                answer = side.time_steps(request["time"])
            else:
                answer = side.run_row(request["row"], request["seed"], request["out"])
        except Exception as e:  # a refused model or a failed conversion is a row's result
            traceback.print_exc(file=sys.stderr)
            answer = {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"}
        print(json.dumps(answer))
        sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1])
