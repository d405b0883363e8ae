"""`export(model, path, format=...)`: one entry point for every format."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from pathlib import Path

from tfopt.export._common import Artifact


def _tflite(quantization: str) -> Callable[..., Artifact]:
    def run(model, path, **options) -> Artifact:
        from tfopt.export._tflite import tflite

        return tflite(model, path, quantization=quantization, **options)

    run.__name__ = f"tflite_{quantization}"
    return run


def _tensorrt(precision: str | None) -> Callable[..., Artifact]:
    def run(model, path, **options) -> Artifact:
        from tfopt.export._tensorrt import tensorrt

        if precision is not None:
            options["precision"] = precision
        return tensorrt(model, path, **options)

    return run


def _lazy(module: str, name: str) -> Callable[..., Artifact]:
    def run(model, path, **options) -> Artifact:
        import importlib

        return getattr(importlib.import_module(module), name)(model, path, **options)

    return run


# format -> (function, the public function whose options it accepts, default file suffix)
FORMATS: dict[str, tuple[Callable[..., Artifact], str, str]] = {
    "tflite": (_tflite("float32"), "tflite", ".tflite"),
    "tflite-float16": (_tflite("float16"), "tflite", ".tflite"),
    "tflite-dynamic": (_tflite("dynamic"), "tflite", ".tflite"),
    "tflite-int8": (_tflite("int8"), "tflite", ".tflite"),
    "tflite-int16x8": (_tflite("int16x8"), "tflite", ".tflite"),
    "onnx": (_lazy("tfopt.export._onnx", "onnx"), "onnx", ".onnx"),
    "savedmodel": (_lazy("tfopt.export._savedmodel", "savedmodel"), "savedmodel", ""),
    "triton": (_lazy("tfopt.export._triton", "triton"), "triton", ""),
    "tensorrt": (_tensorrt(None), "tensorrt", ".engine"),
    "tensorrt-fp16": (_tensorrt("fp16"), "tensorrt", ".engine"),
    "tensorrt-int8": (_tensorrt("int8"), "tensorrt", ".engine"),
}


# common names for a format, suggested (never accepted silently)
_ALIASES = {
    "trt": "tensorrt",
    "tf-trt": "tensorrt",
    "tftrt": "tensorrt",
    "tflite-fp32": "tflite",
    "tflite-float32": "tflite",
    "tflite-fp16": "tflite-float16",
    "tf": "savedmodel",
    "saved_model": "savedmodel",
}


def check_format(format: str) -> str:
    """Returns ``format`` if it is supported, else raises a ValueError with a did-you-mean."""
    if format in FORMATS:
        return format
    text = str(format).lower()
    if text in _ALIASES:
        raise ValueError(
            f"Unrecognized format={format!r}. Did you mean {_ALIASES[text]!r}? "
            f"Supported formats are: {list(FORMATS)}"
        )
    digits = "".join(c for c in text if c.isdigit())
    # "tflite8" means int8, not float32: prefer the formats holding the same digits
    pool = [f for f in FORMATS if digits and digits in f] or list(FORMATS)
    hint = difflib.get_close_matches(text, pool, n=1, cutoff=0.5)
    did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
    raise ValueError(
        f"Unrecognized format={format!r}.{did_you_mean} Supported formats are: {list(FORMATS)}"
    )


def default_path(model_path, format: str) -> Path:
    """Where `tfopt export` writes ``format`` for ``model_path`` (``m.keras`` -> ``m_int8.tflite``)."""
    check_format(format)
    model_path = Path(model_path)
    stem = model_path.with_suffix("")
    tag = {"tflite": "", "onnx": "", "tensorrt": ""}.get(format, "_" + format.split("-")[-1])
    if format == "savedmodel":
        tag = "_savedmodel"
    if format == "triton":
        tag = "_triton"
    return stem.parent / f"{stem.name}{tag}{FORMATS[format][2]}"


def export(model, path, *, format: str = "tflite", **options) -> Artifact:
    """Exports a Keras model in ``format`` and checks the artifact against the Keras model.

    Every format's artifact is run on sample inputs (``check_data``, else the representative data,
    else random normals) and compared with ``model.predict``: the argmax agreement and the max abs
    difference must be within the format's tolerance (`tfopt.export.TOLERANCES`), else an
    `ExportCheckError` is raised, unless you relax ``min_agreement=`` / ``atol=``. The check's
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
    check_format(format)
    fn, public, _ = FORMATS[format]
    from tfopt import export as export_pkg

    accepted = inspect.signature(getattr(export_pkg, public)).parameters
    fixed = {"model", "path", "repository"}
    if public == "tflite":
        fixed.add("quantization")
    if public == "tensorrt" and format != "tensorrt":
        fixed.add("precision")
    unknown = sorted(k for k in options if k not in accepted or k in fixed)
    if unknown:
        allowed = sorted(k for k in accepted if k not in fixed)
        raise ValueError(
            f"format={format!r} does not take option(s) {unknown}. Its options: {allowed}"
        )
    return fn(model, path, **options)
