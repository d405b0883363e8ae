"""SavedModel export with a ``serving_default`` signature (what TF Serving and Triton call)."""

from __future__ import annotations

from pathlib import Path

from tfopt import _rundir
from tfopt._backend import check_model, quiet
from tfopt.errors import OutputDirError
from tfopt.export._common import (
    Artifact,
    check_inputs,
    disk_bytes,
    graph_model,
    input_name,
    single_input,
    verify,
)


def savedmodel(
    model,
    path,
    *,
    dynamic_batch: bool = True,
    overwrite: bool = False,
    check_data=None,
    min_agreement: float | None = None,
    atol: float | None = None,
) -> Artifact:
    """Exports a Keras model as a TensorFlow SavedModel with a serving signature, checked by loading
    it back with `tf.saved_model.load` and calling the signature.

    The ``serving_default`` signature takes one float tensor named after the Keras input layer and
    returns ``{"output_0": logits}``; point TF Serving at ``path``'s parent with a version directory
    (e.g. ``models/mnist/1``).

    Args:
        model: a Keras 3 model with one input and one output.
        path: the SavedModel directory to create.
        dynamic_batch: leave the batch dimension as None. Defaults to True (False fixes it to 1).
        overwrite: replace an existing directory. Defaults to False.
        check_data: inputs for the parity check. Defaults to 64 random normal inputs.
        min_agreement: the argmax agreement below which the check fails. Defaults to 0.99.
        atol: the largest accepted max abs difference, as a fraction of the largest Keras output
            (floored at 1). Defaults to 1e-4.

    Returns:
        An `Artifact` (format ``"savedmodel"``); ``info`` has the signature's input/output names.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        ExportCheckError: the reloaded signature disagrees with Keras beyond the tolerance.

    Example:
        >>> art = tfopt.export.savedmodel(model, "serving/mnist/1")
        >>> art.info["signature"]
        'serving_default'
    """
    check_model(model)
    model = graph_model(model)
    tensor = single_input(model, "savedmodel")
    import tensorflow as tf

    from tfopt.bench._runners import SavedModelRunner

    path = Path(path)
    if path.exists():
        if not overwrite:
            raise OutputDirError(
                f"SavedModel directory {str(path)!r} exists; pass overwrite=True (--overwrite) "
                "or another path"
            )
        _rundir.remove(path, what="SavedModel directory")  # only one that tfopt wrote
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = None if dynamic_batch else 1
    spec = tf.TensorSpec((batch, *model.input_shape[1:]), tensor.dtype, name=input_name(model))
    with quiet():
        model.export(str(path), format="tf_saved_model", verbose=False, input_signature=[spec])
    _rundir.mark(path, "tfopt export")  # so that overwrite=True may replace it later
    runner = SavedModelRunner(path)
    out = runner._fn.structured_outputs[runner.output_name]
    info = {
        "signature": runner.signature,
        "inputs": {runner.input_name: runner.shape_signature},
        "outputs": {runner.output_name: [None if d is None else int(d) for d in out.shape]},
        "dynamic_batch": dynamic_batch,
    }
    x = check_inputs(model, check_data)
    if not dynamic_batch:
        from tfopt.export._onnx import _OneByOne

        runner_check = _OneByOne(runner)
        x = x[:64]
    else:
        runner_check = runner
    check = verify(
        model, runner_check, x, fmt="savedmodel", path=path, min_agreement=min_agreement, atol=atol
    )
    return Artifact(path=path, format="savedmodel", bytes=disk_bytes(path), check=check, info=info)
