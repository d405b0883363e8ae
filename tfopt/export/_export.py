"""`export(model, path, format=...)`: one entry point for every format."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

from tfopt import _formats as formats
from tfopt.export._common import Artifact


def check_format(format: str) -> str:
    """Returns ``format`` if it is supported, else raises a ValueError with a did-you-mean."""
    return formats.get(format).name


def default_path(model_path, format: str) -> Path:
    """Where `tfopt export` writes ``format`` for ``model_path`` (``m.keras`` -> ``m_int8.tflite``)."""
    fmt = formats.get(format)
    stem = Path(model_path).with_suffix("")
    return stem.parent / f"{stem.name}{fmt.tag}{fmt.suffix}"


def export(model, path, *, format: str = "tflite", **options) -> Artifact:
    """Exports a Keras model in ``format`` and checks the artifact against the Keras model.

    Every format's artifact is run on sample inputs (``check_data``, else the representative data,
    else random normals) and compared with ``model.predict``: the argmax agreement and the max abs
    difference must be within the format's tolerance (in `tfopt.export.FORMATS`, the formats
    table), else an `ExportCheckError` is raised, unless you relax ``min_agreement=`` / ``atol=``. The check's
    numbers are in ``Artifact.check``.

    Args:
        model: a Keras 3 model.
        path: the output file (``.tflite``, ``.onnx``, ``.engine``) or directory (``savedmodel``,
            and for ``triton`` the model repository).
        format: one of `FORMATS`: ``"tflite"`` (float32), ``"tflite-float16"``,
            ``"tflite-dynamic"``, ``"tflite-int8"``, ``"tflite-int16x8"``, ``"onnx"``,
            ``"savedmodel"``, ``"triton"``, ``"tensorrt"`` (fp16 unless ``precision=``),
            ``"tensorrt-fp16"``, ``"tensorrt-int8"``. Defaults to "tflite".
        **options: the format function's options (see `tflite`, `onnx`, `savedmodel`, `triton`,
            `tensorrt`), e.g. ``representative_data=``, ``opset=``, ``check_data=``,
            ``min_agreement=``, ``atol=``.

    Returns:
        The `Artifact`.

    Raises:
        ValueError: an unknown format (listing the supported ones), or an option the format
            does not take.
        ExportCheckError: the artifact disagrees with the Keras model beyond the tolerance.
        MissingDependencyError: the format needs a package that is not installed (``tensorrt``).

    Example:
        >>> art = tfopt.export.export(model, "m.tflite", format="tflite-int8",
        ...                           representative_data=x_train[:200])
        >>> art.check["argmax_agreement"], art.bytes
    """
    fmt = formats.get(format)
    exporter = getattr(importlib.import_module("tfopt.export"), fmt.exporter)
    accepted = inspect.signature(exporter).parameters
    fixed = {"model", "path", "repository", *fmt.options}
    unknown = sorted(k for k in options if k not in accepted or k in fixed)
    if unknown:
        allowed = sorted(k for k in accepted if k not in fixed)
        raise ValueError(
            f"format={format!r} does not take option(s) {unknown}. Its options: {allowed}"
        )
    from tfopt._guard import stage

    hint = "Try another format (e.g. onnx or tflite-float16)."
    with stage(f"export of model {model.name!r} to {format}", hint):
        return exporter(model, path, **fmt.options, **options)
