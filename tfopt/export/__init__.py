"""Export a Keras model to a deployable artifact, checked against the Keras model.

Formats: TFLite (float32, float16, dynamic-range, int8, int16x8), ONNX, SavedModel (serving
signature), a Triton model repository and TensorRT (built from ONNX; needs the ``tensorrt``
package and an NVIDIA GPU). Each export runs the artifact in its runtime and compares it with
``model.predict``; the result is ``Artifact.check``. ``FORMATS`` is the one table of formats
(name -> `Format`: exporter, runtime, parity tolerance, file suffix) that config, CLI, export,
bench and search read. `export_and_measure` exports through it and measures the artifact in its
runtime: the one path of `tfopt run`'s artifacts, `tfopt tune` trials and `tfopt auto`.

Example:
    >>> art = tfopt.export.export(model, "m.tflite", format="tflite-int8",
    ...                           representative_data=x[:200])
    >>> art.check["argmax_agreement"]
"""

from tfopt._formats import FORMATS, Format
from tfopt.export._common import TOLERANCES, Artifact, check_against_keras
from tfopt.export._export import check_format, default_path, export
from tfopt.export._lowbit import lowbit
from tfopt.export._measure import ExportFailed, Measurement, export_and_measure
from tfopt.export._onnx import onnx
from tfopt.export._savedmodel import savedmodel
from tfopt.export._tensorrt import PRECISIONS, tensorrt
from tfopt.export._tflite import QUANTIZATIONS, tflite
from tfopt.export._tflm import parse_c_array, tflm
from tfopt.export._triton import config_pbtxt, triton

__all__ = [
    "FORMATS",
    "PRECISIONS",
    "QUANTIZATIONS",
    "TOLERANCES",
    "Artifact",
    "ExportFailed",
    "Measurement",
    "Format",
    "check_against_keras",
    "check_format",
    "config_pbtxt",
    "default_path",
    "export",
    "export_and_measure",
    "lowbit",
    "onnx",
    "savedmodel",
    "tensorrt",
    "parse_c_array",
    "tflite",
    "tflm",
    "triton",
]
