"""Ensembles: K members trained with different seeds, their averaged probabilities as one model."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from tfopt._backend import import_keras

keras = import_keras()


def _as_probabilities(model, outputs):
    from tfopt.distill._distiller import ends_in_softmax

    return outputs if ends_in_softmax(model) else keras.ops.softmax(outputs, axis=-1)


def _named(member, index: int):
    """``member`` under a unique name (members built alike share one): a functional view of its
    layers (not a copy, and the member itself is not renamed); a subclassed member as it is."""
    if getattr(member, "inputs", None) and getattr(member, "outputs", None):
        inputs = member.inputs[0] if len(member.inputs) == 1 else member.inputs
        return keras.Model(inputs, member.outputs[0], name=f"member_{index}")
    return member


def ensemble_model(members: Sequence, *, name: str = "ensemble"):
    """A functional model whose output is the mean of the members' class probabilities.

    Members that output logits get a softmax, members that end in one are used as they are, so
    the output is always probabilities (it ends in softmax for `tfopt.distill.Distiller`, which
    then reads it as ``log(p)``: the temperature applies to the averaged distribution). The
    members are used as they are (shared, not copied) and frozen inside the ensemble.

    Args:
        members: two or more Keras models with the same input and output shapes.
        name: the model's name. Defaults to "ensemble".

    Returns:
        A `keras.Model` (input: the members' input; output: mean probabilities).

    Raises:
        ValueError: fewer than two members, or members of different input/output shapes.

    Example:
        >>> teacher = tfopt.train.ensemble_model(members)
        >>> d = tfopt.distill.Distiller(teacher=teacher, student=small, temperature=4.0)
    """
    members = list(members)
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least 2 members. Received: {len(members)}")
    shapes = {(tuple(m.input_shape), tuple(m.output_shape)) for m in members}
    if len(shapes) != 1:
        raise ValueError(
            f"ensemble members must share input and output shapes. Received: {sorted(shapes)}"
        )
    inp = keras.Input(members[0].input_shape[1:], name="input")
    probs = [_as_probabilities(m, _named(m, i)(inp, training=False)) for i, m in enumerate(members)]
    mean = keras.layers.Average(name="mean_probabilities")(probs)
    # a Softmax-named output: probabilities for the Distiller (softmax of log p is p itself)
    out = keras.layers.Activation("softmax", name="probabilities")(keras.ops.log(mean + 1e-12))
    model = keras.Model(inp, out, name=name)
    model.trainable = False
    return model


def train_ensemble(
    build: Callable[[], object],
    fit: Callable[[object], object],
    *,
    members: int = 3,
    seed: int = 0,
) -> list:
    """Trains ``members`` models, member ``i`` built and fitted after ``set_random_seed(seed+i)``.

    Args:
        build: returns a new, compiled model.
        fit: trains it (e.g. ``lambda m: m.fit(x, y, epochs=10)``).
        members: how many. Defaults to 3.
        seed: the first member's seed. Defaults to 0.

    Returns:
        The trained members.

    Raises:
        ValueError: ``members < 2``.
    """
    if members < 2:
        raise ValueError(f"members must be >= 2. Received: members={members}")
    out = []
    for i in range(members):
        keras.utils.set_random_seed(seed + i)
        model = build()
        fit(model)
        out.append(model)
    return out


def ensemble_accuracy(members: Sequence, x, y, *, batch_size: int = 256) -> dict:
    """Accuracy of each member and of the ensemble (mean of probabilities) on ``(x, y)``.

    Returns:
        ``{"members": [acc, ...], "best_member": acc, "ensemble": acc}``.
    """
    y = np.asarray(y).reshape(-1)
    probs = []
    for m in members:
        out = np.asarray(m.predict(x, batch_size=batch_size, verbose=0), dtype="float64")
        from tfopt.distill._distiller import ends_in_softmax

        if not ends_in_softmax(m):
            out = np.exp(out - out.max(-1, keepdims=True))
            out /= out.sum(-1, keepdims=True)
        probs.append(out)
    accs = [float(np.mean(p.argmax(-1) == y)) for p in probs]
    ens = float(np.mean(np.mean(probs, axis=0).argmax(-1) == y))
    return {"members": accs, "best_member": max(accs), "ensemble": ens}
