"""TensorRT engines, built from the ONNX export with the ``tensorrt`` Python package.

TensorFlow >= 2.18 pip wheels have no TF-TRT, so tfopt does not use ``tf.experimental.tensorrt``:
it exports ONNX (dynamic batch), parses it with ``trt.OnnxParser`` and builds a serialized engine
with an optimization profile over the batch dimension. Building and running an engine needs an
NVIDIA GPU with CUDA; running it for the parity check also needs ``cuda-python``.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import numpy as np

from tfopt._backend import check_model
from tfopt.errors import MissingDependencyError
from tfopt.export._common import Artifact, check_inputs, samples, verify
from tfopt.export._export import check_output

PRECISIONS = ("fp32", "fp16", "int8")

_INSTALL = (
    "format='tensorrt' needs the `tensorrt` Python package and an NVIDIA GPU with CUDA. TensorFlow "
    ">= 2.18 pip wheels are built without TF-TRT ('Tensorflow has not been built with TensorRT "
    "support'), so tfopt builds the engine from the ONNX export instead. On a GPU machine: "
    "pip install tensorrt cuda-python (matching your CUDA driver). Without a GPU, export "
    "format='onnx' (run it with onnxruntime) or a 'tflite' format."
)


def _require(module: str):
    if importlib.util.find_spec(module.split(".")[0]) is None:
        raise MissingDependencyError(
            _INSTALL
            if module == "tensorrt"
            else (
                f"Running a TensorRT engine for the parity check needs `{module}`: pip install cuda-python"
            )
        )
    return importlib.import_module(module)


def _cudart():
    try:
        return importlib.import_module("cuda.bindings.runtime")  # cuda-python >= 12.6
    except ImportError:
        return _require("cuda.cudart")


def _call(result):
    """Unpacks a cuda-python call ``(err, *values)`` and raises on an error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA call failed: {err}")
    return values[0] if len(values) == 1 else values


class _Calibrator:
    """An IInt8EntropyCalibrator2 that feeds ``x`` in batches through device memory."""

    def __new__(cls, trt, x: np.ndarray, batch: int):
        cudart = _cudart()

        class Calibrator(trt.IInt8EntropyCalibrator2):
            def __init__(self):
                super().__init__()
                self.x, self.batch, self.i = np.ascontiguousarray(x, dtype="float32"), batch, 0
                self.mem = _call(cudart.cudaMalloc(self.x[:batch].nbytes))

            def get_batch_size(self):
                return self.batch

            def get_batch(self, names):
                if self.i + self.batch > len(self.x):
                    return None
                chunk = np.ascontiguousarray(self.x[self.i : self.i + self.batch])
                _call(
                    cudart.cudaMemcpy(
                        self.mem,
                        chunk.ctypes.data,
                        chunk.nbytes,
                        cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
                    )
                )
                self.i += self.batch
                return [int(self.mem)]

            def read_calibration_cache(self):
                return None

            def write_calibration_cache(self, cache):
                return None

        return Calibrator()


class TensorRTRunner:
    """Runs a serialized TensorRT engine (one input, one output, dynamic batch) with cuda-python."""

    runtime = "tensorrt"

    def __init__(self, engine_path):
        trt = _require("tensorrt")
        self.cudart = _cudart()
        self.engine = trt.Runtime(trt.Logger(trt.Logger.ERROR)).deserialize_cuda_engine(
            Path(engine_path).read_bytes()
        )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == mode)
        self.output_name = next(n for n in names if self.engine.get_tensor_mode(n) != mode)
        self.max_batch = int(self.engine.get_tensor_profile_shape(self.input_name, 0)[2][0])

    def invoke(self, x: np.ndarray) -> np.ndarray:
        cudart = self.cudart
        x = np.ascontiguousarray(x, dtype="float32")
        self.context.set_input_shape(self.input_name, x.shape)
        out = np.empty(tuple(self.context.get_tensor_shape(self.output_name)), dtype="float32")
        d_in, d_out = _call(cudart.cudaMalloc(x.nbytes)), _call(cudart.cudaMalloc(out.nbytes))
        try:
            h2d, d2h = (
                cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
                cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost,
            )
            _call(cudart.cudaMemcpy(d_in, x.ctypes.data, x.nbytes, h2d))
            self.context.set_tensor_address(self.input_name, int(d_in))
            self.context.set_tensor_address(self.output_name, int(d_out))
            if not self.context.execute_async_v3(0):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            _call(cudart.cudaMemcpy(out.ctypes.data, d_out, out.nbytes, d2h))
        finally:
            cudart.cudaFree(d_in)
            cudart.cudaFree(d_out)
        return out

    def predict(self, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
        batch_size = min(batch_size, self.max_batch)
        return np.concatenate(
            [self.invoke(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        )


def tensorrt(
    model,
    path,
    *,
    precision: str = "fp16",
    max_batch_size: int = 64,
    opset: int = 17,
    workspace_mb: int = 1024,
    calibration_data=None,
    check_data=None,
    min_agreement: float | None = None,
    atol: float | None = None,
    overwrite: bool = False,
) -> Artifact:
    """Builds a TensorRT engine from the model's ONNX export and checks it against Keras.

    Args:
        model: a Keras 3 model with one input and one output.
        path: where to write the serialized engine (the ONNX file goes next to it, ``.onnx``).
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"`` (calibrated on ``calibration_data``).
            Defaults to "fp16".
        max_batch_size: the largest batch of the engine's optimization profile. Defaults to 64.
        opset: the ONNX opset of the intermediate export. Defaults to 17.
        workspace_mb: the builder's workspace memory pool limit. Defaults to 1024.
        calibration_data: inputs for int8 calibration (a few hundred). Defaults to None.
        check_data: inputs for the parity check. Defaults to 64 random normal inputs.
        min_agreement: the argmax agreement below which the check fails. Defaults to 0.99 for
            fp32/fp16, 0.9 for int8.
        atol: the largest accepted max abs difference as a fraction of the largest Keras output.
            Defaults to 1e-3 (fp32), 2e-2 (fp16), None (int8).
        overwrite: replace an existing engine (and its ``.onnx``). Defaults to False: either
            existing is refused (`OutputDirError`) and nothing is written.

    Returns:
        An `Artifact` (format ``"tensorrt-<precision>"``).

    Raises:
        MissingDependencyError: ``tensorrt`` (or ``cuda-python``) is not installed; the message says
            that TensorFlow >= 2.18 has no TF-TRT and what to install.
        ValueError: a bad precision or batch size, or int8 without calibration data.
        RuntimeError: TensorRT could not parse the ONNX graph or build the engine.
        ExportCheckError: the engine's outputs disagree with Keras beyond the tolerance.
        OutputDirError: ``path`` or its ``.onnx`` exists and ``overwrite`` is False.

    Example:
        >>> art = tfopt.export.tensorrt(model, "m.engine", precision="fp16")  # on a GPU machine
    """
    check_model(model)
    if precision not in PRECISIONS:
        raise ValueError(f"Unrecognized precision={precision!r}. Supported: {list(PRECISIONS)}")
    if not isinstance(max_batch_size, int) or max_batch_size < 1:
        raise ValueError(
            f"max_batch_size must be an int >= 1. Received: max_batch_size={max_batch_size!r}"
        )
    if precision == "int8" and calibration_data is None:
        raise ValueError("precision='int8' needs calibration_data (a few hundred training inputs).")
    if calibration_data is not None:
        calibration_data = samples(model, calibration_data, "calibration_data", dtype="float32")
    path = Path(path)
    check_output(path, "tensorrt", overwrite=overwrite, extra=[path.with_suffix(".onnx")])
    trt = _require("tensorrt")
    from tfopt.export._onnx import onnx

    onnx_art = onnx(
        model, path.with_suffix(".onnx"), opset=opset, check_data=check_data, overwrite=overwrite
    )
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_art.path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_art.path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    inp = network.get_input(0)
    feature = tuple(int(d) for d in model.input_shape[1:])
    profile = builder.create_optimization_profile()
    opt = max(1, max_batch_size // 2)
    profile.set_shape(inp.name, (1, *feature), (opt, *feature), (max_batch_size, *feature))
    config.add_optimization_profile(profile)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        cal = check_inputs(model, calibration_data, limit=512)
        config.set_calibration_profile(profile)
        config.int8_calibrator = _Calibrator(trt, cal, batch=min(32, len(cal)))
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError(
            f"TensorRT could not build a {precision} engine from {onnx_art.path.name}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(engine))
    fmt = f"tensorrt-{precision}"
    x = check_inputs(model, check_data)[: max_batch_size * 4]
    check = verify(
        model, TensorRTRunner(path), x, fmt=fmt, path=path, min_agreement=min_agreement, atol=atol
    )
    info = {
        "precision": precision,
        "onnx": str(onnx_art.path),
        "max_batch_size": max_batch_size,
        "trt_version": getattr(trt, "__version__", None),
    }
    return Artifact(path=path, format=fmt, bytes=path.stat().st_size, check=check, info=info)
