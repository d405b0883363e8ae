"""`QuantizationSummaries`: the learned int8 ranges of a QAT model, written to TensorBoard."""

from __future__ import annotations

import os

from tfopt._backend import import_keras
from tfopt.quantize._layers import ActivationQuantizer

keras = import_keras()


def range_trackers(model) -> dict[str, ActivationQuantizer]:
    """Returns the model's activation range trackers by path (``wrapper/output_range``, ...).

    Args:
        model: a QAT model returned by `tfopt.quantize.qat`.

    Returns:
        A dict from a readable name to the `ActivationQuantizer`, in model order.
    """
    found: dict[str, ActivationQuantizer] = {}

    def visit(layer, prefix):
        for sub in layer._layers if hasattr(layer, "_layers") else []:
            name = f"{prefix}{sub.name}"
            if isinstance(sub, ActivationQuantizer):
                found.setdefault(name, sub)
            else:
                visit(sub, f"{name}/")

    visit(model, "")
    return found


class QuantizationSummaries(keras.callbacks.Callback):
    """Writes each tracked activation range (min, max) and the int8 step size to TensorBoard.

    Tags are ``quantization/<layer path>/min``, ``.../max`` and ``.../scale`` (``(max - min) / 255``),
    written at the end of every epoch (and every ``update_freq`` batches if it is an int); the
    TensorBoard step is the number of training batches seen.

    Args:
        log_dir: directory of the TensorBoard event files (created if missing).
        update_freq: ``"epoch"``, or write every this many batches as well. Defaults to "epoch".

    Raises:
        ValueError: an empty ``log_dir`` or a bad ``update_freq``.
        TypeError: the model has no tfopt QAT layers (raised when training starts).

    Example:
        >>> q.fit(x, y, callbacks=[tfopt.callbacks.QuantizationSummaries("logs/qat")])
    """

    def __init__(self, log_dir, *, update_freq: str | int = "epoch"):
        super().__init__()
        if not log_dir:
            raise ValueError(f"log_dir must be a directory path. Received: log_dir={log_dir!r}")
        if update_freq != "epoch" and not (isinstance(update_freq, int) and update_freq >= 1):
            raise ValueError(
                f"update_freq must be 'epoch' or an int >= 1. Received: update_freq={update_freq!r}"
            )
        self.log_dir = os.fspath(log_dir)
        self.update_freq = update_freq
        self._writer = None
        self._step = 0
        self._trackers: dict[str, ActivationQuantizer] = {}

    def on_train_begin(self, logs=None):
        import tensorflow as tf

        self._trackers = range_trackers(self.model)
        if not self._trackers:
            raise TypeError(
                f"QuantizationSummaries needs a QAT model from tfopt.quantize.qat(); model "
                f"{self.model.name!r} has no ActivationQuantizer layers."
            )
        os.makedirs(self.log_dir, exist_ok=True)
        self._writer = tf.summary.create_file_writer(self.log_dir)

    def _write(self, step: int) -> None:
        import tensorflow as tf

        with self._writer.as_default():
            for name, q in self._trackers.items():
                lo, hi = float(q.range_min.numpy()), float(q.range_max.numpy())
                tf.summary.scalar(f"quantization/{name}/min", lo, step=step)
                tf.summary.scalar(f"quantization/{name}/max", hi, step=step)
                tf.summary.scalar(
                    f"quantization/{name}/scale", (max(hi, 0) - min(lo, 0)) / 255, step=step
                )
        self._writer.flush()

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self.update_freq != "epoch" and self._step % self.update_freq == 0:
            self._write(self._step)

    def on_epoch_end(self, epoch, logs=None):
        self._write(self._step)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
