"""`Distiller`: a `keras.Model` that trains a student from a frozen teacher and the labels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from tfopt._backend import check_model, import_keras

keras = import_keras()
ops = keras.ops
from keras.src.losses.losses import LossFunctionWrapper  # noqa: E402  (not in the public API)

_LABELS = "labels"
_TEACHER = "teacher"
_FINAL = "final_output"


class _Scratch:
    """Plain holder (not tracked by Keras) for tensors passed from ``call`` to ``compute_loss``."""

    features = None


def _as_loss(loss, arg: str):
    """A `keras.losses.Loss` from a name, a Loss or a function ``(y_true, y_pred) -> per-sample``."""
    if isinstance(loss, keras.losses.Loss):
        return loss
    if isinstance(loss, str):
        fn = keras.losses.get(loss)
        if fn is None:
            raise ValueError(f"Unknown loss {arg}={loss!r}")
        return fn if isinstance(fn, keras.losses.Loss) else LossFunctionWrapper(fn)
    if callable(loss):
        return LossFunctionWrapper(loss)
    raise TypeError(
        f"{arg} must be a loss name, a keras.losses.Loss or a function. Received: {arg}={loss!r}"
    )


def _outputs_probabilities(model) -> bool:
    """True when a Functional/Sequential model ends with a softmax (probabilities, not logits)."""
    from keras.src.models.functional import Functional

    if not isinstance(model, Functional | keras.Sequential) or not model.layers:
        return False
    last = model.layers[-1]
    if isinstance(last, keras.layers.Softmax):
        return True
    act = getattr(last, "activation", None)
    return act is keras.activations.softmax or getattr(act, "__name__", "") == "softmax"


def _feature_pairs(features) -> list[tuple[str, str]]:
    if features is None:
        return []
    items = features.items() if isinstance(features, Mapping) else features
    pairs = []
    for item in items:
        if isinstance(item, str):
            item = (item, item)
        if not (
            isinstance(item, Sequence) and len(item) == 2 and all(isinstance(n, str) for n in item)
        ):
            raise TypeError(
                "features must map teacher layer names to student layer names: a dict, a list of "
                f"(teacher_layer, student_layer) pairs, or a list of names shared by both. Received: "
                f"features={features!r}"
            )
        pairs.append((item[0], item[1]))
    return pairs


def _inputs(model):
    return model.inputs[0] if len(model.inputs) == 1 else model.inputs


def _layer(model, name: str, role: str):
    try:
        return model.get_layer(name)
    except ValueError:
        names = [layer.name for layer in model.layers]
        raise ValueError(f"The {role} has no layer named {name!r}. Its layers: {names}") from None


class Distiller(keras.Model):
    """Trains ``student`` to match a frozen ``teacher`` (logits and, optionally, features) and labels.

    The loss minimised by ``fit`` is::

        loss = alpha * student_loss(y, s)
             + (1 - alpha) * (T**2 * KL(softmax(t / T) || softmax(s / T))
                              + feature_weight * sum_i feature_loss(t_i, P_i(s_i)))
             + the student's regularization losses

    where ``s``/``t`` are the student/teacher logits, ``T`` the temperature, ``t_i``/``s_i`` the
    outputs of the named intermediate layers and ``P_i`` a learned linear projection (a bias-free
    Dense on the channel axis) used when the widths differ (identity otherwise). So ``alpha`` is the
    weight of the hard-label loss (the convention of ``keras.distillation.Distiller``'s
    ``student_loss_weight`` and of the Keras knowledge-distillation example); ``alpha=1`` is plain
    training, ``alpha=0`` pure distillation.

    The teacher is called with ``training=False`` and is never updated; it is *not* tracked by the
    distiller (its ``trainable`` flag is left as the user set it, its weights are not in
    ``distiller.weights``). The student is trained in place: save it with
    ``distiller.student.save(path)``. ``predict`` returns the student's logits; the compiled
    metrics are computed on the student. ``evaluate`` also reports ``student_loss`` and
    ``distillation_loss``.

    Args:
        teacher: a trained Keras 3 model that outputs logits.
        student: the Keras 3 model to train (logits with the teacher's output shape). It may hold
            custom layers (tfopt pruning, QAT or clustering wrappers).
        temperature: softmax temperature ``T`` > 0. Defaults to 4.0.
        alpha: weight of the hard-label loss, in [0, 1]. Defaults to 0.1.
        features: intermediate layers to match: a dict ``{teacher_layer: student_layer}``, a list of
            pairs, or a list of names present in both models (Functional/Sequential models only).
            Defaults to None (logits only).
        feature_loss: loss between teacher features and projected student features.
            Defaults to "mse".
        feature_weight: weight of each feature term inside the distillation part. Defaults to 1.0.
        precompute_teacher: run the teacher once over ``x`` when ``fit`` starts (NumPy ``x``), not
            at every step; the teacher outputs travel with the labels through shuffling and
            batching. Do not combine with random data augmentation. Defaults to False.
        name: the model's name. Defaults to "distiller".

    Raises:
        TypeError: teacher or student is not a Keras 3 model; bad ``features``.
        ValueError: ``temperature`` <= 0, ``alpha`` outside [0, 1], output or input shapes that
            differ, a model that outputs probabilities, unknown feature layers, or feature maps
            whose non-channel dimensions differ.

    Example:
        >>> d = tfopt.distill.Distiller(teacher=big, student=small, temperature=4.0, alpha=0.1)
        >>> d.compile(keras.optimizers.Adam(2e-3), metrics=["accuracy"])
        >>> d.fit(x, y, epochs=10, validation_data=(xv, yv))
        >>> d.student.save("student.keras")
    """

    def __init__(
        self,
        teacher,
        student,
        *,
        temperature: float = 4.0,
        alpha: float = 0.1,
        features=None,
        feature_loss="mse",
        feature_weight: float = 1.0,
        precompute_teacher: bool = False,
        name: str = "distiller",
        **kwargs,
    ):
        check_model(teacher, "teacher")
        check_model(student, "student")
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, int | float)
            or temperature <= 0
        ):
            raise ValueError(
                f"temperature must be a number > 0. Received: temperature={temperature!r}"
            )
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be a number in [0, 1]. Received: alpha={alpha!r}")
        if (
            isinstance(feature_weight, bool)
            or not isinstance(feature_weight, int | float)
            or feature_weight < 0
        ):
            raise ValueError(
                f"feature_weight must be a number >= 0. Received: feature_weight={feature_weight!r}"
            )
        if teacher is student:
            raise ValueError(
                "teacher and student must be different models (got the same object twice)"
            )
        super().__init__(name=name, **kwargs)
        _check_shapes(teacher, student)
        for role, model in (("teacher", teacher), ("student", student)):
            if _outputs_probabilities(model):
                raise ValueError(
                    f"The {role} ends with a softmax ({model.layers[-1].name!r}); the Distiller needs "
                    "logits. Remove the final softmax (e.g. Dense(..., activation=None)) and use "
                    "from_logits=True losses."
                )
        object.__setattr__(self, "_teacher", teacher)  # not tracked: frozen, not saved, not trained
        self.student = student
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.feature_weight = float(feature_weight)
        self.precompute_teacher = bool(precompute_teacher)
        self._feature_loss = _as_loss(feature_loss, "feature_loss")
        self._pairs = _feature_pairs(features)
        self._scratch = _Scratch()
        self.projections = []
        teacher_extractor = student_extractor = None
        if self._pairs:
            from keras.src.models.functional import Functional

            for role, model in (("teacher", teacher), ("student", student)):
                if not isinstance(model, Functional | keras.Sequential):
                    raise ValueError(
                        f"features needs Functional or Sequential models; the {role} is a "
                        f"subclassed {type(model).__name__}."
                    )
            t_out, s_out = {_FINAL: teacher.outputs[0]}, {_FINAL: student.outputs[0]}
            for t_name, s_name in self._pairs:
                t_feat = _layer(teacher, t_name, "teacher").output
                s_feat = _layer(student, s_name, "student").output
                t_out[t_name], s_out[s_name] = t_feat, s_feat
                self.projections.append(_projection(t_name, s_name, t_feat.shape, s_feat.shape))
            teacher_extractor = keras.Model(
                _inputs(teacher), t_out, name=f"{teacher.name}_features"
            )
            student_extractor = keras.Model(
                _inputs(student), s_out, name=f"{student.name}_features"
            )
        object.__setattr__(self, "_teacher_extractor", teacher_extractor)
        self._student_extractor = student_extractor
        self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.distillation_loss_tracker = keras.metrics.Mean(name="distillation_loss")

    @property
    def teacher(self):
        """The teacher model (frozen: called in inference mode, never updated)."""
        return self._teacher

    def compile(
        self,
        optimizer="adam",
        *,
        metrics=None,
        student_loss="sparse_categorical_crossentropy",
        distillation_loss=None,
        **kwargs,
    ):
        """Configures training; the metrics are computed on the student's outputs.

        Args:
            optimizer: optimizer for the student (and the feature projections). Defaults to "adam".
            metrics: metrics on the student's logits and the labels, e.g. ``["accuracy"]``.
                Defaults to None.
            student_loss: the hard-label loss on the student's logits. The names
                ``"sparse_categorical_crossentropy"`` and ``"categorical_crossentropy"`` are taken
                with ``from_logits=True``; any other name, `keras.losses.Loss` or function is used as
                given. Defaults to "sparse_categorical_crossentropy".
            distillation_loss: the soft-target loss. A loss name, `keras.losses.Loss` or function
                is applied to ``(softmax(t / T), softmax(s / T))`` and multiplied by ``T**2``; a
                ``keras.distillation.DistillationLoss`` (e.g. ``LogitsDistillation``) is given the
                raw logits ``(t, s)`` and used as it is (note: in Keras 3.15,
                ``LogitsDistillation()``'s default ``loss="kl_divergence"`` skips the softmax and
                the ``T**2`` factor; pass ``loss=keras.losses.KLDivergence()``). Defaults to None
                (``keras.losses.KLDivergence()``).
            **kwargs: other `keras.Model.compile` options (``jit_compile``, ``steps_per_execution``).

        Raises:
            ValueError: ``loss=`` was passed (use ``student_loss=``), or an unknown loss name.
        """
        if "loss" in kwargs:
            raise ValueError(
                "Distiller.compile takes student_loss= (hard labels) and distillation_loss= (soft "
                f"targets), not loss=. Received: loss={kwargs['loss']!r}"
            )
        if student_loss in ("sparse_categorical_crossentropy", "categorical_crossentropy"):
            cls = {
                "sparse_categorical_crossentropy": keras.losses.SparseCategoricalCrossentropy,
                "categorical_crossentropy": keras.losses.CategoricalCrossentropy,
            }[student_loss]
            student_loss = cls(from_logits=True)
        self._student_loss = _as_loss(student_loss, "student_loss")
        if distillation_loss is None:
            distillation_loss = keras.losses.KLDivergence()
        if isinstance(distillation_loss, keras.distillation.DistillationLoss):
            self._distillation_loss, self._keras_distillation = distillation_loss, True
        else:
            self._distillation_loss = _as_loss(distillation_loss, "distillation_loss")
            self._keras_distillation = False
        super().compile(optimizer=optimizer, loss=None, metrics=metrics, **kwargs)

    def call(self, inputs, training=None):
        """Returns the student's logits (in one pass with its features when features are used)."""
        if self._student_extractor is None:
            return self.student(inputs, training=training)
        outputs = self._student_extractor(inputs, training=training)
        self._scratch.features = outputs
        return outputs[_FINAL]

    def _teacher_outputs(self, x) -> dict:
        if self._teacher_extractor is not None:
            return self._teacher_extractor(x, training=False)
        return {_FINAL: self.teacher(x, training=False)}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The combined loss (see the class docstring); updates the loss trackers."""
        if y_pred is None:
            y_pred = self(x, training=training)
        if isinstance(y, Mapping) and _TEACHER in y:
            teacher_out, labels = y[_TEACHER], y[_LABELS]
        else:
            teacher_out, labels = None, y
        student_features, self._scratch.features = self._scratch.features, None

        total = ops.convert_to_tensor(0.0)
        hard = ops.convert_to_tensor(0.0)
        if labels is not None and self.alpha > 0:
            hard = self._student_loss(labels, y_pred, sample_weight=sample_weight)
            total = total + self.alpha * hard
        soft = ops.convert_to_tensor(0.0)
        if self.alpha < 1:
            if teacher_out is None:
                teacher_out = self._teacher_outputs(x)
            t_logits = ops.stop_gradient(ops.cast(teacher_out[_FINAL], y_pred.dtype))
            if self._keras_distillation:
                soft = self._distillation_loss.compute_loss(t_logits, y_pred)
            else:
                temp = self.temperature
                t_soft = ops.softmax(t_logits / temp, axis=-1)
                s_soft = ops.softmax(y_pred / temp, axis=-1)
                soft = (
                    self._distillation_loss(t_soft, s_soft, sample_weight=sample_weight) * temp**2
                )
            if self._pairs:
                if student_features is None:
                    student_features = self._student_extractor(x, training=training)
                for (t_name, s_name), proj in zip(self._pairs, self.projections):
                    t_feat = ops.stop_gradient(ops.cast(teacher_out[t_name], y_pred.dtype))
                    s_feat = (
                        proj(student_features[s_name])
                        if proj is not None
                        else student_features[s_name]
                    )
                    term = self._feature_loss(t_feat, s_feat, sample_weight=sample_weight)
                    soft = soft + self.feature_weight * term
            total = total + (1.0 - self.alpha) * soft
        if self.losses:
            total = total + ops.sum(ops.stack([ops.cast(v, total.dtype) for v in self.losses]))
        self.student_loss_tracker.update_state(hard)
        self.distillation_loss_tracker.update_state(soft)
        return total

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if isinstance(y, Mapping) and _TEACHER in y:
            y = y[_LABELS]
        return super().compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def precompute(self, x, *, batch_size: int = 256) -> dict[str, np.ndarray]:
        """Runs the teacher once over ``x`` and returns its logits (and features), as NumPy arrays.

        Args:
            x: NumPy inputs.
            batch_size: batch size of the teacher's pass. Defaults to 256.

        Returns:
            ``{"final_output": logits, <teacher feature layer>: features, ...}``.
        """
        model = self._teacher_extractor if self._teacher_extractor is not None else self.teacher
        out = model.predict(x, batch_size=batch_size, verbose=0)
        return dict(out) if isinstance(out, Mapping) else {_FINAL: out}

    def fit(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.fit`; with ``precompute_teacher`` the teacher runs once over ``x`` first.

        Raises:
            ValueError: ``precompute_teacher=True`` with ``x`` that is not a NumPy array (a
                tf.data.Dataset, a generator, a dict) or with ``y`` missing.
        """
        if self.precompute_teacher and self.alpha < 1:
            if not isinstance(x, np.ndarray) or y is None:
                raise ValueError(
                    "precompute_teacher=True needs fit(x, y) with x a NumPy array and labels y. "
                    f"Received: x={type(x).__name__}, y={type(y).__name__}. Use "
                    "precompute_teacher=False for datasets and generators."
                )
            y = {_LABELS: np.asarray(y), _TEACHER: self.precompute(x)}
        return super().fit(x, y, *args, **kwargs)

    def save(self, *args, **kwargs):
        raise NotImplementedError(
            "A Distiller is a training harness; save the trained student instead: "
            "distiller.student.save('student.keras')."
        )

    def get_config(self):
        raise NotImplementedError(
            "A Distiller is not serializable; save the trained student instead: "
            "distiller.student.save('student.keras')."
        )


def _check_shapes(teacher, student) -> None:
    try:
        t_out, s_out = tuple(teacher.output_shape), tuple(student.output_shape)
    except (AttributeError, ValueError):  # a subclassed model that was never called
        return
    if len(t_out) != len(s_out) or any(
        a is not None and b is not None and a != b for a, b in zip(t_out, s_out)
    ):
        raise ValueError(
            "The teacher and the student must output logits of the same shape. Received: teacher "
            f"output shape={t_out}, student output shape={s_out}"
        )
    try:
        t_in, s_in = tuple(teacher.input_shape), tuple(student.input_shape)
    except (AttributeError, ValueError):
        return
    if len(t_in) != len(s_in) or any(
        a is not None and b is not None and a != b for a, b in zip(t_in, s_in)
    ):
        raise ValueError(
            "The teacher and the student must take inputs of the same shape. Received: teacher "
            f"input shape={t_in}, student input shape={s_in}"
        )


def _projection(t_name: str, s_name: str, t_shape, s_shape):
    """A bias-free Dense from the student's channels to the teacher's, or None if they match."""
    t_shape, s_shape = tuple(t_shape), tuple(s_shape)
    if len(t_shape) != len(s_shape) or t_shape[1:-1] != s_shape[1:-1]:
        raise ValueError(
            f"Feature maps must differ only in their last (channel) axis. Received: teacher "
            f"{t_name!r} shape={t_shape}, student {s_name!r} shape={s_shape}"
        )
    if t_shape[-1] == s_shape[-1]:
        return None
    proj = keras.layers.Dense(t_shape[-1], use_bias=False, name=f"project_{s_name}_to_{t_name}")
    proj.build(s_shape)
    return proj
