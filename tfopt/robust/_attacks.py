"""FGSM and PGD adversarial examples (L-inf), for models that output logits or probabilities."""

from __future__ import annotations

import numpy as np

from tfopt._backend import import_keras

keras = import_keras()

METHODS = ("fgsm", "pgd")
# log() of a probability clipped at the smallest normal float32 stays finite (see tfopt.distill)
_TINY = float(np.finfo("float32").tiny)


def _tf():
    import tensorflow as tf

    return tf


def output_kind(model) -> str:
    """``"probabilities"`` when ``model`` ends in a softmax, else ``"logits"``."""
    from tfopt.distill._distiller import ends_in_softmax

    return "probabilities" if ends_in_softmax(model) else "logits"


def attack_loss(outputs, y, probabilities: bool):
    """Per-sample cross-entropy of ``outputs`` (logits, or probabilities as log(p)) and labels.

    Probabilities are attacked through ``-log(max(p_y, tiny))``, not through Keras's clipped
    cross-entropy (whose clip at ``1 - 1e-7`` zeroes the gradient of a confident softmax).
    """
    tf = _tf()
    outputs = tf.cast(outputs, "float32")
    logits = tf.math.log(tf.maximum(outputs, _TINY)) if probabilities else outputs
    y = tf.convert_to_tensor(y)
    if y.shape.rank == logits.shape.rank:  # one-hot labels
        return tf.nn.softmax_cross_entropy_with_logits(tf.cast(y, "float32"), logits)
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        tf.cast(tf.reshape(y, [-1]), "int32"), logits
    )


def _check(epsilon, steps, step_size):
    if not (isinstance(epsilon, int | float) and epsilon >= 0):
        raise ValueError(f"epsilon must be a number >= 0. Received: epsilon={epsilon!r}")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be an int >= 1. Received: steps={steps!r}")
    if step_size is not None and not step_size > 0:
        raise ValueError(f"step_size must be > 0. Received: step_size={step_size!r}")


def _gradient_sign(model, x, y, probabilities):
    tf = _tf()
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = attack_loss(model(x, training=False), y, probabilities)
    return tf.sign(tape.gradient(loss, x))


def _project(x_adv, x, epsilon, clip):
    tf = _tf()
    x_adv = tf.clip_by_value(x_adv, x - epsilon, x + epsilon)
    if clip is not None:
        x_adv = tf.clip_by_value(x_adv, clip[0], clip[1])
    return x_adv


def perturb(
    model,
    x,
    y,
    *,
    epsilon: float,
    method: str = "pgd",
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    clip: tuple[float, float] | None = None,
    probabilities: bool | None = None,
    seed=None,
):
    """Adversarial examples as a tensor (graph-friendly: used inside ``train_step`` too).

    See `fgsm` and `pgd`; ``probabilities=None`` detects the model's output kind.
    """
    tf = _tf()
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}. Received: method={method!r}")
    if probabilities is None:
        probabilities = output_kind(model) == "probabilities"
    x = tf.stop_gradient(tf.cast(tf.convert_to_tensor(x), "float32"))
    if method == "fgsm":
        return tf.stop_gradient(
            _project(x + epsilon * _gradient_sign(model, x, y, probabilities), x, epsilon, clip)
        )
    alpha = step_size if step_size is not None else 2.5 * epsilon / steps
    x_adv = x
    if random_start:
        noise = (
            tf.random.stateless_uniform(tf.shape(x), seed, -epsilon, epsilon)
            if seed is not None
            else tf.random.uniform(tf.shape(x), -epsilon, epsilon)
        )
        x_adv = _project(x + noise, x, epsilon, clip)
    for _ in range(steps):
        x_adv = _project(
            x_adv + alpha * _gradient_sign(model, x_adv, y, probabilities), x, epsilon, clip
        )
    return tf.stop_gradient(x_adv)


def _batched(model, x, y, batch_size, **kwargs) -> np.ndarray:
    tf = _tf()
    x, y = np.asarray(x, dtype="float32"), np.asarray(y)
    fn = tf.function(lambda xb, yb: perturb(model, xb, yb, **kwargs), reduce_retracing=True)
    out = [
        fn(x[i : i + batch_size], y[i : i + batch_size]).numpy()
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(out) if out else x.copy()


def fgsm(model, x, y, *, epsilon: float, clip=None, batch_size: int = 256) -> np.ndarray:
    """FGSM (Goodfellow et al. 2015): ``x + epsilon * sign(grad_x loss)``, clipped to ``clip``.

    The loss is the cross-entropy of the model's output (logits, or probabilities for a model
    ending in softmax) with the labels ``y`` (integers or one-hot); the model runs in inference
    mode.

    Args:
        model: a Keras model.
        x: NumPy inputs.
        y: labels.
        epsilon: the L-inf radius.
        clip: ``(low, high)`` valid input range. Defaults to None (unbounded inputs).
        batch_size: examples per gradient pass. Defaults to 256.

    Returns:
        NumPy adversarial examples, ``|x_adv - x| <= epsilon`` elementwise.

    Example:
        >>> x_adv = tfopt.robust.fgsm(model, x_test, y_test, epsilon=0.1)
    """
    _check(epsilon, None, None)
    return _batched(model, x, y, batch_size, epsilon=epsilon, method="fgsm", clip=clip)


def pgd(
    model,
    x,
    y,
    *,
    epsilon: float,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    clip=None,
    seed: int | None = 0,
    batch_size: int = 256,
) -> np.ndarray:
    """PGD (Madry et al. 2018): ``steps`` signed-gradient steps projected onto the L-inf ball.

    Args:
        model: a Keras model (logits or softmax output).
        x: NumPy inputs.
        y: labels (integers or one-hot).
        epsilon: the L-inf radius.
        steps: gradient steps. Defaults to 10.
        step_size: the step. Defaults to None (``2.5 * epsilon / steps``).
        random_start: start at a uniform point of the ball. Defaults to True.
        clip: ``(low, high)`` valid input range. Defaults to None.
        seed: seed of the random start (None: unseeded). Defaults to 0.
        batch_size: examples per pass. Defaults to 256.

    Returns:
        NumPy adversarial examples, ``|x_adv - x| <= epsilon`` elementwise.
    """
    _check(epsilon, steps, step_size)
    return _batched(
        model,
        x,
        y,
        batch_size,
        epsilon=epsilon,
        method="pgd",
        steps=steps,
        step_size=step_size,
        random_start=random_start,
        clip=clip,
        seed=None if seed is None else (int(seed), 0),
    )


def robust_accuracy(
    model,
    x,
    y,
    *,
    epsilon: float,
    steps: int = 10,
    attack_model=None,
    clip=None,
    seed: int | None = 0,
    batch_size: int = 256,
) -> float:
    """Top-1 accuracy of ``model`` on PGD examples at ``epsilon``.

    White-box when ``attack_model`` is None (the examples attack ``model`` itself); otherwise a
    transfer attack: the examples are made on ``attack_model`` (e.g. the Keras model a TFLite
    file came from) and ``model`` is any callable ``predict(x) -> outputs`` or Keras model.

    Returns:
        The accuracy in [0, 1].
    """
    source = model if attack_model is None else attack_model
    x_adv = pgd(
        source, x, y, epsilon=epsilon, steps=steps, clip=clip, seed=seed, batch_size=batch_size
    )
    predict = model.predict if hasattr(model, "predict") else model
    try:
        out = predict(x_adv, batch_size=batch_size, verbose=0)
    except TypeError:
        out = predict(x_adv)
    return float(np.mean(np.argmax(out, axis=-1) == np.asarray(y).reshape(-1)))
