"""`Distiller`: a `keras.Model` that trains a student from a frozen teacher and the labels.

Built on ``keras.distillation`` (Keras 3.15): the soft-target term is a
``keras.distillation.LogitsDistillation`` and each feature term a
``keras.distillation.FeatureDistillation``; any ``keras.distillation.DistillationLoss`` can replace
the soft-target term. tfopt adds what ``keras.distillation.Distiller`` lacks: teachers and students
that end in a softmax, precomputed teacher outputs, learned projections between feature maps of
different widths, students whose layers update state in the training step (tfopt pruning and QAT
wrappers: the student runs exactly once per step), regularization losses, and a teacher that is
frozen without changing the user's model (Keras sets ``teacher.trainable = False``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from tfopt._backend import check_model, import_keras

keras = import_keras()
ops = keras.ops

_LABELS = "labels"
_TEACHER = "teacher"
_FINAL = "final_output"  # the key keras.distillation uses for the model output among features
_OUTPUT_KINDS = ("logits", "probabilities")
# log() of a probability clipped at the smallest normal float32 is finite: a class whose
# probability underflowed to 0 gets a very negative logit instead of -inf (and no NaN gradients).
_TINY = float(np.finfo("float32").tiny)


class _Scratch:
    """Plain holder (not tracked by Keras) for tensors passed from ``call`` to ``compute_loss``."""

    features = None
    inputs = None  # the augmented inputs of this training step (the teacher sees the same)
    mix = None  # (lambda, permutation) of this step's mixup, for the hard-label loss


def _augmentation(augment) -> list:
    """``augment`` as a list of Keras layers (a layer, a model or a sequence of layers)."""
    if augment is None:
        return []
    items = [augment] if isinstance(augment, keras.layers.Layer) else augment
    try:
        items = list(items)
    except TypeError:
        items = [None]
    if not all(isinstance(item, keras.layers.Layer) for item in items):
        raise TypeError(
            "augment must be a Keras layer, a Keras model or a list of Keras layers (e.g. "
            "[keras.layers.GaussianNoise(0.1)]). Received: augment="
            f"{augment!r}"
        )
    return items


def ends_in_softmax(model) -> bool:
    """Whether the model outputs probabilities: tfopt's one logits rule,
    `tfopt._training.outputs_probabilities` (it sees through tfopt wrappers and nested models)."""
    from tfopt._training import outputs_probabilities

    return outputs_probabilities(model)


def _outputs_probabilities(model, kind, role: str) -> bool:
    if kind is None:
        return ends_in_softmax(model)
    if kind not in _OUTPUT_KINDS:
        raise ValueError(
            f"{role}_output must be None (detect), 'logits' or 'probabilities'. "
            f"Received: {role}_output={kind!r}"
        )
    return kind == "probabilities"


def _log_space(outputs, probabilities: bool):
    """Outputs a temperature can divide: logits as they are, probabilities as log(p).

    log(softmax(z)) = z - logsumexp(z) differs from z by a constant per row, so
    softmax(log(p) / T) = softmax(z / T): the same soft targets as the logits behind p.
    """
    outputs = ops.cast(outputs, "float32")  # also: float16 outputs of mixed-precision models
    return ops.log(ops.maximum(outputs, _TINY)) if probabilities else outputs


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


def _as_loss(loss, arg: str):
    """A `keras.losses.Loss` (reduces over the batch, takes sample weights) from a name, a Loss or
    a function ``(y_true, y_pred) -> per-sample``."""
    from keras.src.losses.losses import LossFunctionWrapper  # not in the public API

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


def _kl_if_named(loss):
    """``"kl_divergence"`` (or its aliases) as a `keras.losses.KLDivergence` instance.

    Keras 3.15's ``LogitsDistillation`` applies the softmax and the T**2 factor only to a
    ``KLDivergence`` *instance*; the name resolves to a bare function that would get raw logits.
    """
    if isinstance(loss, str) and keras.losses.get(loss) is keras.losses.kl_divergence:
        return keras.losses.KLDivergence()
    return loss


def _check_number(value, arg: str, *, low: float, high: float | None = None, open_low=False):
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    ok = ok and (value > low if open_low else value >= low) and (high is None or value <= high)
    if not ok:
        rule = f"> {low:g}" if open_low else f">= {low:g}"
        rule = f"in [{low:g}, {high:g}]" if high is not None else rule
        raise ValueError(f"{arg} must be a number {rule}. Received: {arg}={value!r}")


def _check_options(
    teacher,
    student,
    *,
    temperature,
    alpha,
    feature_loss,
    feature_weight,
    precompute_teacher,
    augment,
    mixup,
) -> list:
    """Refuses `Distiller` arguments out of range or that do not go together; returns the
    augmentation layers of ``augment``."""
    check_model(teacher, "teacher")
    check_model(student, "student")
    _check_number(temperature, "temperature", low=0, open_low=True)
    _check_number(alpha, "alpha", low=0, high=1)
    _check_number(feature_weight, "feature_weight", low=0)
    if not (isinstance(feature_loss, str) or callable(feature_loss)):
        raise TypeError(
            "feature_loss must be a loss name, a keras.losses.Loss or a function. "
            f"Received: feature_loss={feature_loss!r}"
        )
    augment_layers = _augmentation(augment)
    _check_number(mixup, "mixup", low=0)
    if (augment_layers or mixup) and precompute_teacher:
        raise ValueError(
            "augment and mixup need the teacher online (it must label the inputs the student "
            "sees); precompute_teacher=True gives it the original ones. Received: "
            f"precompute_teacher=True with augment={augment!r}, mixup={mixup!r}"
        )
    if teacher is student:
        raise ValueError("teacher and student must be different models (got the same object twice)")
    return augment_layers


@keras.saving.register_keras_serializable(package="tfopt")
class Distiller(keras.Model):
    """Trains ``student`` to match a frozen ``teacher`` (outputs and, optionally, features) and labels.

    The loss minimised by ``fit`` is::

        loss = alpha * student_loss(y, s)
             + (1 - alpha) * (T**2 * KL(softmax(t / T) || softmax(s / T))
                              + feature_weight * sum_i feature_loss(t_i, P_i(s_i)))
             + the student's regularization losses

    where ``s``/``t`` are the student/teacher logits, ``T`` the temperature, ``t_i``/``s_i`` the
    outputs of the named intermediate layers and ``P_i`` a learned linear projection (a bias-free
    Dense on the channel axis) used when the widths differ (identity otherwise). The soft-target
    term is ``keras.distillation.LogitsDistillation(T, loss=keras.losses.KLDivergence())`` and each
    feature term a ``keras.distillation.FeatureDistillation``. ``alpha`` is the weight of the
    hard-label loss (``keras.distillation.Distiller``'s ``student_loss_weight``); ``alpha=1`` is
    plain training, ``alpha=0`` pure distillation. Sample weights weigh the hard-label loss only
    (the Keras distillation losses average over the batch).

    Models that end in a softmax work: their probabilities ``p`` enter the soft-target term as
    ``log(p)``, whose tempered softmax equals that of the logits behind ``p`` (the temperature must
    act on logits, never on probabilities). The default hard-label loss takes the student's
    outputs as they are (``from_logits`` follows the student's output).

    The teacher is called with ``training=False`` and is never updated; the user's teacher is not
    modified (its ``trainable`` flag stays as it is) and its weights are not in
    ``distiller.weights``, but it is saved with the distiller. The student runs once per training
    step (its features come from the same pass), so pruning masks and QAT ranges advance once per
    step. The student is trained in place: ``distiller.student`` is the model to strip and export.
    ``predict`` returns the student's outputs; the compiled metrics are computed on the student.
    ``evaluate`` also reports ``student_loss`` and ``distillation_loss``.

    Precomputed teacher outputs: with ``precompute_teacher=True`` the teacher runs once over NumPy
    ``x`` when ``fit`` starts. For a ``tf.data.Dataset`` (or outputs stored earlier), pass the
    targets as ``{"labels": y, "teacher": outputs}``, where ``outputs`` is what the teacher returns
    (logits or probabilities, as in ``teacher.predict``) or, with ``features``, the dict that
    `precompute` returns; the teacher is then not run for those batches.

    Augmentation (``augment=``): the layers run on each training batch before *both* the student
    and the teacher, so the teacher labels exactly the input the student sees ("consistent
    teaching", Beyer et al. 2022). With few training samples this is what lets a student learn
    the teacher's function rather than its answers on the training inputs; a precomputed teacher
    can't do it (it saw other inputs), so ``augment`` needs the teacher online. The layers are used in training
    only and are not part of ``distiller.student``. ``mixup`` goes further ("function matching"):
    each training input becomes ``lam * x_i + (1 - lam) * x_j`` (``lam ~ Beta(mixup, mixup)``, ``j``
    a random partner in the batch), the teacher labels the mixture, and the hard-label loss is
    ``lam * loss(y_i) + (1 - lam) * loss(y_j)`` (the training metrics still compare with the
    unmixed labels). On MNIST-1D (benchmarks/robust_ensemble.py) this is what closes most of the
    gap between a student distilled from an ensemble and the ensemble.

    A Distiller saves and loads like any Keras model (``distiller.save("d.keras")``,
    ``keras.models.load_model``): teacher, student, projections, compile and optimizer state.

    Args:
        teacher: a trained Keras 3 model (logits or softmax probabilities).
        student: the Keras 3 model to train, with the teacher's output shape. It may hold tfopt
            pruning, QAT or clustering wrappers.
        temperature: softmax temperature ``T`` > 0. Defaults to 4.0.
        alpha: weight of the hard-label loss, in [0, 1]. Defaults to 0.1.
        features: intermediate layers to match: a dict ``{teacher_layer: student_layer}``, a list of
            pairs, or a list of names present in both models (Functional/Sequential models only).
            Defaults to None (outputs only).
        feature_loss: loss between teacher features and projected student features (a name, a
            `keras.losses.Loss` or a function). Defaults to "mse".
        feature_weight: weight of each feature term inside the distillation part. Defaults to 1.0.
        precompute_teacher: run the teacher once over ``x`` when ``fit`` starts (NumPy ``x``), not
            at every step; the teacher outputs travel with the labels through shuffling and
            batching. Not with ``augment``. Defaults to False.
        augment: training-only input transforms applied to each batch before the teacher and the
            student see it: a Keras layer, model, or list of layers (e.g.
            ``[keras.layers.GaussianNoise(0.1)]``, or `tfopt._training.augmentation_layers` of a
            ``train.augment`` section). Defaults to None.
        mixup: Beta parameter of mixup between the training inputs (after ``augment``); 0 turns it
            off. Needs the teacher online. Defaults to 0.0.
        teacher_output: ``"logits"`` or ``"probabilities"``: what the teacher returns. Defaults to
            None (probabilities when a Functional/Sequential teacher ends in a softmax, else logits;
            say it for a subclassed teacher that ends in a softmax).
        student_output: the same for the student. Defaults to None.
        name: the model's name. Defaults to "distiller".

    Raises:
        TypeError: teacher or student is not a Keras 3 model; bad ``features`` or ``feature_loss``.
        ValueError: ``temperature`` <= 0, ``alpha`` outside [0, 1], output or input shapes that
            differ, unknown feature layers, or feature maps whose non-channel dimensions differ.

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
        augment=None,
        mixup: float = 0.0,
        teacher_output: str | None = None,
        student_output: str | None = None,
        name: str = "distiller",
        **kwargs,
    ):
        augment_layers = _check_options(
            teacher,
            student,
            temperature=temperature,
            alpha=alpha,
            feature_loss=feature_loss,
            feature_weight=feature_weight,
            precompute_teacher=precompute_teacher,
            augment=augment,
            mixup=mixup,
        )
        super().__init__(name=name, **kwargs)
        _check_shapes(teacher, student)
        self.teacher_output, self.student_output = teacher_output, student_output
        self._teacher_probs = _outputs_probabilities(teacher, teacher_output, "teacher")
        self._student_probs = _outputs_probabilities(student, student_output, "student")
        # Not tracked: frozen without touching the user's `trainable` flags, not trained, not in
        # `weights`. Keras's saving still writes and reads it (it walks every attribute).
        object.__setattr__(self, "_teacher", teacher)
        self.student = student
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.feature_weight = float(feature_weight)
        self.precompute_teacher = bool(precompute_teacher)
        self.feature_loss = feature_loss
        self.augment = augment_layers
        self.mixup = float(mixup)
        self._mix_seed = keras.random.SeedGenerator(None) if self.mixup else None
        self._pairs = _feature_pairs(features)
        self._scratch = _Scratch()
        self._logits_term = keras.distillation.LogitsDistillation(
            temperature=self.temperature, loss=keras.losses.KLDivergence()
        )
        self._build_feature_terms(teacher, student, feature_loss)
        self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.distillation_loss_tracker = keras.metrics.Mean(name="distillation_loss")
        self._student_loss_arg = self._distillation_loss_arg = None

    def _build_feature_terms(self, teacher, student, feature_loss) -> None:
        """One `keras.distillation.FeatureDistillation` term and projection per ``features``
        pair, and the models that give both models' outputs and features in one pass each."""
        self._feature_terms = []
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
                self._feature_terms.append(
                    keras.distillation.FeatureDistillation(
                        loss=feature_loss, teacher_layer_name=t_name, student_layer_name=s_name
                    )
                )
            teacher_extractor = keras.Model(
                _inputs(teacher), t_out, name=f"{teacher.name}_features"
            )
            # one pass gives the student's output and features (its layers are the student's)
            student_extractor = keras.Model(
                _inputs(student), s_out, name=f"{student.name}_features"
            )
        object.__setattr__(self, "_teacher_extractor", teacher_extractor)
        object.__setattr__(self, "_student_extractor", student_extractor)

    @property
    def teacher(self):
        """The teacher model (frozen: called in inference mode, never updated)."""
        return self._teacher

    @property
    def features(self) -> list[tuple[str, str]]:
        """The matched ``(teacher_layer, student_layer)`` pairs."""
        return list(self._pairs)

    # -- compile ---------------------------------------------------------------------------------

    def compile(
        self,
        optimizer="adam",
        *,
        metrics=None,
        student_loss="sparse_categorical_crossentropy",
        distillation_loss=None,
        loss=None,
        **kwargs,
    ):
        """Configures training; the metrics are computed on the student's outputs.

        Args:
            optimizer: optimizer for the student (and the feature projections). Defaults to "adam".
            metrics: metrics on the student's outputs and the labels, e.g. ``["accuracy"]``.
                Defaults to None.
            student_loss: the hard-label loss on the student's outputs. The names
                ``"sparse_categorical_crossentropy"`` and ``"categorical_crossentropy"`` take
                ``from_logits`` from the student's output (logits or probabilities); any other
                name, `keras.losses.Loss` or function is used as given.
                Defaults to "sparse_categorical_crossentropy".
            distillation_loss: the soft-target term, given the teacher's and student's outputs in
                log space (logits, or log-probabilities for a softmax output): a
                ``keras.distillation.DistillationLoss`` is used as it is; a loss name,
                `keras.losses.Loss` or function goes into
                ``keras.distillation.LogitsDistillation(temperature, loss=...)`` (a KL divergence,
                by name too, gets the softmax and the ``T**2`` factor; other losses see the tempered
                log-space outputs). Defaults to None (``keras.losses.KLDivergence()``).
            loss: not used; ``None`` is accepted (Keras passes it when loading a saved model).
                Defaults to None.
            **kwargs: other `keras.Model.compile` options (``jit_compile``, ``steps_per_execution``).

        Raises:
            ValueError: ``loss=`` was given (use ``student_loss=``), or an unknown loss name.
        """
        if loss is not None:
            raise ValueError(
                "Distiller.compile takes student_loss= (hard labels) and distillation_loss= (soft "
                f"targets), not loss=. Received: loss={loss!r}"
            )
        self._student_loss_arg, self._distillation_loss_arg = student_loss, distillation_loss
        if student_loss in ("sparse_categorical_crossentropy", "categorical_crossentropy"):
            cls = {
                "sparse_categorical_crossentropy": keras.losses.SparseCategoricalCrossentropy,
                "categorical_crossentropy": keras.losses.CategoricalCrossentropy,
            }[student_loss]
            student_loss = cls(from_logits=not self._student_probs)
        self._student_loss = _as_loss(student_loss, "student_loss")
        if distillation_loss is None:
            self._logits_term = keras.distillation.LogitsDistillation(
                temperature=self.temperature, loss=keras.losses.KLDivergence()
            )
        elif isinstance(distillation_loss, keras.distillation.DistillationLoss):
            self._logits_term = distillation_loss
        elif isinstance(distillation_loss, str) or callable(distillation_loss):
            self._logits_term = keras.distillation.LogitsDistillation(
                temperature=self.temperature, loss=_kl_if_named(distillation_loss)
            )
        else:
            raise TypeError(
                "distillation_loss must be a keras.distillation.DistillationLoss, a loss name, a "
                f"keras.losses.Loss or a function. Received: distillation_loss={distillation_loss!r}"
            )
        super().compile(optimizer=optimizer, loss=None, metrics=metrics, **kwargs)

    def get_compile_config(self):
        config = super().get_compile_config()
        if config:
            config.pop("loss", None)
            for key, value in (
                ("student_loss", self._student_loss_arg),
                ("distillation_loss", self._distillation_loss_arg),
            ):
                config[key] = keras.saving.serialize_keras_object(value)
        return config

    def compile_from_config(self, config):
        # Keras skips compile() on load for models that override it; ours knows its own config.
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    # -- the training step -----------------------------------------------------------------------

    def call(self, inputs, training=None):
        """Returns the student's outputs (in one pass with its features when features are used);
        in training, on the augmented inputs (kept for the teacher's pass)."""
        if training and (self.augment or self.mixup):
            for layer in self.augment:
                inputs = layer(inputs, training=True)
            if self.mixup:
                inputs = self._mix(inputs)
            self._scratch.inputs = inputs
        if self._student_extractor is None:
            return self.student(inputs, training=training)
        outputs = self._student_extractor(inputs, training=training)
        self._scratch.features = outputs
        return outputs[_FINAL]

    def _mix(self, x):
        n = ops.shape(x)[0]
        lam = keras.random.beta((n,), self.mixup, self.mixup, seed=self._mix_seed)
        perm = keras.random.shuffle(ops.arange(n), seed=self._mix_seed)
        self._scratch.mix = (lam, perm)
        lam_x = ops.reshape(ops.cast(lam, x.dtype), (-1,) + (1,) * (len(x.shape) - 1))
        return lam_x * x + (1.0 - lam_x) * ops.take(x, perm, axis=0)

    def _teacher_outputs(self, x) -> dict:
        if self._teacher_extractor is not None:
            return self._teacher_extractor(x, training=False)
        return {_FINAL: self.teacher(x, training=False)}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The combined loss (see the class docstring); updates the loss trackers."""
        if y_pred is None:
            y_pred = self(x, training=training)
        if isinstance(y, Mapping) and _TEACHER in y:
            teacher_out, labels = y[_TEACHER], y.get(_LABELS)
        else:
            teacher_out, labels = None, y
        student_features, self._scratch.features = self._scratch.features, None
        augmented, self._scratch.inputs = self._scratch.inputs, None
        mix, self._scratch.mix = self._scratch.mix, None
        if augmented is not None:
            if teacher_out is not None:
                raise ValueError(
                    "augment and mixup need the teacher online: its outputs on the batch the "
                    'student saw. Do not pass {"teacher": ...} targets to such a Distiller.'
                )
            x = augmented

        zero = ops.convert_to_tensor(0.0)
        hard = soft = zero
        if labels is not None and self.alpha > 0 and mix is not None:
            # mixed inputs: lam * loss(y_i) + (1 - lam) * loss(y_j), as sample weights
            lam, perm = mix
            lam = ops.cast(lam, "float32")
            sw = 1.0 if sample_weight is None else ops.cast(sample_weight, "float32")
            hard = ops.cast(
                self._student_loss(labels, y_pred, sample_weight=lam * sw), "float32"
            ) + ops.cast(
                self._student_loss(
                    ops.take(labels, perm, axis=0), y_pred, sample_weight=(1.0 - lam) * sw
                ),
                "float32",
            )
        elif labels is not None and self.alpha > 0:
            hard = ops.cast(
                self._student_loss(labels, y_pred, sample_weight=sample_weight), "float32"
            )
        if self.alpha < 1:
            if teacher_out is None:
                teacher_out = self._teacher_outputs(x)
            if not isinstance(teacher_out, Mapping):
                teacher_out = {_FINAL: teacher_out}
            t = ops.stop_gradient(_log_space(teacher_out[_FINAL], self._teacher_probs))
            soft = self._logits_term.compute_loss(t, _log_space(y_pred, self._student_probs))
            if self._feature_terms:
                if student_features is None:  # y_pred came from elsewhere
                    student_features = self._student_extractor(x, training=training)
                for term, proj in zip(self._feature_terms, self.projections):
                    t_feat = ops.stop_gradient(
                        ops.cast(teacher_out[term.teacher_layer_name], "float32")
                    )
                    s_feat = student_features[term.student_layer_name]
                    s_feat = ops.cast(proj(s_feat) if proj is not None else s_feat, "float32")
                    soft = soft + self.feature_weight * term.compute_loss(t_feat, s_feat)
        total = self.alpha * hard + (1.0 - self.alpha) * soft
        if self.losses:
            total = total + ops.sum(ops.stack([ops.cast(v, "float32") for v in self.losses]))
        self.student_loss_tracker.update_state(hard)
        self.distillation_loss_tracker.update_state(soft)
        return total

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if isinstance(y, Mapping) and _TEACHER in y:
            y = y.get(_LABELS)
        return super().compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    # -- precomputed teacher outputs -------------------------------------------------------------

    def precompute(self, x, *, batch_size: int = 256) -> dict[str, np.ndarray]:
        """Runs the teacher once over ``x`` and returns its outputs (and features) as NumPy arrays.

        Pass them back as ``fit(x, {"labels": y, "teacher": outputs})`` (also inside a
        ``tf.data.Dataset``) to train without running the teacher.

        Args:
            x: NumPy inputs.
            batch_size: batch size of the teacher's pass. Defaults to 256.

        Returns:
            ``{"final_output": outputs, <teacher feature layer>: features, ...}``, the outputs as
            the teacher returns them (logits or probabilities).
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
        given = isinstance(y, Mapping) and _TEACHER in y
        if self.precompute_teacher and self.alpha < 1 and not given:
            if not isinstance(x, np.ndarray) or y is None:
                raise ValueError(
                    "precompute_teacher=True needs fit(x, y) with x a NumPy array and labels y. "
                    f"Received: x={type(x).__name__}, y={type(y).__name__}. For datasets, put "
                    'the teacher outputs in the targets: {"labels": y, "teacher": '
                    "distiller.precompute(x)}, or use precompute_teacher=False."
                )
            y = {_LABELS: np.asarray(y), _TEACHER: self.precompute(x)}
        return super().fit(x, y, *args, **kwargs)

    # -- serialization ---------------------------------------------------------------------------

    def get_config(self):
        feature_loss = self.feature_loss
        if not isinstance(feature_loss, str):
            feature_loss = keras.saving.serialize_keras_object(feature_loss)
        return {
            "name": self.name,
            "trainable": self.trainable,
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            "student": keras.saving.serialize_keras_object(self.student),
            "temperature": self.temperature,
            "alpha": self.alpha,
            "features": [list(pair) for pair in self._pairs] or None,
            "feature_loss": feature_loss,
            "feature_weight": self.feature_weight,
            "precompute_teacher": self.precompute_teacher,
            "augment": [keras.saving.serialize_keras_object(layer) for layer in self.augment]
            or None,
            "mixup": self.mixup,
            "teacher_output": self.teacher_output,
            "student_output": self.student_output,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("teacher", "student"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        if config.get("augment"):
            config["augment"] = [
                keras.saving.deserialize_keras_object(a) for a in config["augment"]
            ]
        if isinstance(config.get("feature_loss"), Mapping):
            config["feature_loss"] = keras.saving.deserialize_keras_object(config["feature_loss"])
        return cls(**config)


def _check_shapes(teacher, student) -> None:
    try:
        t_out, s_out = tuple(teacher.output_shape), tuple(student.output_shape)
    except (AttributeError, ValueError):  # a subclassed model that was never called
        return
    if len(t_out) != len(s_out) or any(
        a is not None and b is not None and a != b for a, b in zip(t_out, s_out)
    ):
        raise ValueError(
            "The teacher and the student must have outputs of the same shape. Received: teacher "
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
