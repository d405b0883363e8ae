"""`lowbit`: int4 / mixed-precision / w8a16 TFLite through LiteRT Quantizer (litert-quantizer), parity-checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tfopt._backend import check_model
from tfopt.export._common import (
    Artifact,
    check_inputs,
    float32_copy,
    graph_model,
    single_input,
    verify,
)
from tfopt.export._export import check_output


def lowbit(
    model,
    path,
    *,
    mode: str = "w4",
    bits=None,
    representative_data=None,
    check_data=None,
    min_agreement: float | None = None,
    atol: float | None = None,
    overwrite: bool = False,
) -> Artifact:
    """Writes a ``.tflite`` below int8 (or mixed) with Google's LiteRT Quantizer and checks it.

    The model is converted to float32 TFLite, then LiteRT Quantizer rewrites the flatbuffer in
    ``mode`` (see `tfopt.quantize.MODES`: ``"w4"`` int4 weight-only, ``"w8"``, ``"dynamic-w4"``,
    ``"dynamic-w8"``, ``"w8a8"``, ``"w8a16"``), with per-layer weight bits from ``bits``. The
    artifact is run in LiteRT and compared with the Keras model (the format's tolerance).
    ``Artifact.info`` holds the per-layer ``bits``, the weights' storage ``types`` read back from
    the flatbuffer (``"INT4"``) and the ``runtimes`` that run the mode.

    Args:
        model: a Keras 3 model with one input and one output.
        path: the ``.tflite`` file to write.
        mode: the AEQ mode. Defaults to "w4".
        bits: ``{layer name or regex: 4, 8 or None}``: per-layer weight bits (None: float).
            Defaults to None (every layer at the mode's bits).
        representative_data: inputs to calibrate activations (static modes need it).
            Defaults to None.
        check_data: inputs of the parity check. Defaults to ``representative_data``, else random.
        min_agreement: the accepted argmax agreement. Defaults to the format's (tfopt.export.FORMATS).
        atol: the accepted max abs difference. Defaults to the format's (None: not checked).
        overwrite: replace an existing file. Defaults to False: an existing ``path`` is refused
            (`OutputDirError`) and nothing is written.

    Returns:
        An `Artifact`.

    Raises:
        MissingDependencyError: litert-quantizer is not installed (``pip install 'tfopt[lowbit]'``).
        ValueError: an unknown mode, bad ``bits``, a static mode without representative data.
        ExportCheckError: the artifact disagrees with the Keras model beyond the tolerance.
        OutputDirError: ``path`` exists and ``overwrite`` is False, or is a directory.

    Example:
        >>> art = tfopt.export.lowbit(model, "m_w4.tflite", mode="w8", bits={"fc1": 4})
        >>> art.info["types"]
        {'conv1': 'INT8', 'fc1': 'INT4', 'logits': 'INT8'}
    """
    from tfopt.bench._runners import TFLiteRunner
    from tfopt.quantize._lowbit import (
        _aeq,
        _float_tflite,
        _layer_names,
        get_mode,
        quantize_flatbuffer,
    )

    check_model(model)
    get_mode(mode)
    check_output(path, f"tflite-{mode}", overwrite=overwrite)
    _aeq()  # a missing litert-quantizer is reported before any conversion
    fmt = f"tflite-{mode}"
    plain = float32_copy(graph_model(model))
    single_input(plain, fmt)
    content, info = quantize_flatbuffer(
        _float_tflite(model),
        mode,
        bits=bits,
        layer_names=_layer_names(plain),
        representative_data=representative_data,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    runner = TFLiteRunner(content)
    info["input"] = {"dtype": np.dtype(runner.input_dtype).name, "shape": runner.shape_signature}
    x = check_inputs(plain, check_data, representative_data)
    check = verify(plain, runner, x, fmt=fmt, path=path, min_agreement=min_agreement, atol=atol)
    return Artifact(path=path, format=fmt, bytes=len(content), check=check, info=info)
