"""Export a candidate to TFLite and measure it through the exported file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tfopt._tflm import UnsupportedOpsError
from tfopt.errors import TfoptError


class ExportFailed(TfoptError):
    """A candidate could not be exported (converter error or a failed parity check)."""


def pack_correct(correct) -> str:
    """Per-sample correctness (bools) as a hex string, 1 bit a sample (a record stays small)."""
    return np.packbits(np.asarray(correct, dtype=bool)).tobytes().hex()


def unpack_correct(packed: str, n: int) -> np.ndarray:
    """The ``n`` bools `pack_correct` packed."""
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(packed), dtype=np.uint8))
    return bits[:n].astype(bool)


def correctness(path, data, *, runtime: str | None = None) -> dict:
    """``{"accuracy", "n", "correct"}``: ``path``'s accuracy on ``data=(x, y)`` through its
    runtime and which samples it got right (`pack_correct`), for paired comparisons
    (`tfopt._stats.paired_delta`) of two artifacts on the same samples."""
    from tfopt._stats import correct
    from tfopt.bench._bench import check_labels
    from tfopt.bench._runners import runner_for

    x, y = np.asarray(data[0], dtype="float32"), data[1]
    right = correct(runner_for(str(path), runtime=runtime).predict(x), check_labels(y, len(x)))
    return {"accuracy": float(right.mean()), "n": len(right), "correct": pack_correct(right)}


def _micro_metrics(result) -> dict:
    """What TFLite Micro measured of a benchmark ``result`` (arena, flash, agreement with
    LiteRT), or its flash bytes and why TFLite Micro did not run it."""
    micro = result.micro
    if micro:
        return {
            "arena_bytes": micro.get("arena_bytes"),
            "flash_bytes": micro.get("flash_bytes"),
            "tflm_agreement": micro.get("tflm_agreement"),
            "tflm_note": micro.get("skipped"),
        }
    from tfopt import _tflm

    why = (
        "tflite-micro is not installed (pip install tflite-micro)"
        if not _tflm.available()
        else "not an int8 model: TFLite Micro is measured for int8 models"
    )
    return {"flash_bytes": int(result.bytes), "tflm_note": why}


def export_and_measure(
    model,
    path,
    *,
    quantization: str,
    representative,
    val,
    test=None,
    latency_runs: int = 50,
    runtime: str | None = None,
    fixed_batch: int | None = None,
    robust_epsilon: float | None = None,
) -> dict:
    """Exports ``model`` to ``path`` and measures the file: accuracy, sizes, latency.

    Args:
        model: the Keras model to export.
        path: the ``.tflite`` file to write.
        quantization: the `tfopt.export.tflite` quantization mode.
        representative: calibration inputs (also used for the export's parity check).
        val: ``(x, y)``: the accuracy that the search sees (``val_accuracy``).
        test: ``(x, y)`` measured and reported as ``test_accuracy``. Defaults to None.
        latency_runs: timed single-sample invocations. Defaults to 50.
        runtime: the runtime accuracy and latency are measured in (``"tflm"`` for TFLite Micro).
            Defaults to None (LiteRT).
        fixed_batch: convert with this fixed batch size (`tfopt.export.tflite`; the ``tflm``
            target uses 1, as `tfopt.export.tflm` does). Defaults to None (dynamic).
        robust_epsilon: also measure ``robust_accuracy`` on ``val``: PGD examples at this L-inf
            radius, made on ``model`` (the artifact's runtime gives no gradients) and run through
            the artifact; ``robust_attack`` says so. Defaults to None (not measured).

    Returns:
        A dict with ``val_accuracy``, ``test_accuracy`` (or None), ``val_correct`` and
        ``test_correct`` (which samples it got right, `pack_correct`), ``bytes``, ``gzip_bytes``,
        ``latency_ms`` (p50), ``export_check``, ``runtime``, and what TFLite Micro measured
        (for int8 models when tflite-micro is installed, and always with ``runtime="tflm"``):
        ``arena_bytes``, ``flash_bytes``, ``tflm_agreement`` (its argmax agreement with LiteRT
        on ``val``), or ``tflm_note`` saying why it was not measured.

    Raises:
        ExportFailed: the converter failed or the artifact disagrees with the Keras model.
    """
    from tfopt import bench, export

    rep = np.asarray(representative, dtype="float32")
    try:
        art = export.tflite(
            model,
            path,
            quantization=quantization,
            representative_data=rep,
            check_data=rep[:256],
            fixed_batch=fixed_batch,
        )
    except Exception as e:  # converter errors, ExportCheckError, unsupported layers
        raise ExportFailed(
            f"export to tflite ({quantization}) failed: {type(e).__name__}: {e}"
        ) from e
    try:
        result = bench.benchmark(
            str(path),
            data=val,
            warmup=5,
            runs=latency_runs,
            runtime=runtime,
            robust_epsilon=robust_epsilon,
            attack_model=model if robust_epsilon is not None else None,
        )
    except UnsupportedOpsError as e:  # the target runtime cannot run it: a failed candidate
        raise ExportFailed(str(e)) from e
    # which samples it gets right: the search compares it with the baseline on the same samples
    val_right = correctness(path, val, runtime=runtime)
    test_right = None if test is None else correctness(path, test, runtime=runtime)
    tflm = _micro_metrics(result)
    return {
        "val_accuracy": float(result.accuracy),
        "test_accuracy": None if test_right is None else test_right["accuracy"],
        "val_correct": val_right["correct"],
        "test_correct": None if test_right is None else test_right["correct"],
        "bytes": int(result.bytes),
        "gzip_bytes": int(result.gzip_bytes),
        "latency_ms": float(result.latency_ms["p50"]),
        "export_check": {
            k: art.check[k] for k in ("argmax_agreement", "max_abs_diff") if k in art.check
        },
        "path": str(Path(path)),
        "runtime": result.runtime,
        **(
            {
                "robust_accuracy": float(result.robust_accuracy),
                "robust_attack": result.robust_attack,
            }
            if robust_epsilon is not None
            else {}
        ),
        **tflm,
    }
