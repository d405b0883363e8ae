"""Run in a subprocess by tests/test_train.py: real tf.distribute on CPU (not collected by pytest).

``python tests/_distributed.py mirrored OUT.json``: two logical CPU devices, a baseline fit and the
prune -> qat (distilled fine-tuning) -> distill recipe under `MirroredStrategy`.
``python tests/_distributed.py multi_worker OUT.json`` (TF_CONFIG set by the test): one worker of
a two-process `MultiWorkerMirroredStrategy`; writes its weights after one epoch.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
mode, out = sys.argv[1], sys.argv[2]
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

if mode == "mirrored":  # before TensorFlow initializes its devices
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import numpy as np  # noqa: E402

from tfopt import train  # noqa: E402

strategy = train.make_strategy(mode)  # first TF work of the process (multi_worker needs that)

import keras  # noqa: E402

from tfopt import config, data  # noqa: E402
from tfopt._steps import StepContext, run_steps  # noqa: E402

rng = np.random.RandomState(0)
x = rng.randn(320, 8).astype("float32")
y = (x[:, 0] + x[:, 1] > 0).astype("int32")
ds = data.from_arrays(x, y, seed=0)


def build():
    return keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="relu", name="fc"),
            keras.layers.Dense(2, name="logits"),
        ]
    )


ctx = StepContext(data=ds, run_dir="unused", batch_size=32, verbose=0, tensorboard=False)
ctx.strategy = strategy
keras.utils.set_random_seed(0)
with ctx.scope():
    model = build()
    ctx.fit(model, epochs=1, learning_rate=1e-2)


def replicas(variable):
    """Every replica's copy of a Keras variable, as NumPy arrays."""
    return [np.asarray(v) for v in strategy.experimental_local_results(variable.value)]


def in_sync(model) -> bool:
    return all(
        all(np.array_equal(r[0], other) for other in r[1:])
        for r in (replicas(v) for v in model.variables)
    )


result = {
    "replicas": strategy.num_replicas_in_sync,
    "worker": train.is_chief(strategy),
    "baseline_distributed": type(model.variables[0].value).__name__,
}
if mode == "mirrored":
    ctx.baseline = model
    steps = config.validate_steps(
        [
            {"type": "prune", "target_sparsity": 0.5, "schedule": "constant", "epochs": 1},
            {"type": "qat", "epochs": 1, "distill": {"temperature": 2.0, "alpha": 0.5}},
        ]
    )
    seen = {}
    pruned = run_steps(steps[:1], model, ctx)
    seen["prune_sparsity"] = float(np.mean(np.asarray(pruned.get_layer("fc").kernel.value) == 0.0))
    seen["prune_in_sync"] = in_sync(pruned)
    q = run_steps(steps[1:], pruned, ctx)
    ranges = [v for v in q.variables if v.path.endswith(("/min", "/max"))]
    seen["qat_ranges"] = len(ranges)
    seen["qat_in_sync"] = in_sync(q)
    seen["qat_range_spread"] = float(max(np.ptp(np.stack(replicas(v))) for v in ranges))
    d = run_steps(
        config.validate_steps([{"type": "distill", "student": None, "epochs": 1}]), pruned, ctx
    )
    seen["distill_in_sync"] = in_sync(d)
    seen["distill_distributed"] = type(d.variables[0].value).__name__
    # models built under the strategy export (TFLite reads the mirrored variables)
    from tfopt import export

    art = export.export(
        pruned,
        os.path.join(os.path.dirname(out), "pruned.tflite"),
        format="tflite",
        check_data=x[:64],
    )
    seen["tflite_agreement"] = float(art.check["argmax_agreement"])
    result.update(seen)
else:
    result["weights"] = [np.asarray(w).tolist() for w in model.get_weights()]
    result["in_sync"] = in_sync(model)
with open(out, "w") as f:
    json.dump(result, f)
