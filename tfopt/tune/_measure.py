"""Export a candidate to TFLite and measure it through the exported file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tfopt.errors import TfoptError


class ExportFailed(TfoptError):
    """A candidate could not be exported (converter error or a failed parity check)."""


def export_and_measure(
    model,
    path,
    *,
    quantization: str,
    representative,
    val,
    test=None,
    latency_runs: int = 50,
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

    Returns:
        A dict with ``val_accuracy``, ``test_accuracy`` (or None), ``bytes``, ``gzip_bytes``,
        ``latency_ms`` (p50) and ``export_check``.

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
        )
    except Exception as e:  # converter errors, ExportCheckError, unsupported layers
        raise ExportFailed(
            f"export to tflite ({quantization}) failed: {type(e).__name__}: {e}"
        ) from e
    result = bench.benchmark(str(path), data=val, warmup=5, runs=latency_runs)
    test_acc = bench.evaluate(str(path), test) if test is not None else None
    return {
        "val_accuracy": float(result.accuracy),
        "test_accuracy": None if test_acc is None else float(test_acc),
        "bytes": int(result.bytes),
        "gzip_bytes": int(result.gzip_bytes),
        "latency_ms": float(result.latency_ms["p50"]),
        "export_check": {
            k: art.check[k] for k in ("argmax_agreement", "max_abs_diff") if k in art.check
        },
        "path": str(Path(path)),
    }
