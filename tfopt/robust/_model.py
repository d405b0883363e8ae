"""`AdversarialModel`: a `keras.Model` that trains its model on adversarial examples too."""

from __future__ import annotations

from tfopt._backend import import_keras
from tfopt.robust._attacks import METHODS, _check, output_kind, perturb

keras = import_keras()


@keras.saving.register_keras_serializable(package="tfopt")
class AdversarialModel(keras.Model):
    """Adversarial training (Goodfellow et al. 2015; Madry et al. 2018) as a Keras model.

    Each training step makes FGSM or PGD examples of the batch against the current weights (the
    model in inference mode, the loss the cross-entropy of its logits or softmax output) and
    trains on the clean and the adversarial batch together, weighted ``1 - adv_weight`` and
    ``adv_weight``. ``fit``, ``evaluate`` and ``predict`` work as usual; the training metrics are
    over both halves, evaluation and prediction see clean inputs. The wrapped ``model`` is trained
    in place (it is the model you keep: export ``adv.model``, not the wrapper).

    Args:
        model: the Keras model to train (logits or softmax output).
        epsilon: the L-inf radius of the attack.
        method: ``"pgd"`` or ``"fgsm"``. Defaults to "pgd".
        steps: PGD steps. Defaults to 3.
        step_size: PGD step. Defaults to None (``2.5 * epsilon / steps``).
        adv_weight: the adversarial batch's share of the loss, in [0, 1]. Defaults to 0.5.
        clip: ``(low, high)`` valid input range. Defaults to None.

    Raises:
        ValueError: an unknown method, ``epsilon < 0``, ``steps < 1`` or ``adv_weight`` outside
            [0, 1].

    Example:
        >>> adv = tfopt.robust.AdversarialModel(model, epsilon=0.1, method="pgd", steps=3)
        >>> adv.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(True),
        ...             metrics=["accuracy"])
        >>> adv.fit(x, y, epochs=5)
        >>> tfopt.robust.robust_accuracy(model, x_test, y_test, epsilon=0.1)
    """

    def __init__(
        self,
        model,
        *,
        epsilon: float,
        method: str = "pgd",
        steps: int = 3,
        step_size: float | None = None,
        adv_weight: float = 0.5,
        clip: tuple[float, float] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}. Received: method={method!r}")
        _check(epsilon, steps, step_size)
        if not 0.0 <= adv_weight <= 1.0:
            raise ValueError(f"adv_weight must be in [0, 1]. Received: adv_weight={adv_weight}")
        self.model = model
        self.epsilon, self.method, self.steps = float(epsilon), method, int(steps)
        self.step_size = step_size
        self.adv_weight = float(adv_weight)
        self.clip = tuple(clip) if clip is not None else None
        self._probabilities = output_kind(model) == "probabilities"

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    def adversarial(self, x, y):
        """The adversarial examples of a batch (a tensor), as the training step makes them."""
        return perturb(
            self.model,
            x,
            y,
            epsilon=self.epsilon,
            method=self.method,
            steps=self.steps,
            step_size=self.step_size,
            clip=self.clip,
            probabilities=self._probabilities,
        )

    def train_step(self, data):
        import tensorflow as tf

        x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
        x = tf.cast(x, "float32")
        x_adv = self.adversarial(x, y)
        if self.adv_weight == 1.0:
            return super().train_step((x_adv, y, sw))
        if sw is None:
            sw = tf.ones(tf.shape(x)[:1])
        w = self.adv_weight
        # each half keeps its share of the mean loss: weights 2(1-w) and 2w average to 1
        weights = tf.concat([sw * (2.0 * (1.0 - w)), sw * (2.0 * w)], axis=0)
        return super().train_step(
            (tf.concat([x, x_adv], axis=0), tf.concat([y, y], axis=0), weights)
        )

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "model": keras.saving.serialize_keras_object(self.model),
            "epsilon": self.epsilon,
            "method": self.method,
            "steps": self.steps,
            "step_size": self.step_size,
            "adv_weight": self.adv_weight,
            "clip": list(self.clip) if self.clip is not None else None,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(config["model"])
        return cls(**config)
