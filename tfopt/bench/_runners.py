"""Runtimes that execute an artifact on numpy batches: Keras, TFLite (LiteRT), TFLite Micro,
ONNX Runtime and TensorFlow SavedModel. Every runner has ``invoke(x)`` (one batch), ``predict(x, batch_size)``,
``clone()`` (an independent instance for a serving pool), ``input_shape`` and ``runtime``."""

from __future__ import annotations

import inspect
import threading
from pathlib import Path

import numpy as np

from tfopt import _formats as formats
from tfopt import _tflm
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


class TFLMRunner:
    """Runs a ``.tflite`` model in TensorFlow Lite for Microcontrollers
    (`tflite_micro.runtime.Interpreter`, ``pip install tflite-micro``): the kernels a
    microcontroller runs, on this machine.

    TFLM runs one sample per invocation (its tensors have a fixed batch of 1), so ``predict``
    loops over the samples. ``predict`` takes float inputs and returns float outputs whatever the
    model's I/O dtype. `allocations` reports the arena TFLM's allocation recorder measured.

    Args:
        model: a ``.tflite`` path or its bytes.
        arena_size: the tensor arena TFLM may use, in bytes. Defaults to None:
            ``max(16 x the model's bytes, 4 MiB)``, room for any model a microcontroller runs (the
            arena the model really uses is `arena_bytes`).

    Raises:
        UnsupportedOpsError: the model holds ops TFLM has no kernel for (named in the message).
        RuntimeError: TFLM could not allocate the model in ``arena_size`` bytes (its log included).
        MissingDependencyError: tflite-micro is not installed (with the pip hint).
    """

    runtime = "tflm"
    rebuildable = True  # pickles to its model bytes, so a load-test process can rebuild it

    def __init__(self, model, *, arena_size: int | None = None):
        micro = _tflm.import_runtime()
        label = "the model" if isinstance(model, bytes | bytearray) else Path(model).name
        content = model if isinstance(model, bytes | bytearray) else Path(model).read_bytes()
        self._content = bytes(content)
        if arena_size is not None and (isinstance(arena_size, bool) or int(arena_size) < 1):
            raise ValueError(
                f"arena_size must be a positive int. Received: arena_size={arena_size!r}"
            )
        self.arena_size = int(arena_size or max(16 * len(self._content), 4 << 20))
        self.ops = _tflm.model_ops(self._content)
        error = None
        with _tflm.runtime_log() as log:
            try:
                self.interpreter = micro.Interpreter.from_bytes(
                    self._content, arena_size=self.arena_size
                )
            except RuntimeError as e:
                error = e
        if error is not None:
            raise self._failure(label, log[0], error) from None
        self._input = self.interpreter.get_input_details(0)
        self._output = self.interpreter.get_output_details(0)
        self._allocations: dict[str, int] | None = None
        self._invoked = False
        self.shape_signature = [int(d) for d in self._input["shape"]]

    def _failure(self, label: str, text: str, error: Exception) -> Exception:
        missing = _tflm.ops_not_found(text) or _tflm.missing_ops(self.ops)
        if missing:
            return _tflm.UnsupportedOpsError(
                f"TFLite Micro cannot run {label}: it has no kernel for {', '.join(missing)}. The "
                f"model's ops: {', '.join(sorted(set(self.ops)))}. Rebuild the model without the "
                "layers that lower to them (e.g. a gelu activation becomes GELU: use relu), or "
                "run it with LiteRT (runtime='litert')."
            )
        log = " ".join(text.split())[:500]
        return RuntimeError(
            f"TFLite Micro could not allocate {label} in a {self.arena_size}-byte arena "
            f"({error}). Runtime log: {log or 'empty'}. Pass a larger arena_size=."
        )

    def clone(self) -> TFLMRunner:
        return TFLMRunner(self._content, arena_size=self.arena_size)

    def __getstate__(self) -> dict:
        return {"content": self._content, "arena_size": self.arena_size}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["content"], arena_size=state["arena_size"])

    @property
    def input_dtype(self):
        return self._input["dtype"]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.shape_signature[1:])

    @staticmethod
    def _params(details) -> tuple[float, int] | None:
        q = details.get("quantization_parameters") or {}
        scales, zeros = q.get("scales"), q.get("zero_points")
        if scales is None or len(scales) == 0:
            return None
        return float(scales[0]), int(zeros[0])

    def _quantize(self, x: np.ndarray) -> np.ndarray:
        dtype = np.dtype(self._input["dtype"])
        params = self._params(self._input)
        if dtype.kind in "iu" and params is not None:
            scale, zero = params
            info = np.iinfo(dtype)
            return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
        return x.astype(dtype)

    def _dequantize(self, y: np.ndarray) -> np.ndarray:
        params = self._params(self._output)
        if np.dtype(self._output["dtype"]).kind in "iu" and params is not None:
            scale, zero = params
            return (y.astype("float32") - zero) * scale
        return y.astype("float32")

    def invoke(self, x: np.ndarray) -> np.ndarray:
        """Runs a batch, one sample per TFLM invocation."""
        x = np.asarray(x)
        shape = (1, *self.input_shape)
        outs = []
        for sample in x:
            self.interpreter.set_input(self._quantize(sample.reshape(shape)), 0)
            self.interpreter.invoke()
            outs.append(self._dequantize(np.asarray(self.interpreter.get_output(0)))[0])
        self._invoked = True
        return np.stack(outs) if outs else np.zeros((0,), "float32")

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        return self.invoke(np.asarray(x, dtype="float32"))

    def allocations(self) -> dict[str, int]:
        """The arena TFLM's allocation recorder reports, in bytes: ``total`` (what the model
        uses: the tensor arena a firmware must provide for it), ``head`` (the non-persistent
        part: activations and scratch, planned to overlap) and ``tail`` (persistent: tensor
        structs, quantization parameters, kernel state)."""
        if self._allocations is None:
            if not self._invoked:  # the recorder's figures are final after an invocation
                self.invoke(np.zeros((1, *self.input_shape), dtype="float32"))
            with _tflm.runtime_log() as log:
                self.interpreter.print_allocations()
            found = _tflm.parse_allocations(log[0])
            if "total" not in found:
                raise RuntimeError(
                    "TFLite Micro printed no arena total; its allocation log was: "
                    + " ".join(log[0].split())[:300]
                )
            self._allocations = found
        return dict(self._allocations)

    @property
    def arena_bytes(self) -> int:
        """The arena the model uses in TFLM (`allocations`' total)."""
        return self.allocations()["total"]


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
_FILE_RUNNERS = {cls.runtime: cls for cls in (TFLiteRunner, TFLMRunner, OnnxRunner)}

# what users call a runtime (``tfopt bench --runtime``) -> the runner's ``runtime``
RUNTIMES = {
    "litert": "tflite",
    "tflite": "tflite",
    "tflm": "tflm",
    "onnxruntime": "onnxruntime",
    "savedmodel": "savedmodel",
    "keras": "keras",
}


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def open_file(runner_cls, path: Path, kind: str, **kwargs):
    """``runner_cls(path, **kwargs)``; a file the runtime cannot read raises `ArtifactError`."""
    from tfopt.errors import ArtifactError, TfoptError

    if path.stat().st_size == 0:
        raise ArtifactError(f"{str(path)!r} is empty (0 bytes): not a {kind} model; re-export it")
    try:
        return runner_cls(path, **kwargs)
    except TfoptError:  # tfopt's own errors say what is wrong (a missing package, ops TFLM lacks)
        raise
    except Exception as e:  # each runtime has its own error types for a corrupt file
        raise ArtifactError(
            f"cannot read {str(path)!r} as a {kind} model (corrupt or truncated?): {_first_line(e)}"
        ) from None


def _options(cls, kwargs: dict) -> dict:
    """The options in ``kwargs`` that ``cls`` takes (num_threads, mode, arena_size)."""
    accepted = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in kwargs.items() if k in accepted and k != "self"}


def check_runtime(runtime: str | None) -> str | None:
    """The runner name of a runtime name (``"litert"`` -> ``"tflite"``), None for None.

    Raises:
        ValueError: ``Unrecognized runtime='x'. Supported runtimes are: [...]``.
    """
    if runtime is None:
        return None
    if runtime not in RUNTIMES:
        raise ValueError(
            f"Unrecognized runtime={runtime!r}. Supported runtimes are: {list(RUNTIMES)}"
        )
    return RUNTIMES[runtime]


def runner_for(artifact, *, runtime: str | None = None, **kwargs):
    """Returns the runner that executes ``artifact``.

    Args:
        artifact: a ``keras.Model``, or a path to a ``.keras``, ``.tflite`` or ``.onnx`` file, a
            SavedModel directory, or a Triton model directory (with ``config.pbtxt``).
        runtime: run it in this runtime instead of its format's (`RUNTIMES`: ``"tflm"`` runs a
            ``.tflite`` file in TFLite Micro, ``"litert"`` in LiteRT). Defaults to None (by the
            artifact's kind).
        **kwargs: runner options (``num_threads`` for TFLite/ONNX, ``mode`` for Keras,
            ``arena_size`` for TFLM).

    Returns:
        A `TFLiteRunner`, `TFLMRunner`, `OnnxRunner`, `SavedModelRunner` or `KerasRunner`.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the kind of artifact is not recognized, or the runtime cannot run it.
    """
    wanted = check_runtime(runtime)
    if isinstance(artifact, str | Path):
        path = Path(artifact)
        if not path.exists():
            raise FileNotFoundError(f"No such artifact: {str(path)!r}")
        if path.is_dir():
            if (path / "config.pbtxt").exists():
                return runner_for(_triton_model(path), runtime=runtime, **kwargs)
            if (path / "saved_model.pb").exists():
                runner = SavedModelRunner
            else:
                raise ValueError(
                    f"Directory {str(path)!r} is neither a SavedModel (saved_model.pb) nor "
                    "a Triton model directory (config.pbtxt)"
                )
        elif path.suffix == ".keras":
            runner = KerasRunner
        else:  # a file a runtime opens: a corrupt one is an ArtifactError
            fmt = formats.by_suffix(path.suffix)
            runner = _FILE_RUNNERS.get(fmt.runtime) if fmt is not None else None
            if runner is None:
                suffixes = ", ".join(formats.runnable_suffixes())
                raise ValueError(
                    f"Unrecognized artifact {str(artifact)!r}. Supported: {suffixes}, "
                    ".keras files, SavedModel or Triton model directories, or a keras.Model"
                )
            if wanted == "tflm" and runner is TFLiteRunner:
                runner = TFLMRunner
        if wanted is not None and runner.runtime != wanted:
            raise ValueError(
                f"runtime={runtime!r} cannot run {str(path)!r}: it runs in {runner.runtime!r}"
                + (" (TFLite Micro runs .tflite files)" if wanted == "tflm" else "")
            )
        if runner in (KerasRunner, SavedModelRunner):
            return runner(path, **_options(runner, kwargs))
        return open_file(runner, path, fmt.name, **_options(runner, kwargs))
    from tfopt._backend import check_model

    check_model(artifact, "artifact")
    if wanted not in (None, "keras"):
        raise ValueError(f"runtime={runtime!r} cannot run a keras.Model; export it first")
    return KerasRunner(artifact, **_options(KerasRunner, kwargs))
