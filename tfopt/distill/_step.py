"""The ``distill`` recipe step: train a student from a teacher (the baseline or a ``.keras`` file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tfopt.config import StepConfig
from tfopt.config._base import MAX_EPOCHS
from tfopt.config._train import AugmentConfig


class Config(StepConfig):
    """``{type: distill, teacher: null, student: {model: mnist1d_cnn, width: 16}, ...}``.

    ``teacher``: None (the run's trained baseline) or a ``.keras`` path. ``student``: None (the
    current model, i.e. the output of the previous step, copied) or ``{model: <zoo name>,
    <builder options>...}`` for a new zoo model, e.g. half the width. ``augment``: the
    training-only transforms of ``train.augment`` (noise, shift, scale, flip, crop; ``mixup`` is
    the Distiller's mixup), applied before both teacher and student (`tfopt.distill.Distiller`'s
    ``augment``/``mixup``); the teacher then runs online. ``precompute_teacher``: None runs the
    teacher once up front unless ``augment`` is active.
    """

    type: Literal["distill"] = "distill"
    teacher: str | None = None
    student: dict[str, Any] | None = None
    temperature: float = Field(4.0, gt=0.0)
    alpha: float = Field(0.1, ge=0.0, le=1.0)  # weight of the hard-label loss
    features: dict[str, str] = Field(default_factory=dict)  # teacher layer -> student layer
    feature_weight: float = Field(1.0, ge=0.0)
    precompute_teacher: bool | None = None
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    epochs: int = Field(30, ge=1, le=MAX_EPOCHS)
    learning_rate: float = Field(2e-3, gt=0.0)

    @model_validator(mode="after")
    def _online_teacher(self):
        if self.precompute_teacher and self.augment.active():
            raise ValueError(
                "augment needs the teacher online (it labels the augmented inputs): drop "
                "precompute_teacher or set it to false"
            )
        return self

    @field_validator("teacher")
    @classmethod
    def _keras_file(cls, v: str | None) -> str | None:
        if v is not None and not v.endswith(".keras"):
            raise ValueError(f"must be a .keras file (or null for the baseline). Received: {v!r}")
        if v is not None and not Path(v).is_file():
            raise ValueError(f"no such .keras file: {v!r}")
        return v

    @field_validator("student")
    @classmethod
    def _zoo_model(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is None:
            return v
        from tfopt.config._checks import check_model_options
        from tfopt.models import MODELS

        name = v.get("model")
        if name not in MODELS:
            raise ValueError(
                f"student.model must name a zoo model {sorted(MODELS)}. Received: model={name!r}"
            )
        check_model_options(name, {k: x for k, x in v.items() if k != "model"}, what="model")
        return v


def _copy(model):
    from tfopt._backend import import_keras

    keras = import_keras()
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def run(cfg: Config, model, ctx):
    """Distils the teacher into the student and returns the trained student."""
    from tfopt._backend import import_keras
    from tfopt.distill import Distiller
    from tfopt.models import get, load

    keras = import_keras()
    if cfg.teacher is not None:
        teacher = load(cfg.teacher)
    elif ctx.baseline is not None:
        teacher = ctx.baseline
    else:
        raise ValueError("distill: no teacher (set teacher: path.keras, or run a baseline first)")
    if cfg.student is None:
        student = _copy(model)
    else:
        options = {k: v for k, v in cfg.student.items() if k != "model"}
        student = get(
            cfg.student["model"],
            input_shape=ctx.data.input_shape,
            num_classes=ctx.data.num_classes,
            **options,
        )
    ctx.log(
        f"      teacher {teacher.name} ({teacher.count_params():,} params) -> student "
        f"{student.name} ({student.count_params():,} params), T={cfg.temperature} alpha={cfg.alpha}"
    )
    from tfopt._training import augmentation_layers

    augmenting = cfg.augment.active()
    distiller = Distiller(
        teacher=teacher,
        student=student,
        temperature=cfg.temperature,
        alpha=cfg.alpha,
        features=cfg.features or None,
        feature_weight=cfg.feature_weight,
        precompute_teacher=not augmenting
        if cfg.precompute_teacher is None
        else cfg.precompute_teacher,
        augment=augmentation_layers(cfg.augment, ctx.data.input_shape, seed=ctx.seed),
        mixup=cfg.augment.mixup,
    )
    distiller.compile(keras.optimizers.Adam(cfg.learning_rate), metrics=["accuracy"])
    tb = ctx.summaries(lambda d: keras.callbacks.TensorBoard(str(d), write_graph=False), "")
    from tfopt._training import fit_arrays

    history = fit_arrays(
        distiller,
        ctx.data.x_train,
        ctx.data.y_train,
        batch_size=ctx.batch_size,
        seed=ctx.seed,
        epochs=cfg.epochs,
        validation_data=ctx.data.val,
        callbacks=tb,
        verbose=ctx.verbose,
    )
    ctx.compile(student, cfg.learning_rate)
    ctx.record("teacher_params", int(teacher.count_params()))
    ctx.record("student_params", int(student.count_params()))
    ctx.record("val_accuracy", float(history.history["val_accuracy"][-1]))
    return student
