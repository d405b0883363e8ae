"""The recipe engine: a recipe is a list of stage configs; each stage runs itself on a model.

``STEPS`` maps a stage's ``type`` to the module that runs it:
``def run(cfg, model: keras.Model, ctx: StepContext) -> keras.Model`` and optionally
``def preflight(cfg, model, ctx)``. ``cfg`` is the step's options, validated at the edge by
`tfopt.config.validate_steps` (the classes of `tfopt.config.STEP_CONFIGS`, keyed by the same
types); step modules only read it.

`run_steps` is the one loop that applies a recipe: `tfopt run` (`tfopt._pipeline`), a KerasTuner
trial (`tfopt.tune.Tuner`) and `tfopt auto` all build `StepConfig` objects and hand them to it, so
any searched recipe is a `tfopt run` config. This module imports no TensorFlow at import time.
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STEPS: dict[str, str] = {
    "prune": "tfopt.prune._step",
    "qat": "tfopt.quantize._step",
    "cluster": "tfopt.cluster._step",
    "distill": "tfopt.distill._step",
    "prune_channels": "tfopt.prune._channels_step",
    "lowrank": "tfopt.lowrank._step",
}


def step_module(step_type: str):
    """Imports and returns the module that implements ``step_type``."""
    return importlib.import_module(STEPS[step_type])


_logger = logging.getLogger(__name__)


@dataclass
class StepContext:
    """What a recipe step gets besides its config and the current model (see CONTRIBUTING.md).

    ``step`` is the config of the stage being run (set by `run_steps`): `fit` applies its
    fine-tuning options (``lr_schedule``, ``batch_size``, ``distill``) when it has them.
    ``tensorboard=False`` writes no TensorBoard logs and ``validate=False`` skips the per-epoch
    validation (search trials, which measure through the exported artifact instead); ``quiet=True``
    logs the progress lines at DEBUG instead of INFO (search trials).
    """

    data: Any  # tfopt.data.Dataset
    run_dir: Path
    baseline: Any = None  # the trained float model: the teacher of distillation
    batch_size: int = 64
    verbose: int = 1
    seed: int = 0
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    stage: str = "baseline"
    step: Any = None
    tensorboard: bool = True
    validate: bool = True
    quiet: bool = False
    strategy: Any = None  # a tf.distribute.Strategy (tfopt.train.make_strategy), or None

    def scope(self):
        """The strategy's ``scope()`` (a no-op without one): build and compile models inside it."""
        from contextlib import nullcontext

        return self.strategy.scope() if self.strategy is not None else nullcontext()

    def log(self, msg: str) -> None:
        """One progress line on the ``tfopt._steps`` logger (the CLI shows INFO lines)."""
        _logger.log(logging.DEBUG if self.quiet else logging.INFO, "[tfopt] %s", msg)

    def log_dir(self, stage: str | None = None) -> Path:
        return Path(self.run_dir) / "logs" / (stage or self.stage)

    def summaries(self, make: Callable[[Path], Any], subdir: str) -> list:
        """``[make(log_dir() / subdir)]`` when TensorBoard logs are on, else ``[]``."""
        return [make(self.log_dir() / subdir)] if self.tensorboard else []

    def compile(self, model, learning_rate) -> None:
        """Adam + sparse categorical cross-entropy (from logits unless the model outputs
        probabilities: `tfopt._training.outputs_logits`, the one logits rule) + accuracy."""
        from tfopt._training import compile_classifier

        compile_classifier(model, learning_rate)

    def fit(
        self,
        model,
        *,
        epochs: int,
        learning_rate: float,
        stage: str | None = None,
        callbacks=(),
        batch_size: int | None = None,
        compile: bool = True,
        initial_epoch: int = 0,
    ):
        """Fine-tunes ``model`` on the training data, validated on the validation data.

        The current step's options apply: ``batch_size`` (else ``self.batch_size``),
        ``lr_schedule="cosine"`` (cosine decay to 5% over the run) and ``distill`` (train through
        a `tfopt.distill.Distiller` with ``self.baseline`` as the teacher; ``model`` is compiled
        plainly afterwards). Under a strategy, call it inside `scope` (as `run_steps` does), where
        the model was built. ``initial_epoch`` resumes the epoch count (``epochs`` is the
        index of the last epoch, as in `keras.Model.fit`).
        """
        from tfopt._backend import import_keras

        keras = import_keras()
        opts = self.step
        batch = batch_size or getattr(opts, "batch_size", None) or self.batch_size
        lr = learning_rate
        if getattr(opts, "lr_schedule", "constant") == "cosine":
            steps = max(1, int(epochs) * math.ceil(len(self.data.x_train) / batch))
            lr = keras.optimizers.schedules.CosineDecay(learning_rate, steps, alpha=0.05)
        teacher = getattr(opts, "distill", None)
        trainer = model
        if teacher is not None:
            from tfopt.distill import Distiller

            if self.baseline is None:
                raise ValueError(
                    f"step {self.stage!r}: distill needs a teacher (the run's baseline); none is set"
                )
            trainer = Distiller(
                teacher=self.baseline,
                student=model,
                temperature=teacher.temperature,
                alpha=teacher.alpha,
                precompute_teacher=True,
            )
            trainer.compile(optimizer=keras.optimizers.Adam(lr), metrics=["accuracy"])
        elif compile:
            self.compile(model, lr)
        from tfopt.train import prepare_fit

        prepare_fit(trainer)  # a multi-worker strategy needs it (Keras 3)
        if self.tensorboard:
            tb = keras.callbacks.TensorBoard(str(self.log_dir(stage)), write_graph=False)
            callbacks = [tb, *callbacks]
        from tfopt._training import fit_arrays

        history = fit_arrays(
            trainer,
            self.data.x_train,
            self.data.y_train,
            batch_size=batch,
            seed=self.seed,
            epochs=epochs,
            initial_epoch=initial_epoch,
            validation_data=self.data.val if self.validate else None,
            callbacks=list(callbacks),
            verbose=self.verbose,
        )
        if teacher is not None:
            self.compile(model, learning_rate)
        return history

    def record(self, key: str, value: Any) -> None:
        self.records.setdefault(self.stage, {})[key] = value


def check_filters_match(filters, model) -> None:
    """Raises ValueError when the regex ``filters`` select no layer of ``model``."""
    if filters is None or callable(filters) or model is None:
        return
    from tfopt._rewrite import layer_filter

    select = layer_filter(filters)
    if not any(select(layer) for layer in model.layers):
        names = [layer.name for layer in model.layers]
        raise ValueError(
            f"filters={filters!r} select no layer of model {model.name!r}. Its layers: {names}"
        )


def check_model_matches_data(model, data) -> None:
    """Raises `tfopt.errors.DataError` (one line) when ``model`` cannot train on ``data``: another
    input shape, fewer output units than classes, integer labels that are not class indices, or
    a forward pass of two training samples that fails."""
    import numpy as np

    from tfopt.errors import DataError

    if model is None or data is None:
        return
    where = f"model {model.name!r} and data {data.name!r}"
    expected = tuple(model.input_shape[1:]) if not isinstance(model.input_shape, list) else None
    got = tuple(data.input_shape)
    if expected is not None and len(expected) != len(got):
        raise DataError(
            f"{where}: the model takes inputs of shape {expected}, the data's samples have shape "
            f"{got}. Reshape x (e.g. add the channel axis with x[..., None]) or use another model"
        )
    if expected is not None and any(e not in (None, g) for e, g in zip(expected, got)):
        raise DataError(
            f"{where}: the model takes inputs of shape {expected}, the data's samples have "
            f"shape {got}"
        )
    y = np.asarray(data.y_train)
    if y.ndim != 1:
        raise DataError(
            f"{where}: labels must be class indices of shape (n,); received y_train of shape "
            f"{y.shape} (one-hot? use y.argmax(axis=1))"
        )
    units = model.output_shape[-1] if not isinstance(model.output_shape, list) else None
    if units is not None and units < int(data.num_classes):
        raise DataError(
            f"{where}: the model has {units} outputs, the data has {data.num_classes} classes "
            f"(labels up to {int(y.max())}); give a model with {data.num_classes} outputs"
        )
    try:
        model(np.asarray(data.x_train[:2]), training=False)
    except Exception as e:
        line = " ".join(str(e).split())[:300]
        raise DataError(f"{where}: the model fails on two training samples: {line}") from None


def preflight(steps: Sequence, model, ctx: StepContext) -> None:
    """Checks ``steps`` against the model and data before anything trains (first the model
    against the data: `check_model_matches_data`).

    Each step module may define ``preflight(cfg, model, ctx)``, raising ValueError for a setting
    that cannot work (a pruning schedule that ends after the fine-tuning, filters that select
    nothing); ``model`` is None once a step has replaced the model with another architecture.

    Raises:
        ConfigError: ``steps[i] (<stage>): <the step's message>``.
    """
    from tfopt.errors import ConfigError

    check_model_matches_data(model, ctx.data)
    for i, step in enumerate(steps):
        check = getattr(step_module(step.type), "preflight", None)
        if check is not None:
            try:
                check(step, model, ctx)
            except ValueError as e:
                raise ConfigError(f"steps[{i}] ({stage_name(step, i)}): {e}") from None
        if step.type == "distill" and getattr(step, "student", None) is not None:
            model = None  # a new student: its layers are not known yet


def stage_name(step, index: int) -> str:
    """The stage's name in reports, logs and file names: ``name`` or ``<index+1>_<type>``."""
    return step.name or f"{index + 1}_{step.type}"


def run_steps(
    steps: Sequence,
    model,
    ctx: StepContext,
    *,
    seed: int | None = None,
    on_start: Callable[[str, Any], None] | None = None,
    on_step: Callable[[str, Any, Any], None] | None = None,
):
    """Applies the recipe ``steps`` (validated `StepConfig` objects) to ``model`` in order.

    Args:
        steps: the stage configs.
        model: the model the first stage starts from (stages copy it; it is not changed).
        ctx: the `StepContext` (data, teacher, fit, logs, records).
        seed: when given, ``keras.utils.set_random_seed(seed)`` runs first, so a recipe gives the
            same model whatever ran before it (`tfopt run` and `tfopt auto` both pass the run's
            seed). Defaults to None.
        on_start: called as ``on_start(stage, step)`` before each stage. Defaults to None.
        on_step: called as ``on_step(stage, step, model)`` after each stage. Defaults to None.

    Returns:
        The model the last stage returned (``model`` itself when ``steps`` is empty).
    """
    if seed is not None:
        from tfopt._backend import import_keras

        import_keras().utils.set_random_seed(seed)
    for i, step in enumerate(steps):
        ctx.stage = stage_name(step, i)
        ctx.step = step
        if on_start is not None:
            on_start(ctx.stage, step)
        try:
            with ctx.scope():  # the step builds its models under the run's strategy
                model = step_module(step.type).run(step, model, ctx)
        finally:
            ctx.step = None
        if on_step is not None:
            on_step(ctx.stage, step, model)
    return model
