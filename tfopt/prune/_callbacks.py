"""`PruningSummaries`: per-layer sparsity in TensorBoard, and a check of the schedule against fit."""

from __future__ import annotations

import numbers
import os

from tfopt._backend import import_keras

keras = import_keras()


class PruningSummaries(keras.callbacks.Callback):
    """Writes each pruned layer's sparsity (and the global one) to TensorBoard.

    The masks update without this callback; it only reports. At the start of ``fit`` it also
    checks every schedule against the steps that fit will run (``epochs * steps_per_epoch`` from
    the model's current pruning step) and warns with `PruningScheduleWarning` when the target
    sparsity cannot be reached, and after the first batch it raises if the wrappers did not see a
    training call (a subclassed model whose ``call`` has no ``training`` argument).

    Tags: ``sparsity/<layer name>``, ``sparsity/global`` and ``pruning/step``.

    Args:
        log_dir: the TensorBoard log directory (created if needed).
        update_freq: ``"epoch"`` to write at the end of each epoch (step = epoch index), or an
            int N to write every N batches (step = the pruning step). Defaults to "epoch".

    Raises:
        ValueError: an invalid ``update_freq`` or an empty ``log_dir``; at fit start, a model
            without pruning wrappers.

    Example:
        >>> pruned.fit(x, y, epochs=5, callbacks=[PruningSummaries("logs/prune")])
    """

    def __init__(self, log_dir: str | os.PathLike, *, update_freq: str | int = "epoch"):
        super().__init__()
        if not str(log_dir):
            raise ValueError(f"log_dir must be a directory path. Received: log_dir={log_dir!r}")
        if update_freq != "epoch" and (
            isinstance(update_freq, bool)
            or not isinstance(update_freq, numbers.Integral)
            or update_freq < 1
        ):
            raise ValueError(
                f"update_freq must be 'epoch' or an int >= 1. Received: update_freq={update_freq!r}"
            )
        self.log_dir = os.fspath(log_dir)
        self.update_freq = update_freq
        self._writer = None
        self._wrappers = []
        self._start = None
        self._batch = 0

    def on_train_begin(self, logs=None):
        import tensorflow as tf

        from tfopt.prune._prune import wrappers_of

        self._wrappers = wrappers_of(self.model)
        if not self._wrappers:
            raise ValueError(
                f"PruningSummaries: model {self.model.name!r} has no pruning wrappers. Pass the "
                "model returned by tfopt.prune.prune (not the stripped or original model)."
            )
        self._start = self._wrappers[0].step
        epochs, steps = self.params.get("epochs"), self.params.get("steps")
        if epochs and steps:
            checked = set()
            for w in self._wrappers:
                if w.schedule not in checked:
                    checked.add(w.schedule)
                    w.schedule.check(int(epochs) * int(steps), start_step=w.step)
        os.makedirs(self.log_dir, exist_ok=True)
        self._writer = tf.summary.create_file_writer(self.log_dir)
        self._batch = 0

    def on_train_batch_end(self, batch, logs=None):
        self._batch += 1
        if self._batch == 1 and self._wrappers[0].step == self._start:
            raise RuntimeError(
                "The pruning wrappers did not see a training call, so their masks would never "
                "update. Keras passes training=True only to models whose call() accepts a "
                "`training` argument: add `training=None` to your model's call()."
            )
        if self.update_freq != "epoch" and self._batch % self.update_freq == 0:
            self._write(self._wrappers[0].step)

    def on_epoch_end(self, epoch, logs=None):
        if self.update_freq == "epoch":
            self._write(epoch)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None

    def _write(self, step: int) -> None:
        import tensorflow as tf

        from tfopt.prune._prune import sparsity

        report = sparsity(self.model)
        with self._writer.as_default(step=int(step)):
            for name, values in report.layers.items():
                tf.summary.scalar(f"sparsity/{name}", values["sparsity"])
            tf.summary.scalar("sparsity/global", report.global_sparsity)
            tf.summary.scalar("pruning/step", self._wrappers[0].step)
        self._writer.flush()
