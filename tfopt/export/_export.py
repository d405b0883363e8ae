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


def check_output(
    path,
    format: str,
    *,
    overwrite: bool = False,
    extra=(),
    arg: str = "path",
    flag: str = "overwrite=True",
) -> Path:
    """Refuses an output ``path`` that `export` may not write, in one line that names ``arg``
    (and ``flag``, the way to replace): a dangling symbolic link; for a file format, a directory,
    or an existing file (through a link too; its TFLite Micro C sources and ``extra`` files
    count) unless ``overwrite``. The directory formats' exporters refuse what they may not
    replace themselves. Returns ``path`` as a `Path`."""
    from tfopt._rundir import refuse_dangling
    from tfopt.errors import OutputDirError

    fmt, path = formats.get(format), Path(path)
    refuse_dangling(path, arg=arg)
    if not fmt.suffix:
        return path
    if path.is_dir():
        raise OutputDirError(
            f"{arg} {str(path)!r} is a directory; format {fmt.name} writes a file: give a file "
            f"name, e.g. {arg} {str(path / ('model' + fmt.suffix))!r}"
        )
    written = [path, *map(Path, extra)]
    if fmt.exporter == "tflm":
        written += [path.with_name(f"{path.stem}_model_data{ext}") for ext in (".cc", ".h")]
    existing = [str(p) for p in dict.fromkeys(written) if p.exists() or p.is_symlink()]
    if existing and not overwrite:
        raise OutputDirError(
            f"{arg}: {', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
            f"pass {flag} to replace, or choose another {arg}"
        )
    return path


def export(model, path, *, format: str = "tflite", overwrite: bool = False, **options) -> Artifact:
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
        overwrite: replace an existing file (or a directory an earlier tfopt export wrote).
            Defaults to False: an existing ``path`` is refused and nothing is written.
        **options: the format function's options (see `tflite`, `onnx`, `savedmodel`, `triton`,
            `tensorrt`), e.g. ``representative_data=``, ``opset=``, ``check_data=``,
            ``min_agreement=``, ``atol=``.

    Returns:
        The `Artifact`.

    Raises:
        ValueError: an unknown format (listing the supported ones), or an option the format
            does not take.
        OutputDirError: ``path`` exists and ``overwrite`` is False, is a directory where a file
            goes, or is a dangling symbolic link (`check_output`).
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
    fixed = {"model", "path", "repository", "overwrite", *fmt.options}
    unknown = sorted(k for k in options if k not in accepted or k in fixed)
    if unknown:
        allowed = sorted(k for k in accepted if k not in fixed)
        raise ValueError(
            f"format={format!r} does not take option(s) {unknown}. Its options: {allowed}"
        )
    check_output(path, format, overwrite=overwrite)
    # every exporter refuses what it may not replace (a directory format only an earlier export)
    options["overwrite"] = overwrite
    from tfopt._guard import stage

    hint = "Try another format (e.g. onnx or tflite-float16)."
    with stage(f"export of model {model.name!r} to {format}", hint):
        return exporter(model, path, **fmt.options, **options)
