"""The one candidate runner's tail: export a model through the formats table, then measure the
artifact in its runtime (accuracy, sizes, latency, and RAM / flash where TFLite Micro runs it).

`tfopt run` (every artifact of ``export.formats``), `tfopt tune` trials, `tfopt auto` (its
baseline, trials and refinement runs) all export and measure through `export_and_measure`, so a
searched ``recipe.yaml`` replays the exporter as well as the steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfopt import _formats as formats
from tfopt.errors import MissingDependencyError, OutputDirError, TfoptError
from tfopt.export._common import Artifact


class ExportFailed(TfoptError):
    """A candidate could not be exported (converter error or a failed parity check), or its
    target runtime cannot run it."""


@dataclass
class Measurement:
    """What `export_and_measure` made and measured.

    Attributes:
        artifact: the exported `Artifact` (its parity check in ``artifact.check``).
        result: the `tfopt.bench.BenchResult` of the artifact on ``val``.
        metrics: the flat record a search keeps (JSON-able; see `export_and_measure`).
    """

    artifact: Artifact
    result: object
    metrics: dict


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


def export_artifact(
    model, path, *, format: str, representative=None, check_data=None, overwrite: bool = False
) -> Artifact:
    """`tfopt.export.export` in ``format`` (its exporter and fixed options from the formats
    table: ``tflm`` is the int8 model with batch 1 and its C sources), calibrated on
    ``representative`` when the format calibrates, parity-checked on ``check_data`` (default:
    the first 256 representative inputs).

    Raises:
        ExportFailed: the converter failed, the artifact disagrees with the Keras model, or the
            target runtime lacks an op. A refused ``path`` (`OutputDirError`) and a missing
            package (`MissingDependencyError`) are not a candidate's failure: they propagate.
    """
    from tfopt import export

    fmt = formats.get(format)
    options = {}
    if representative is not None:
        rep = np.asarray(representative, dtype="float32")
        if fmt.calibrates:
            options["representative_data"] = rep
        options["check_data"] = rep[:256]
    if check_data is not None:
        options["check_data"] = check_data
    try:
        return export.export(model, path, format=fmt.name, overwrite=overwrite, **options)
    except (OutputDirError, MissingDependencyError):
        raise
    except Exception as e:  # converter errors, ExportCheckError, unsupported layers or ops
        raise ExportFailed(f"export to {fmt.name} failed: {type(e).__name__}: {e}") from e


def export_and_measure(
    model,
    path,
    *,
    format: str,
    val,
    representative=None,
    test=None,
    check_data=None,
    robust_epsilon: float | None = None,
    overwrite: bool = False,
    **bench_options,
) -> Measurement:
    """Exports ``model`` to ``path`` in ``format`` and measures the artifact in its runtime.

    Args:
        model: the Keras model to export (its params/MACs are counted from it).
        path: the file (or directory, for the directory formats) to write.
        format: a `tfopt.export.FORMATS` name (``"tflite-int8"``, ``"tflm"``, ``"onnx"``, ...).
        val: ``(x, y)``: the accuracy measured (``val_accuracy``, ``result.accuracy``).
        representative: training inputs that calibrate the formats that calibrate (and, without
            ``check_data``, the parity check's first 256 inputs). Defaults to None.
        test: ``(x, y)`` also measured, as ``test_accuracy``. Defaults to None.
        check_data: the parity check's inputs. Defaults to None (see ``representative``).
        robust_epsilon: also measure ``robust_accuracy`` on ``val``: PGD examples at this L-inf
            radius, made on ``model`` (the artifact's runtime gives no gradients) and run through
            the artifact. Defaults to None (not measured).
        overwrite: replace an existing ``path``. Defaults to False (refused).
        **bench_options: passed to `tfopt.bench.benchmark` (``warmup``, ``runs``,
            ``concurrency``, ``micro``, ...).

    Returns:
        A `Measurement`. Its ``metrics``: ``val_accuracy``, ``test_accuracy`` (or None),
        ``val_correct`` and ``test_correct`` (which samples it got right, `pack_correct`),
        ``bytes``, ``gzip_bytes``, ``latency_ms`` (p50), ``export_check``, ``path``,
        ``runtime``, ``robust_accuracy`` / ``robust_attack`` with ``robust_epsilon``, and what
        TFLite Micro measured (int8 models when tflite-micro is installed, always for ``tflm``):
        ``arena_bytes``, ``flash_bytes``, ``tflm_agreement``, or ``tflm_note`` saying why not.

    Raises:
        ExportFailed: see `export_artifact`; also when the target runtime cannot run the file.
    """
    from tfopt import bench
    from tfopt._tflm import UnsupportedOpsError

    art = export_artifact(
        model,
        path,
        format=format,
        representative=representative,
        check_data=check_data,
        overwrite=overwrite,
    )
    runtime = "tflm" if formats.get(format).runtime == "tflm" else None
    try:
        result = bench.benchmark(
            str(path),
            data=val,
            model=model,
            runtime=runtime,
            robust_epsilon=robust_epsilon,
            attack_model=model if robust_epsilon is not None else None,
            **bench_options,
        )
    except UnsupportedOpsError as e:  # the target runtime cannot run it: a failed candidate
        raise ExportFailed(str(e)) from e
    return Measurement(art, result, _metrics(art, result, path, val, test, runtime))


def _metrics(art: Artifact, result, path, val, test, runtime: str | None) -> dict:
    """The flat record of a measured artifact (see `export_and_measure`)."""
    # which samples it gets right: a search compares it with the baseline on the same samples
    val_right = correctness(path, val, runtime=runtime)
    test_right = None if test is None else correctness(path, test, runtime=runtime)
    robust = {}
    if result.robust_accuracy is not None:
        robust = {
            "robust_accuracy": float(result.robust_accuracy),
            "robust_attack": result.robust_attack,
        }
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
        **robust,
        **_micro_metrics(result),
    }
