"""Runtimes that execute an artifact on numpy batches: Keras, TFLite (LiteRT), ONNX Runtime and
TensorFlow SavedModel. Every runner has ``invoke(x)`` (one batch), ``predict(x, batch_size)``,
``clone()`` (an independent instance for a serving pool), ``input_shape`` and ``runtime``."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from tfopt import _formats as formats
from tfopt.errors import MissingDependencyError


class TFLiteRunner:
    """Runs a ``.tflite`` model with ``ai_edge_litert``; quantized inputs/outputs are handled.

    ``predict`` takes float inputs and returns float outputs, whatever the model's I/O dtype. One
    interpreter is not thread-safe: use `clone` to give each serving thread its own.
    """

    runtime = "tflite"
    rebuildable = True  # pickles to its model bytes, so a load-test process can rebuild it

    def __init__(self, model, *, num_threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        content = model if isinstance(model, bytes | bytearray) else Path(model).read_bytes()
        self._content = bytes(content)
        self.num_threads = num_threads
        self.interpreter = Interpreter(model_content=self._content, num_threads=num_threads)
        self.interpreter.allocate_tensors()
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self._batch = int(self._input["shape"][0])
        signature = [int(d) for d in self._input.get("shape_signature", self._input["shape"])]
        self._fixed_batch = signature[0] if signature[0] > 0 else None
        self.shape_signature = [None if d < 0 else d for d in signature]

    def clone(self) -> TFLiteRunner:
        return TFLiteRunner(self._content, num_threads=self.num_threads)

    def __getstate__(self) -> dict:
        return {"content": self._content, "num_threads": self.num_threads}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["content"], num_threads=state["num_threads"])

    @property
    def input_dtype(self):
        return self._input["dtype"]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self._input["shape"][1:])

    def _resize(self, n: int) -> None:
        if n != self._batch:
            shape = list(self._input["shape"])
            shape[0] = n
            self.interpreter.resize_tensor_input(self._input["index"], shape)
            self.interpreter.allocate_tensors()
            self._input = self.interpreter.get_input_details()[0]
            self._output = self.interpreter.get_output_details()[0]
            self._batch = n

    def _quantize(self, x: np.ndarray) -> np.ndarray:
        dtype = self._input["dtype"]
        if dtype in (np.int8, np.uint8, np.int16):
            scale, zero = self._input["quantization"]
            info = np.iinfo(dtype)
            return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
        return x.astype(dtype)

    def _dequantize(self, y: np.ndarray) -> np.ndarray:
        if self._output["dtype"] in (np.int8, np.uint8, np.int16):
            scale, zero = self._output["quantization"]
            return (y.astype("float32") - zero) * scale
        return y.astype("float32")

    def invoke(self, x: np.ndarray) -> np.ndarray:
        """Runs one batch (its size becomes the interpreter's batch size unless it is fixed)."""
        x = np.asarray(x)
        if self._fixed_batch is not None and len(x) != self._fixed_batch:
            return self._invoke_fixed(x)
        self._resize(len(x))
        self.interpreter.set_tensor(self._input["index"], self._quantize(x))
        self.interpreter.invoke()
        return self._dequantize(self.interpreter.get_tensor(self._output["index"]))

    def _invoke_fixed(self, x: np.ndarray) -> np.ndarray:
        """A model converted with a fixed batch: run chunks of that size, padding the last one."""
        b = self._fixed_batch
        outs = []
        for i in range(0, len(x), b):
            chunk = x[i : i + b]
            pad = b - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
            self.interpreter.set_tensor(self._input["index"], self._quantize(chunk))
            self.interpreter.invoke()
            out = self._dequantize(self.interpreter.get_tensor(self._output["index"]))
            outs.append(out[: b - pad])
        return np.concatenate(outs)

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        x = np.asarray(x, dtype="float32")
        try:
            outs = [self.invoke(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        except (RuntimeError, ValueError):  # a model that cannot be resized: one sample at a time
            self._resize(1)
            outs = [self.invoke(x[i : i + 1]) for i in range(len(x))]
        return np.concatenate(outs)


class OnnxRunner:
    """Runs a ``.onnx`` model with onnxruntime (CPU). A session is thread-safe; `clone` makes a new
    one anyway so that a serving pool's sessions do not share intra-op threads."""

    runtime = "onnxruntime"
    rebuildable = True  # pickles to its model, so a load-test process can rebuild it

    def __init__(self, model, *, num_threads: int = 1):
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - onnxruntime is a dependency
            raise MissingDependencyError(
                "Running .onnx files needs onnxruntime: pip install onnxruntime"
            ) from e
        self._source = model if isinstance(model, bytes | bytearray) else str(model)
        self.num_threads = num_threads
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = num_threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(self._source, opts, providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.shape_signature = [d if isinstance(d, int) else None for d in inp.shape]
        # "tensor(int32)" -> int32: token-id inputs stay integers
        onnx_type = inp.type[len("tensor(") : -1] if inp.type.startswith("tensor(") else "float"
        self._dtype = np.dtype({"float": "float32", "double": "float64"}.get(onnx_type, onnx_type))

    def clone(self) -> OnnxRunner:
        return OnnxRunner(self._source, num_threads=self.num_threads)

    def __getstate__(self) -> dict:
        return {"source": self._source, "num_threads": self.num_threads}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["source"], num_threads=state["num_threads"])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.shape_signature[1:])

    def invoke(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: np.asarray(x, dtype=self._dtype)})[0]
        return np.asarray(out, dtype="float32")

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        x = np.asarray(x, dtype="float32")
        return np.concatenate(
            [self.invoke(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        )


class SavedModelRunner:
    """Runs a TensorFlow SavedModel directory through its serving signature (what TF Serving
    calls). Concrete functions are thread-safe, so `clone` shares the loaded model."""

    runtime = "savedmodel"

    def __init__(self, path, *, signature: str = "serving_default", _loaded=None):
        import tensorflow as tf

        self.path = Path(path)
        self._loaded = _loaded if _loaded is not None else tf.saved_model.load(str(self.path))
        if signature not in self._loaded.signatures:
            raise ValueError(
                f"SavedModel {str(self.path)!r} has no signature {signature!r}. Its signatures: "
                f"{sorted(self._loaded.signatures)}"
            )
        self.signature = signature
        self._fn = self._loaded.signatures[signature]
        specs = self._fn.structured_input_signature[1]
        if len(specs) != 1:
            raise ValueError(
                f"SavedModelRunner runs one-input signatures; {signature!r} has {sorted(specs)}"
            )
        self.input_name, spec = next(iter(specs.items()))
        self._dtype = spec.dtype
        self.shape_signature = [None if d is None else int(d) for d in spec.shape]
        self.output_name = sorted(self._fn.structured_outputs)[0]

    def clone(self) -> SavedModelRunner:
        return SavedModelRunner(self.path, signature=self.signature, _loaded=self._loaded)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.shape_signature[1:])

    def invoke(self, x: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        out = self._fn(**{self.input_name: tf.constant(np.asarray(x), dtype=self._dtype)})
        return np.asarray(out[self.output_name], dtype="float32")

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        x = np.asarray(x, dtype="float32")
        return np.concatenate(
            [self.invoke(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        )


class KerasRunner:
    """Runs a ``keras.Model`` (or a ``.keras`` file).

    Args:
        model: the model or a ``.keras`` path.
        mode: ``"predict_on_batch"`` (a compiled function; the default), ``"call"`` (eager
            ``model(x)``) or ``"predict"`` (``model.predict``, with its per-call setup).
            Defaults to "predict_on_batch".
    """

    runtime = "keras"
    MODES = ("predict_on_batch", "call", "predict")

    def __init__(self, model, *, mode: str = "predict_on_batch"):
        if mode not in self.MODES:
            raise ValueError(f"Unrecognized mode={mode!r}. Supported: {list(self.MODES)}")
        if isinstance(model, str | Path):
            from tfopt.models import load

            model = load(model)
        self.model = model
        self.mode = mode
        self._lock = threading.Lock()

    def clone(self) -> KerasRunner:
        return self  # one model shared by the pool; calls are serialized by the lock

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.model.input_shape[1:])

    def invoke(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype="float32")
        with self._lock:
            if self.mode == "call":
                return np.asarray(self.model(x, training=False))
            if self.mode == "predict":
                return np.asarray(self.model.predict(x, verbose=0))
            return np.asarray(self.model.predict_on_batch(x))

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        x = np.asarray(x, dtype="float32")
        return np.asarray(self.model.predict(x, batch_size=batch_size, verbose=0))


def _triton_model(path: Path) -> Path:
    """The model file inside a Triton model directory (its highest numbered version)."""
    versions = sorted(
        (p for p in path.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
    )
    for version in reversed(versions):
        for name in ("model.onnx", "model.savedmodel"):
            if (version / name).exists():
                return version / name
    raise ValueError(
        f"Triton model directory {str(path)!r} has no <version>/model.onnx or model.savedmodel"
    )


# the runtime names of the formats table (`tfopt._formats`) -> the runner of such a file
_FILE_RUNNERS = {cls.runtime: cls for cls in (TFLiteRunner, OnnxRunner)}


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def open_file(runner_cls, path: Path, kind: str, **kwargs):
    """``runner_cls(path, **kwargs)``; a file the runtime cannot read raises `ArtifactError`."""
    from tfopt.errors import ArtifactError, MissingDependencyError

    if path.stat().st_size == 0:
        raise ArtifactError(f"{str(path)!r} is empty (0 bytes): not a {kind} model; re-export it")
    try:
        return runner_cls(path, **kwargs)
    except MissingDependencyError:
        raise
    except Exception as e:  # each runtime has its own error types for a corrupt file
        raise ArtifactError(
            f"cannot read {str(path)!r} as a {kind} model (corrupt or truncated?): {_first_line(e)}"
        ) from None


def runner_for(artifact, **kwargs):
    """Returns the runner that executes ``artifact``.

    Args:
        artifact: a ``keras.Model``, or a path to a ``.keras``, ``.tflite`` or ``.onnx`` file, a
            SavedModel directory, or a Triton model directory (with ``config.pbtxt``).
        **kwargs: runner options (``num_threads`` for TFLite/ONNX, ``mode`` for Keras).

    Returns:
        A `TFLiteRunner`, `OnnxRunner`, `SavedModelRunner` or `KerasRunner`.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the kind of artifact is not recognized.
    """
    if isinstance(artifact, str | Path):
        path = Path(artifact)
        if not path.exists():
            raise FileNotFoundError(f"No such artifact: {str(path)!r}")
        if path.is_dir():
            if (path / "config.pbtxt").exists():
                return runner_for(_triton_model(path), **kwargs)
            if (path / "saved_model.pb").exists():
                return SavedModelRunner(path)
            raise ValueError(
                f"Directory {str(path)!r} is neither a SavedModel (saved_model.pb) nor "
                "a Triton model directory (config.pbtxt)"
            )
        if path.suffix == ".keras":
            return KerasRunner(path, **{k: v for k, v in kwargs.items() if k == "mode"})
        fmt = formats.by_suffix(path.suffix)
        runner = _FILE_RUNNERS.get(fmt.runtime) if fmt is not None else None
        if runner is None:
            suffixes = ", ".join(formats.runnable_suffixes())
            raise ValueError(
                f"Unrecognized artifact {str(artifact)!r}. Supported: {suffixes}, "
                ".keras files, SavedModel or Triton model directories, or a keras.Model"
            )
        return open_file(runner, path, fmt.name, num_threads=kwargs.get("num_threads", 1))
    from tfopt._backend import check_model

    check_model(artifact, "artifact")
    return KerasRunner(artifact, **{k: v for k, v in kwargs.items() if k == "mode"})
