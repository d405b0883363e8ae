"""The ``distill`` recipe step: train a student from a teacher (the baseline or a ``.keras`` file)."""

from __future__ import annotations

from tfopt.config._steps import DistillStepConfig


def run(cfg: DistillStepConfig, model, ctx):
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
        from tfopt._rewrite import clone

        student = clone(model, action="distill")
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
