"""Where a QAT training step's time goes: MobileNetV2(alpha 0.35, 96x96, batch 32), one process.

Variants, each traced with one part of QAT switched off, then timed in interleaved rounds (so
every variant sees the same machine load):
- float: the Keras model as built;
- qat: `tfopt.quantize.qat` as shipped;
- qat, no fake-quant: every fake-quant op replaced by identity (the cost of fake-quant itself);
- qat, unfused BatchNorm fold: the folded BatchNorm normalized by composite moments ops instead
  of the fused kernel (what the fused kernel saves);
Python-side per-step work is the gap between `train_on_batch` and calling the compiled train
function directly on the same batch.

Usage: python benchmarks/qat_step_profile.py [--rounds 5] [--steps 5]
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

import tfopt
from tfopt._backend import import_keras
from tfopt.quantize import _layers

keras = import_keras()
ops = keras.ops


def unfused_batch_norm(y, gamma, beta, eps):
    mean, var = ops.moments(y, tuple(range(len(y.shape) - 1)))
    return (y - mean) * (gamma / ops.sqrt(var + eps)) + beta, mean, var


def build(variant, x, y):
    keras.utils.set_random_seed(0)
    m = keras.applications.MobileNetV2(
        input_shape=x.shape[1:], alpha=0.35, weights=None, classes=10
    )
    saved = _layers.fake_quant, _layers._batch_norm
    try:
        if variant == "qat, no fake-quant":
            _layers.fake_quant = lambda t, lo, hi, **kw: t
        if variant == "qat, unfused BatchNorm fold":
            _layers._batch_norm = unfused_batch_norm
        if variant == "float":
            model = m
        else:
            model = tfopt.quantize.qat(m)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        for _ in range(3):  # traces under the patch
            model.train_on_batch(x, y)
    finally:
        _layers.fake_quant, _layers._batch_norm = saved
    return model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.random((32, 96, 96, 3), dtype="float32")
    y = np.arange(32) % 10
    variants = [
        "float",
        "qat",
        "qat, no fake-quant",
        "qat, unfused BatchNorm fold",
    ]
    models = {v: build(v, x, y) for v in variants}
    times = {v: [] for v in variants}
    direct = []
    for _ in range(args.rounds):
        for v, model in models.items():
            for _ in range(args.steps):
                t = time.perf_counter()
                model.train_on_batch(x, y)
                times[v].append(1000 * (time.perf_counter() - t))
        fn, batch = models["qat"].train_function, (x, y)
        for _ in range(args.steps):
            t = time.perf_counter()
            fn(iter([batch]))
            direct.append(1000 * (time.perf_counter() - t))
    med = {v: statistics.median(t) for v, t in times.items()}
    print(
        f"MobileNetV2(alpha 0.35, 96x96, batch 32), median ms per train_on_batch over "
        f"{args.rounds} x {args.steps} interleaved steps (load average {os.getloadavg()[0]:.1f}):"
    )
    for v in variants:
        print(f"  {v:30s} {med[v]:7.1f} ms  ({med[v] / med['float']:.2f}x float)")
    print(
        f"  qat, compiled function direct {statistics.median(direct):7.1f} ms "
        "(the rest of train_on_batch is Python-side per-step work)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
