from __future__ import annotations

import gzip
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tfopt.bench._runners import runner_for
from tfopt.bench._serve import _percentiles, load_test
from tfopt.data._checks import (
    check_attack_radius,
    check_finite,
    check_input_shape,
    check_labels,
)


def file_sizes(path) -> dict[str, int]:
    """Returns ``{"bytes": ..., "gzip_bytes": ...}`` of a file or a directory (summed)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    raw = b"".join(p.read_bytes() for p in files)
    return {"bytes": len(raw), "gzip_bytes": len(gzip.compress(raw, compresslevel=9))}


def evaluate(artifact, data, *, batch_size: int = 256, runtime: str | None = None) -> float:
    """Top-1 accuracy of ``artifact`` (keras.Model or file) on ``data=(x, y)`` through its runtime
    (or ``runtime``, e.g. ``"tflm"``)."""
    return _accuracy(runner_for(artifact, runtime=runtime), data, batch_size=batch_size)


def check_inputs_finite(x: np.ndarray) -> None:
    """Raises `DataError` when ``x`` holds NaN or infinite values (they score as garbage)."""
    check_finite(x, "inputs", fix="clean or drop them before scoring")


def _accuracy(runner, data, *, batch_size: int = 256, logits=None) -> float:
    x, y = data
    x = np.asarray(x)
    check_inputs_finite(x)
    y = check_labels(y, len(x))
    if logits is None:
        logits = runner.predict(x, batch_size=batch_size)
    y = check_labels(
        y, len(x), num_outputs=int(np.shape(logits)[-1]), outputs_of="the artifact's outputs"
    )
    return float(np.mean(np.argmax(logits, axis=-1) == y))


FLASH_NOTE = (
    "flash_bytes is the model's flatbuffer, which a microcontroller stores as is; the TFLM "
    "library and the kernels its resolver registers add code size that depends on the MCU and "
    "toolchain and is not counted"
)


def micro_measure(content: bytes, x=None, *, runner=None, logits=None, limit: int = 1000) -> dict:
    """What TFLite Micro says about a ``.tflite`` model: its arena (peak RAM), its flash, its ops,
    and how often its argmax agrees with LiteRT's on ``x``.

    Args:
        content: the ``.tflite`` bytes.
        x: inputs to compare TFLM with LiteRT on. Defaults to None (no comparison).
        runner: a `TFLMRunner` or `TFLiteRunner` of ``content`` already built (reused).
            Defaults to None.
        logits: ``runner``'s outputs on ``x`` if already computed. Defaults to None.
        limit: compare on at most this many inputs unless ``runner`` is TFLM itself (whose
            outputs on all of ``x`` are already there). Defaults to 1000.

    Returns:
        ``{"arena_bytes", "arena": {"total", "head", "tail"}, "flash_bytes", "flash_note",
        "ops", "resolver", "tflm_agreement", "samples"}`` (``tflm_agreement``: the fraction of
        ``x`` where TFLM and LiteRT pick the same class, None without ``x``), or
        ``{"skipped": reason}`` when TFLM cannot run the model (the ops it lacks are named).

    Raises:
        MissingDependencyError: tflite-micro is not installed.
    """
    from tfopt import _tflm
    from tfopt.bench._runners import TFLiteRunner, TFLMRunner

    _tflm.import_runtime()
    runtime = getattr(runner, "runtime", None)
    try:
        tflm = runner if runtime == "tflm" else TFLMRunner(content)
    except (_tflm.UnsupportedOpsError, RuntimeError) as e:  # missing ops, or it cannot allocate
        return {"skipped": str(e), "flash_bytes": len(content)}
    facts = {
        "arena": tflm.allocations(),
        "flash_bytes": len(content),
        "flash_note": FLASH_NOTE,
        "ops": sorted(set(tflm.ops)),
        "resolver": _tflm.resolver_calls(tflm.ops),
        "tflm_agreement": None,
        "samples": 0,
    }
    facts["arena_bytes"] = facts["arena"]["total"]
    if x is not None and len(x):
        x = np.asarray(x, dtype="float32")
        mine = None if logits is None else np.asarray(logits)
        if runtime != "tflm" and len(x) > limit:  # TFLM's reference kernels are slow: a sample
            x, mine = x[:limit], None if mine is None else mine[:limit]
        litert = runner if runtime == "tflite" else TFLiteRunner(content)
        a = mine if runtime == "tflm" and mine is not None else tflm.predict(x)
        b = mine if runtime == "tflite" and mine is not None else litert.predict(x)
        facts["tflm_agreement"] = float(np.mean(a.argmax(-1) == b.argmax(-1)))
        facts["samples"] = len(x)
    return facts


def _wants_micro(micro, artifact, runner) -> bool:
    """Whether `benchmark` measures the artifact in TFLM (see its ``micro`` argument)."""
    from tfopt import _tflm

    if micro is False or not isinstance(artifact, str | Path):
        return False
    if runner.runtime == "tflm" or micro is True:
        return True
    return runner.runtime == "tflite" and _tflm.available() and _tflm.is_int8(runner._content)


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
        arena_bytes: the tensor arena (peak RAM) TFLite Micro's allocation recorder reports for a
            ``.tflite`` model (None when it was not measured in TFLM).
        flash_bytes: the model's flatbuffer bytes, its share of a microcontroller's flash
            (``micro["flash_note"]`` says what is not counted).
        micro: what `micro_measure` found (ops, resolver calls, TFLM's argmax agreement with
            LiteRT) or why TFLM was not measured (``{"skipped": reason}``); empty when not asked.
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
    arena_bytes: int | None = None
    flash_bytes: int | None = None
    micro: dict = field(default_factory=dict)
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
        if runner.runtime in ("tflite", "tflm"):
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


def _check_timing(*, runs, warmup, concurrency, max_batch, max_wait_ms) -> list[int]:
    """Refuses timing and load-test options out of range; returns the concurrency levels."""
    if runs < 1 or warmup < 0:
        raise ValueError(
            f"runs must be >= 1 and warmup >= 0. Received: runs={runs}, warmup={warmup}"
        )
    levels = [concurrency] if isinstance(concurrency, int) else list(concurrency or ())
    if any(not isinstance(c, int) or c < 1 for c in levels):
        raise ValueError(f"concurrency must hold ints >= 1. Received: concurrency={concurrency!r}")
    # checked here, not in the load test's child processes, whose error would be a traceback
    if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
        raise ValueError(f"max_batch must be an int >= 1. Received: max_batch={max_batch!r}")
    if not (isinstance(max_wait_ms, int | float) and 0 <= max_wait_ms < float("inf")):
        raise ValueError(f"max_wait_ms must be a finite number >= 0. Received: {max_wait_ms!r}")
    return levels


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
    requests: int | None = None,
    duration_s: float = 3.0,
    num_threads: int = 1,
    model=None,
    name: str | None = None,
    runtime: str | None = None,
    micro: bool | None = None,
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
        requests: the most requests per concurrency level. Defaults to None (no cap).
        duration_s: how long each concurrency level runs, in seconds. Defaults to 3.0.
        num_threads: intra-op threads per TFLite interpreter / ONNX session. Defaults to 1.
        model: the Keras model the artifact came from, to count params/MACs from Keras (otherwise
            they come from the TFLite or ONNX graph). Defaults to None.
        name: the label in tables and plots. Defaults to the path or the model's name.
        runtime: the runtime to run the artifact in (``"litert"``, ``"tflm"``, ``"onnxruntime"``,
            ...; see `tfopt.bench.RUNTIMES`). Defaults to None (the artifact's own).
        micro: measure the ``.tflite`` model in TFLite Micro too (`micro_measure`: arena bytes,
            flash bytes, argmax agreement with LiteRT on the data). Defaults to None: for int8
            models when tflite-micro is installed, and always with ``runtime="tflm"``.
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
    levels = _check_timing(runs=runs, warmup=warmup, concurrency=concurrency,
                           max_batch=max_batch, max_wait_ms=max_wait_ms)  # fmt: skip
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else []
    kwargs = {"num_threads": num_threads} if isinstance(artifact, str | Path) else {}
    runner = runner_for(artifact, runtime=runtime, **kwargs)
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
    else:
        check_input_shape(runner.input_shape, x.shape[1:], what="data", taker=label)
        check_attack_radius(robust_epsilon, x)
    logits = None
    if y is not None:
        logits = runner.predict(x)
        result.accuracy = _accuracy(runner, (x, y), logits=logits)
        result.samples = len(y)
    if _wants_micro(micro, artifact, runner):
        content = Path(artifact).read_bytes()
        sample = x if y is not None else None
        result.micro = micro_measure(content, sample, runner=runner, logits=logits)
        result.arena_bytes = result.micro.get("arena_bytes")
        result.flash_bytes = result.micro.get("flash_bytes")
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
