"""Where a search process's memory goes: resident growth per repetition of one piece of a trial.

`benchmarks/auto_memory.py` shows `tfopt auto`'s search process growing ~35 MB a trial while the
converter's worker stays flat. This repeats each piece of a trial in one process and prints its
growth per repetition (after ``gc.collect()``): measuring a .tflite file in LiteRT, in TFLite
Micro, predicting through tfopt's runner, and building + fitting + predicting a Keras model after
``keras.backend.clear_session()`` (what every trial does, several times).

    python benchmarks/trial_memory.py [--repeats 8] [--tflite FILE]

Without ``--tflite`` an int8 file of the zoo's mnist1d_cnn is made first.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--tflite", default=None, help="a .tflite file for the (40, 1) input")
    args = ap.parse_args()
    import keras

    import tfopt
    from tfopt import bench
    from tfopt._worker import rss_mb
    from tfopt.bench._runners import runner_for

    x = np.random.default_rng(0).normal(size=(400, 40, 1)).astype("float32")
    y = np.zeros(400, "int64")
    path = args.tflite
    if path is None:
        path = str(Path(tempfile.mkdtemp()) / "m.tflite")
        tfopt.export.tflite(tfopt.models.get("mnist1d_cnn"), path, quantization="int8",
                            representative_data=x[:100])  # fmt: skip

    def keras_cycle():
        keras.backend.clear_session()
        gc.collect()
        m = tfopt.models.get("mnist1d_cnn")
        m.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        m.fit(x, y, epochs=1, batch_size=64, verbose=0)
        m.predict(x, verbose=0)

    pieces = {
        "LiteRT benchmark": lambda: bench.benchmark(path, data=(x, y), concurrency=()),
        "TFLite Micro benchmark": lambda: bench.benchmark(
            path, data=(x, y), concurrency=(), micro=True
        ),
        "runner predict": lambda: runner_for(path).predict(x),
        "Keras build + fit + predict": keras_cycle,
    }
    for name, piece in pieces.items():
        piece()
        gc.collect()
        start = rss_mb()
        for _ in range(args.repeats):
            piece()
            gc.collect()
        print(f"{name}: {(rss_mb() - start) / args.repeats:+.1f} MB per repetition", flush=True)


if __name__ == "__main__":
    main()
