from __future__ import annotations

import gzip
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tfopt.bench._runners import runner_for
from tfopt.bench._serve import _percentiles, load_test


def file_sizes(path) -> dict[str, int]:
    """Returns ``{"bytes": ..., "gzip_bytes": ...}`` of a file or a directory (summed)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    raw = b"".join(p.read_bytes() for p in files)
    return {"bytes": len(raw), "gzip_bytes": len(gzip.compress(raw, compresslevel=9))}


def evaluate(artifact, data, *, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``artifact`` (keras.Model or file) on ``data=(x, y)`` through its runtime."""
    return _accuracy(runner_for(artifact), data, batch_size=batch_size)


def _accuracy(runner, data, *, batch_size: int = 256) -> float:
    x, y = data
    logits = runner.predict(np.asarray(x), batch_size=batch_size)
    return float(np.mean(np.argmax(logits, axis=-1) == np.asarray(y).reshape(-1)))


@dataclass
class BenchResult:
    """What `benchmark` measured. ``to_dict()`` gives plain JSON-ready values.

    Attributes:
        artifact: the path (or the model's name).
        runtime: ``"tflite"``, ``"onnxruntime"``, ``"savedmodel"`` or ``"keras"``.
        accuracy: top-1 accuracy on the labelled data through the runtime (None without labels).
        samples: how many labelled samples the accuracy is over.
        bytes, gzip_bytes: size on disk and gzip -9 size (None for an in-memory model).
        params, macs, flops: per-sample counts; ``ops_source`` says where they come from
            (``"keras"``, ``"tflite-graph"``, ``"onnx-graph"``) or None when unavailable.
        latency_ms: single-request latency (one sample, after warm-up): p50, p90, p99, mean.
        concurrency: one `tfopt.bench.load_test` dict per concurrency level.
        load_avg: ``os.getloadavg()`` when the measurement started (the machine's load).
        robust_accuracy: accuracy under PGD at ``robust_epsilon`` through the runtime (None unless
            asked); ``robust_attack`` says how the examples were made (white-box on the Keras
            model, or transferred from the Keras model to an artifact without gradients).
    """

    artifact: str
    runtime: str
    accuracy: float | None = None
    samples: int | None = None
    bytes: int | None = None
    gzip_bytes: int | None = None
    params: int | None = None
    macs: int | None = None
    flops: int | None = None
    ops_source: str | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    concurrency: list[dict] = field(default_factory=list)
    load_avg: list[float] = field(default_factory=list)
    robust_accuracy: float | None = None
    robust_epsilon: float | None = None
    robust_attack: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _robust(result, artifact, runner, x, y, epsilon, attack_model, steps) -> None:
    from tfopt import robust
    from tfopt._backend import import_keras

    keras = import_keras()
    if y is None:
        raise ValueError("robust_epsilon needs labelled data=(x, y)")
    if isinstance(attack_model, str | Path):
        from tfopt.models import load

        attack_model = load(attack_model)
    white_box = attack_model is None
    if white_box:
        if isinstance(artifact, keras.Model):
            attack_model = artifact
        elif str(artifact).endswith(".keras"):
            from tfopt.models import load

            attack_model = load(artifact)
        else:
            raise ValueError(
                f"robust_epsilon on {artifact} needs attack_model= (the Keras model it was "
                "exported from): its runtime gives no gradients, so the PGD examples are made on "
                "the Keras model and run through the artifact (a transfer attack)"
            )
    x_adv = robust.pgd(attack_model, x, y, epsilon=epsilon, steps=steps)
    result.robust_accuracy = _accuracy(runner, (x_adv, y))
    result.robust_epsilon = float(epsilon)
    kind = "white-box" if white_box else f"transfer from Keras model {attack_model.name!r}"
    result.robust_attack = f"PGD-{steps} L-inf eps={epsilon:g}, {kind}, through {runner.runtime}"


def _latency(runner, sample: np.ndarray, *, warmup: int, runs: int) -> dict[str, float]:
    for _ in range(warmup):
        runner.invoke(sample)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        runner.invoke(sample)
        times.append((time.perf_counter() - t) * 1e3)
    return _percentiles(times)


def _counts(artifact, runner, model) -> dict:
    from tfopt.bench import _ops

    try:
        if model is not None:
            return _ops.keras_counts(model)
        if runner.runtime == "keras":
            return _ops.keras_counts(runner.model)
        if runner.runtime == "tflite":
            return _ops.tflite_counts(runner._content)
        if runner.runtime == "onnxruntime":
            return _ops.onnx_counts(runner._source)
    except Exception:  # noqa: BLE001 - counting is best effort; the rest of the benchmark stands
        return {}
    return {}


def _data(data):
    """``(x, y)``, ``x`` alone, a `tfopt.data.Dataset` (its test split) or a dataset name."""
    if data is None:
        return None, None
    if isinstance(data, str):
        from tfopt.data import load

        data = load(data)
    if hasattr(data, "test") and hasattr(data, "x_test"):
        data = data.test
    if isinstance(data, tuple | list) and len(data) == 2:
        return np.asarray(data[0], dtype="float32"), np.asarray(data[1])
    return np.asarray(data, dtype="float32"), None


def benchmark(
    artifact,
    data=None,
    *,
    concurrency=(1,),
    warmup: int = 20,
    runs: int = 200,
    micro_batch: bool = False,
    max_batch: int = 32,
    max_wait_ms: float = 0.0,
    workers: int | None = None,
    processes: int | None = None,
    requests: int = 1000,
    duration_s: float = 2.0,
    num_threads: int = 1,
    model=None,
    name: str | None = None,
    robust_epsilon: float | None = None,
    attack_model=None,
    attack_steps: int = 10,
) -> BenchResult:
    """Measures an artifact in its own runtime: accuracy, size, params/MACs, latency, throughput.

    Args:
        artifact: a ``keras.Model``, or a ``.keras`` / ``.tflite`` / ``.onnx`` file, a SavedModel
            directory or a Triton model directory.
        data: ``(x, y)`` labelled data (accuracy over all of it; latency and load use ``x``), ``x``
            alone (no accuracy), a `tfopt.data.Dataset` or a dataset name (its test split).
            Defaults to None (no accuracy; latency on zero inputs).
        concurrency: client counts for the load test, e.g. ``(1, 8, 32)``; empty to skip it.
            Defaults to (1,).
        warmup: untimed runs before the single-request timing. Defaults to 20.
        runs: timed single-sample runs. Defaults to 200.
        micro_batch: group concurrent requests into batches in the load test. Defaults to False.
        max_batch: the largest micro-batch. Defaults to 32.
        max_wait_ms: how long a micro-batch that is not full waits for more requests.
            Defaults to 0.0 (batch whatever is waiting).
        workers: interpreters/sessions in the serving pool. Defaults to
            ``min(clients, os.cpu_count())``.
        processes: replica processes the workers are spread over (see `tfopt.bench.load_test`).
            Defaults to one per worker for TFLite and ONNX files, else 1.
        requests: the most requests per concurrency level. Defaults to 1000.
        duration_s: the longest time per concurrency level. Defaults to 2.0.
        num_threads: intra-op threads per TFLite interpreter / ONNX session. Defaults to 1.
        model: the Keras model the artifact came from, to count params/MACs from Keras (otherwise
            they come from the TFLite or ONNX graph). Defaults to None.
        name: the label in tables and plots. Defaults to the path or the model's name.
        robust_epsilon: also measure accuracy under a PGD attack at this L-inf radius
            (`tfopt.robust.robust_accuracy`). Defaults to None (no attack).
        attack_model: the Keras model (or ``.keras`` path) the PGD examples are made on. For a
            Keras artifact it defaults to the artifact (white-box); exported artifacts (TFLite,
            ONNX, SavedModel) give no gradients, so their examples come from this model and run
            through the artifact's runtime (a transfer attack; the default is ``model``).
            Defaults to None.
        attack_steps: PGD steps. Defaults to 10.

    Returns:
        A `BenchResult`.

    Raises:
        ValueError: bad counts, or data whose shape does not fit the artifact.
        FileNotFoundError: the artifact does not exist.

    Example:
        >>> res = tfopt.bench.benchmark("m.tflite", (x_test, y_test), concurrency=(1, 8))
        >>> res.accuracy, res.gzip_bytes, res.latency_ms["p99"], res.concurrency[1]["throughput_rps"]
    """
    if runs < 1 or warmup < 0:
        raise ValueError(
            f"runs must be >= 1 and warmup >= 0. Received: runs={runs}, warmup={warmup}"
        )
    levels = [concurrency] if isinstance(concurrency, int) else list(concurrency or ())
    if any(not isinstance(c, int) or c < 1 for c in levels):
        raise ValueError(f"concurrency must hold ints >= 1. Received: concurrency={concurrency!r}")
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else []
    kwargs = {"num_threads": num_threads} if isinstance(artifact, str | Path) else {}
    runner = runner_for(artifact, **kwargs)
    is_file = isinstance(artifact, str | Path)
    label = name or (str(artifact) if is_file else getattr(artifact, "name", "keras.Model"))
    result = BenchResult(artifact=label, runtime=runner.runtime, load_avg=load)
    if is_file:
        sizes = file_sizes(artifact)
        result.bytes, result.gzip_bytes = sizes["bytes"], sizes["gzip_bytes"]
    counts = _counts(artifact, runner, model)
    if counts:
        result.params, result.macs, result.flops = counts["params"], counts["macs"], counts["flops"]
        result.ops_source = counts["source"]
    x, y = _data(data)
    if x is None:
        x = np.zeros((1, *runner.input_shape), dtype="float32")
    elif tuple(x.shape[1:]) != tuple(runner.input_shape):
        raise ValueError(
            f"data's samples have shape {tuple(x.shape[1:])} but {label} takes "
            f"{tuple(runner.input_shape)}"
        )
    if y is not None:
        result.accuracy = _accuracy(runner, (x, y))
        result.samples = len(y)
    if robust_epsilon is not None:
        _robust(result, artifact, runner, x, y, robust_epsilon, attack_model or model, attack_steps)
    result.latency_ms = _latency(runner, x[:1], warmup=warmup, runs=runs)
    for clients in levels:
        result.concurrency.append(
            load_test(
                runner,
                x,
                clients=clients,
                workers=workers,
                processes=processes,
                micro_batch=micro_batch,
                max_batch=max_batch,
                max_wait_ms=max_wait_ms,
                requests=requests,
                duration_s=duration_s,
            )
        )
    return result
