"""Knowledge distillation: train a small (or pruned, quantized, clustered) student from a teacher.

`Distiller` is a `keras.Model`: ``compile`` / ``fit`` / ``evaluate`` / ``predict`` / ``save`` as
usual, with logit distillation (KL at temperature T, scaled by T**2; teachers and students may end
in a softmax), optional feature distillation with learned projections, and optional precomputed
teacher outputs. It builds on Keras 3's ``keras.distillation`` (its ``LogitsDistillation`` and
``FeatureDistillation`` compute the terms; any ``keras.distillation.DistillationLoss`` can be passed
to ``compile``).

Example:
    >>> d = tfopt.distill.Distiller(teacher=big, student=small, temperature=4.0, alpha=0.1)
    >>> d.compile(keras.optimizers.Adam(2e-3), metrics=["accuracy"])
    >>> d.fit(x, y, epochs=10)
    >>> d.save("distiller.keras")          # teacher, student, projections, optimizer state
    >>> d.student.save("student.keras")    # the student alone, to strip and export
"""

from tfopt.distill._distiller import Distiller

__all__ = ["Distiller"]
