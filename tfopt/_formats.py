"""The one table of export formats: name -> exporter, runtime, parity tolerance, file suffix.

Config validation, the CLI (choices and help), `tfopt.export.export`, the benchmark (which runtime
opens which artifact), `tfopt run` and the search targets of `tfopt tune` / `tfopt auto` all read
this table; a format is added here once. The module imports nothing heavy (no TensorFlow), so
the config schema and the CLI can use it before TensorFlow loads.

Example:
    >>> from tfopt._formats import FORMATS, get
    >>> get("tflite-int8").options
    {'quantization': 'int8'}
    >>> [f.name for f in FORMATS.values() if f.runtime == "onnxruntime"]
    ['onnx']
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class Format:
    """One export format.

    Attributes:
        name: the user-facing name (``tfopt export --format``, ``export.formats`` in configs).
        exporter: the public `tfopt.export` function that writes it (``"tflite"``, ``"onnx"``,
            ``"savedmodel"``, ``"triton"``, ``"tensorrt"``, ``"lowbit"``: LiteRT Quantizer).
        fixed: the exporter options the name fixes, e.g. ``(("quantization", "int8"),)``.
        runtime: the runtime that opens the artifact in `tfopt.bench` (``"tflite"`` is LiteRT,
            ``"tflm"`` TFLite Micro, ``"onnxruntime"``, ``"savedmodel"``), or None when tfopt cannot run it here
            (a TensorRT engine needs a GPU).
        min_agreement: the lowest argmax agreement with the Keras model the parity check accepts.
        max_abs_diff: the largest output difference, as a fraction of the largest Keras output
            magnitude, or None when quantization makes a raw difference meaningless.
        suffix: the artifact's file suffix (``""`` for a directory).
        tag: what `tfopt.export.default_path` appends to the model's stem (``m_int8.tflite``).
        requires: the packages the export needs beyond tensorflow.
        target: `tfopt tune` / `tfopt auto` can search for it: a LiteRT artifact they export
            and measure in-process (``tflm``: the int8 model, measured in TFLite Micro). int16x8 is left out: LiteRT runs it on reference kernels,
            too slow to measure every trial.
    """

    name: str
    exporter: str
    runtime: str | None
    min_agreement: float
    max_abs_diff: float | None
    suffix: str
    tag: str = ""
    fixed: tuple[tuple[str, str], ...] = ()
    requires: tuple[str, ...] = ()
    target: bool = False

    @property
    def options(self) -> dict[str, str]:
        """The exporter options the name fixes, as a dict."""
        return dict(self.fixed)

    @property
    def quantization(self) -> str | None:
        """The TFLite quantization mode (``"float32"``, ``"int8"``, ...), None for other formats."""
        return self.options.get("quantization")

    @property
    def calibrates(self) -> bool:
        """The export takes representative data (TFLite, TFLite Micro and the low-bit formats)."""
        return self.quantization is not None or self.exporter == "lowbit"

    @property
    def tolerance(self) -> tuple[float, float | None]:
        """``(min_agreement, max_abs_diff)`` of the parity check."""
        return self.min_agreement, self.max_abs_diff


def _tflite(name: str, quantization: str, agreement: float, diff: float | None, **kw) -> Format:
    tag = "" if quantization == "float32" else "_" + name.split("-")[-1]
    return Format(
        name,
        "tflite",
        "tflite",
        agreement,
        diff,
        ".tflite",
        tag,
        (("quantization", quantization),),
        **kw,
    )


def _tensorrt(name: str, precision: str | None, agreement: float, diff: float | None) -> Format:
    fixed = () if precision is None else (("precision", precision),)
    tag = "" if precision is None else f"_{precision}"
    return Format(name, "tensorrt", None, agreement, diff, ".engine", tag, fixed, ("tensorrt",))


_ONNX = ("tf2onnx", "onnx", "onnxruntime")


def _lowbit(mode: str, agreement: float) -> Format:
    """Below int8 / mixed precision: LiteRT Quantizer on the float flatbuffer, run in LiteRT
    (which modes TFLite Micro also runs: `tfopt.quantize.MODES`)."""
    return Format(
        f"tflite-{mode}",
        "lowbit",
        "tflite",
        agreement,
        None,
        ".tflite",
        f"_{mode.replace('-', '_')}",
        (("mode", mode),),
        ("litert_quantizer",),
    )


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        _tflite("tflite", "float32", 0.99, 1e-3, target=True),
        _tflite("tflite-float16", "float16", 0.99, 2e-2, target=True),
        _tflite("tflite-dynamic", "dynamic", 0.95, None, target=True),
        _tflite("tflite-int8", "int8", 0.9, None, target=True),
        _tflite("tflite-int16x8", "int16x8", 0.95, None),
        # the int8 model for TFLite Micro, plus <stem>_model_data.cc/.h (tfopt.export.tflm)
        Format(
            "tflm",
            "tflm",
            "tflm",
            0.9,
            None,
            ".tflite",
            "_tflm",
            (("quantization", "int8"),),
            ("tflite-micro",),
            target=True,
        ),
        # int4 weights perturb every kernel by up to 1/15 of its range: 0.8 of the argmax kept
        _lowbit("w4", 0.8),
        _lowbit("w8", 0.95),
        _lowbit("dynamic-w4", 0.8),
        _lowbit("dynamic-w8", 0.95),
        _lowbit("w8a8", 0.9),
        _lowbit("w8a16", 0.95),
        Format("onnx", "onnx", "onnxruntime", 0.99, 1e-3, ".onnx", requires=_ONNX),
        Format("savedmodel", "savedmodel", "savedmodel", 0.99, 1e-4, "", "_savedmodel"),
        # the ONNX Runtime backend by default (Triton deprecated its TensorFlow backend in 25.03)
        Format("triton", "triton", "onnxruntime", 0.99, 1e-3, "", "_triton", requires=_ONNX),
        # precision fp16 unless precision= is given
        _tensorrt("tensorrt", None, 0.99, 2e-2),
        _tensorrt("tensorrt-fp16", "fp16", 0.99, 2e-2),
        _tensorrt("tensorrt-int8", "int8", 0.9, None),
    )
}

# the artifact format TensorRT reports for ``format="tensorrt", precision="fp32"``: a parity
# tolerance without a format name of its own
_UNNAMED_TOLERANCES: dict[str, tuple[float, float | None]] = {"tensorrt-fp32": (0.99, 1e-3)}

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
    "micro": "tflm",
    "tflite-micro": "tflm",
}


def names() -> list[str]:
    """Every format name, in the table's order."""
    return list(FORMATS)


def targets() -> tuple[str, ...]:
    """The formats `tfopt tune` and `tfopt auto` can search for (see `Format.target`)."""
    return tuple(name for name, f in FORMATS.items() if f.target)


def tolerances() -> dict[str, tuple[float, float | None]]:
    """``{artifact format: (min_agreement, max_abs_diff)}``: every format's parity tolerance."""
    return {**{n: f.tolerance for n, f in FORMATS.items()}, **_UNNAMED_TOLERANCES}


def by_suffix(suffix: str) -> Format | None:
    """The first format whose artifact file ends in ``suffix`` (``".onnx"``), or None."""
    return next((f for f in FORMATS.values() if suffix and f.suffix == suffix), None)


def runnable_suffixes() -> list[str]:
    """The artifact file suffixes that a runtime of `tfopt.bench` opens (``.tflite``, ``.onnx``)."""
    return list(dict.fromkeys(f.suffix for f in FORMATS.values() if f.runtime and f.suffix))


def get(name: str) -> Format:
    """Returns the `Format` called ``name``.

    Raises:
        ValueError: ``Unrecognized format='x'. Supported formats are: [...]``, with a
            did-you-mean when a name is close.
    """
    if name in FORMATS:
        return FORMATS[name]
    text = str(name).lower()
    if text in _ALIASES:
        hint = _ALIASES[text]
    else:
        digits = "".join(c for c in text if c.isdigit())
        # "tflite8" means int8, not float32: prefer the formats holding the same digits
        pool = [f for f in FORMATS if digits and digits in f] or list(FORMATS)
        # and the common formats (those the agent targets) over the specialised ones
        common = [f for f in pool if FORMATS[f].target]
        close = difflib.get_close_matches(text, common, n=1, cutoff=0.5)
        close = close or difflib.get_close_matches(text, pool, n=1, cutoff=0.5)
        hint = close[0] if close else None
    did_you_mean = f" Did you mean {hint!r}?" if hint else ""
    raise ValueError(
        f"Unrecognized format={name!r}.{did_you_mean} Supported formats are: {list(FORMATS)}"
    )
