"""A Triton Inference Server model repository: ``<repo>/<name>/config.pbtxt`` and
``<repo>/<name>/<version>/model.onnx`` (or ``model.savedmodel``).

The ONNX Runtime backend is the default: Triton deprecated its TensorFlow backend in release
25.03. ``backend="savedmodel"`` still writes a TensorFlow SavedModel entry for older servers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tfopt import _rundir
from tfopt._backend import check_model
from tfopt.errors import OutputDirError
from tfopt.export._common import Artifact, disk_bytes

BACKENDS = {"savedmodel": "tensorflow_savedmodel", "onnx": "onnxruntime_onnx"}
KINDS = ("KIND_CPU", "KIND_GPU", "KIND_AUTO")

_TRITON_TYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "float64": "TYPE_FP64",
    "int8": "TYPE_INT8",
    "uint8": "TYPE_UINT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "bool": "TYPE_BOOL",
}


def _dims(shape) -> str:
    return ", ".join("-1" if d is None else str(int(d)) for d in shape)


def config_pbtxt(
    *,
    name: str,
    platform: str,
    inputs: dict,
    outputs: dict,
    max_batch_size: int,
    dynamic_batching: bool = True,
    preferred_batch_sizes=(),
    max_queue_delay_us: int = 100,
    instance_count: int = 1,
    kind: str = "KIND_CPU",
) -> str:
    """The text of a Triton ``config.pbtxt``.

    ``inputs``/``outputs`` map tensor names to ``(dtype, shape)`` where ``shape`` excludes the batch
    dimension when ``max_batch_size > 0`` (Triton then adds it).
    """
    lines = [f'name: "{name}"', f'platform: "{platform}"', f"max_batch_size: {max_batch_size}"]
    for key, tensors in (("input", inputs), ("output", outputs)):
        entries = []
        for tname, (dtype, shape) in tensors.items():
            entries.append(
                f'  {{\n    name: "{tname}"\n    data_type: {_TRITON_TYPES[np.dtype(dtype).name]}\n'
                f"    dims: [ {_dims(shape)} ]\n  }}"
            )
        lines.append(f"{key} [\n" + ",\n".join(entries) + "\n]")
    if dynamic_batching and max_batch_size > 0:
        body = []
        if preferred_batch_sizes:
            body.append(
                f"  preferred_batch_size: [ {', '.join(str(int(b)) for b in preferred_batch_sizes)} ]"
            )
        body.append(f"  max_queue_delay_microseconds: {int(max_queue_delay_us)}")
        lines.append("dynamic_batching {\n" + "\n".join(body) + "\n}")
    lines.append(
        f"instance_group [\n  {{\n    count: {int(instance_count)}\n    kind: {kind}\n  }}\n]"
    )
    return "\n".join(lines) + "\n"


def _check_args(model, *, backend, kind, version, name, max_batch_size) -> str:
    """Refuses a backend, kind, version, batch size or name `triton` cannot use; returns the
    model's directory name (``name``, else the model's)."""
    check_model(model)
    if backend not in BACKENDS:
        raise ValueError(f"Unrecognized backend={backend!r}. Supported: {sorted(BACKENDS)}")
    if kind not in KINDS:
        raise ValueError(f"Unrecognized kind={kind!r}. Supported: {list(KINDS)}")
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"version must be an int >= 1. Received: version={version!r}")
    if not isinstance(max_batch_size, int) or max_batch_size < 0:
        raise ValueError(
            f"max_batch_size must be an int >= 0. Received: max_batch_size={max_batch_size!r}"
        )
    name = name or model.name
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"name must be a plain directory name. Received: name={name!r}")
    return name


def _tensor_specs(model, info: dict, *, batched: bool) -> tuple[dict, dict]:
    """``(inputs, outputs)``: name -> (dtype, dims) for config.pbtxt; with batching, Triton
    takes the dims without the batch axis."""
    dtype = np.dtype(model.inputs[0].dtype).name
    out_dtype = np.dtype(model.outputs[0].dtype).name
    inputs = {k: (dtype, v[1:] if batched else [1, *v[1:]]) for k, v in info["inputs"].items()}
    outputs = {
        k: (out_dtype, v[1:] if batched else [1, *v[1:]]) for k, v in info["outputs"].items()
    }
    return inputs, outputs


def triton(
    model,
    repository,
    *,
    name: str | None = None,
    version: int = 1,
    backend: str = "onnx",
    max_batch_size: int = 64,
    dynamic_batching: bool = True,
    preferred_batch_sizes=(),
    max_queue_delay_us: int = 100,
    instance_count: int = 1,
    kind: str = "KIND_CPU",
    opset: int = 17,
    overwrite: bool = False,
    check_data=None,
    min_agreement: float | None = None,
    atol: float | None = None,
) -> Artifact:
    """Writes a Triton Inference Server model repository entry for a Keras model.

    Layout: ``<repository>/<name>/config.pbtxt`` and ``<repository>/<name>/<version>/model.onnx``
    (backend ``"onnx"``, platform ``onnxruntime_onnx``) or ``.../model.savedmodel`` (backend
    ``"savedmodel"``, platform ``tensorflow_savedmodel``; Triton deprecated its TensorFlow
    backend in 25.03). The model is exported with a dynamic batch dimension
    and parity-checked like `savedmodel` / `onnx`; ``config.pbtxt`` declares its inputs and outputs
    (names, types, dims without the batch dimension), ``max_batch_size`` and ``dynamic_batching``.
    Serve it with ``tritonserver --model-repository=<repository>``.

    Args:
        model: a Keras 3 model with one input and one output.
        repository: the model repository directory (created if needed).
        name: the model's name in the repository. Defaults to ``model.name``.
        version: the version directory. Defaults to 1.
        backend: ``"onnx"`` (the ONNX Runtime backend) or ``"savedmodel"`` (the TensorFlow
            backend, deprecated by Triton in 25.03). Defaults to "onnx".
        max_batch_size: the largest batch Triton may form. Defaults to 64.
        dynamic_batching: let Triton group requests into batches. Defaults to True.
        preferred_batch_sizes: batch sizes the dynamic batcher aims for. Defaults to () (none).
        max_queue_delay_us: how long a request may wait for a batch to fill. Defaults to 100.
        instance_count: model instances (each serves one batch at a time). Defaults to 1.
        kind: ``"KIND_CPU"``, ``"KIND_GPU"`` or ``"KIND_AUTO"``. Defaults to "KIND_CPU".
        opset: the ONNX opset (backend ``"onnx"``). Defaults to 17.
        overwrite: replace an existing version directory. Defaults to False.
        check_data: inputs for the parity check. Defaults to 64 random normal inputs.
        min_agreement: passed to the format's check. Defaults to the format's tolerance.
        atol: passed to the format's check. Defaults to the format's tolerance.

    Returns:
        An `Artifact` (format ``"triton"``) whose path is ``<repository>/<name>``; ``info`` has the
        platform, the model file and the config text; ``check`` is the exported model's check.

    Raises:
        ValueError: an unknown backend or kind, a bad name, version or batch size.
        FileExistsError: the version directory exists and ``overwrite`` is False.
        ExportCheckError: the exported model disagrees with Keras beyond the tolerance.

    Example:
        >>> art = tfopt.export.triton(model, "model_repository", backend="onnx")
        >>> print((art.path / "config.pbtxt").read_text())
    """
    name = _check_args(model, backend=backend, kind=kind, version=version, name=name,
                       max_batch_size=max_batch_size)  # fmt: skip
    model_dir = Path(repository) / name
    version_dir = model_dir / str(version)
    if version_dir.exists():
        if not overwrite:
            raise OutputDirError(
                f"Triton model version {str(version_dir)!r} exists; pass overwrite=True "
                "(--overwrite) or another version"
            )
        _rundir.remove(version_dir, what="Triton model version")  # only one that tfopt wrote
    version_dir.mkdir(parents=True)
    _rundir.mark(version_dir, "tfopt export")
    checks = dict(check_data=check_data, min_agreement=min_agreement, atol=atol)
    if backend == "onnx":
        from tfopt.export._onnx import onnx

        inner = onnx(model, version_dir / "model.onnx", opset=opset, **checks)
    else:
        from tfopt.export._savedmodel import savedmodel

        inner = savedmodel(model, version_dir / "model.savedmodel", **checks)
    inputs, outputs = _tensor_specs(model, inner.info, batched=max_batch_size > 0)
    text = config_pbtxt(
        name=name,
        platform=BACKENDS[backend],
        inputs=inputs,
        outputs=outputs,
        max_batch_size=max_batch_size,
        dynamic_batching=dynamic_batching,
        preferred_batch_sizes=preferred_batch_sizes,
        max_queue_delay_us=max_queue_delay_us,
        instance_count=instance_count,
        kind=kind,
    )
    (model_dir / "config.pbtxt").write_text(text)
    info = {
        "platform": BACKENDS[backend],
        "model_file": str(inner.path),
        "version": version,
        "inputs": inner.info["inputs"],
        "outputs": inner.info["outputs"],
        "config_pbtxt": text,
    }
    return Artifact(
        path=model_dir, format="triton", bytes=disk_bytes(model_dir), check=inner.check, info=info
    )
