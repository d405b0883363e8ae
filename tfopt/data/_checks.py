"""The checks every loader and command applies to data before any training.

One place for what makes arrays unusable: not numbers, NaN/inf, x and y of different lengths,
empty splits, labels that are not class indices (negative, fractional, one-hot, out of range), and
inputs whose shape is not the model's. Each raises `tfopt.errors.DataError` in one line that names
the array (the ``.npz`` key) and says what to do.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tfopt.errors import DataError


def _kind(a: np.ndarray) -> str:
    return {"U": "strings", "S": "bytes", "O": "Python objects", "V": "records"}.get(
        a.dtype.kind, f"dtype {a.dtype}"
    )


def _s(name: str) -> str:
    """The verb's ending for ``name``: "labels look", "y_train looks"."""
    return "" if name in ("inputs", "labels") else "s"


def check_finite(x, name: str = "inputs", *, fix: str = "clean or drop them") -> None:
    """Raises `DataError` when ``x`` holds NaN or infinite values, counting the samples."""
    x = np.asarray(x)
    if x.dtype.kind in "fc" and not np.isfinite(x).all():
        bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1) if x.ndim else np.array([True])
        raise DataError(
            f"{name} hold{_s(name)} NaN or infinite values in {int(bad.sum())} of {len(bad)} samples "
            f"(the first is sample {int(np.argmax(bad))}); {fix}"
        )


def check_features(x, name: str = "x") -> np.ndarray:
    """``x`` as float32 samples: numbers, at least one sample, each at least one value, finite.

    Raises:
        DataError: strings or objects, no samples, scalar samples, NaN or infinite values.
    """
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise DataError(
            f"{name} holds {_kind(x)}, not numbers; convert it to a numeric array, e.g. "
            f"{name}.astype('float32')"
        )
    if x.ndim == 0 or len(x) == 0:
        raise DataError(f"{name} holds no samples (shape {x.shape}); each split needs at least 1")
    if x.ndim == 1:
        raise DataError(
            f"{name} has shape {x.shape}: one number per sample; give each sample an axis of "
            f"features, e.g. {name}[:, None]"
        )
    check_finite(x, name, fix=f"clean or drop those samples (and their labels) from {name}")
    return x


def check_labels(
    y, n: int, num_outputs: int | None = None, *, name: str = "labels", outputs_of: str = "classes"
) -> np.ndarray:
    """``y`` as integer class indices, checked against ``n`` samples and ``num_outputs`` classes.

    Args:
        y: the labels: shape ``(n,)`` or ``(n, 1)``.
        n: the number of samples they label.
        num_outputs: the number of classes (a model's outputs); None: not checked. Defaults to None.
        name: the array's name in errors (an ``.npz`` key). Defaults to "labels".
        outputs_of: what ``num_outputs`` counts, in errors. Defaults to "classes".

    Raises:
        DataError: labels that are not whole numbers, one-hot, a count that is not ``n``, or a
            class index < 0 or >= ``num_outputs``.
    """
    y = np.asarray(y)
    if y.dtype.kind not in "biuf":
        raise DataError(
            f"{name} hold{_s(name)} {_kind(y)}, not class indices; map each class to 0..k-1, e.g. "
            f"classes, {name} = np.unique({name}, return_inverse=True)"
        )
    if y.ndim == 2 and y.shape[1] > 1:
        raise DataError(
            f"{name} look{_s(name)} one-hot (shape {y.shape}): pass integer labels, e.g. {name}.argmax(1)"
        )
    if y.ndim > 1 and not (y.ndim == 2 and y.shape[1] == 1):
        raise DataError(f"{name} must be class indices of shape ({n},); received shape {y.shape}")
    y = y.reshape(-1)
    if len(y) != n:
        raise DataError(f"expected {n} {name}, one per input; received {len(y)}")
    if y.dtype.kind not in "iub":
        whole = np.isfinite(y) & (y == np.round(y))
        if not whole.all():
            first = int(np.argmax(~whole))
            raise DataError(
                f"{name} must be whole class indices; received {float(y[first])!r} at sample {first} "
                f"(dtype {y.dtype}); round or map them to 0..k-1"
            )
        y = y.astype("int64")
    if len(y) and y.min() < 0:
        raise DataError(
            f"{name} must be >= 0; received {int(y.min())} ({int((y < 0).sum())} < 0); class "
            f"indices start at 0: remap them, e.g. np.unique({name}, return_inverse=True)[1]"
        )
    if num_outputs is not None and len(y) and y.max() >= num_outputs:
        raise DataError(
            f"{name} must be class indices < {num_outputs} (the number of {outputs_of}); received "
            f"{int(y.max())} ({int((y >= num_outputs).sum())} labels out of range)"
        )
    return y


def check_pair(
    x,
    y,
    names: Sequence[str] = ("x", "y"),
    num_classes: int | None = None,
    *,
    outputs_of: str = "classes",
):
    """``(x, y)`` checked as one split: numeric finite features, one integer label per sample.

    Returns:
        ``(x, y)`` with ``y`` as int class indices of shape ``(n,)``.
    """
    x_name, y_name = names
    x = check_features(x, x_name)
    y = np.asarray(y)
    if y.ndim >= 1 and len(y) != len(x):
        raise DataError(
            f"{x_name} has {len(x)} samples but {y_name} has {len(y)} labels; give one label "
            "per sample"
        )
    return x, check_labels(y, len(x), num_classes, name=y_name, outputs_of=outputs_of)


def check_splits(splits: dict[tuple[str, str], tuple], num_classes: int | None = None) -> None:
    """Checks the ``(x, y)`` splits of one dataset, keyed by their names (``("x_train",
    "y_train")``, ...): each a valid pair, all with the same sample shape (so a split without
    the channel axis is caught). Without ``num_classes``, the later splits' labels must be classes
    that the first split holds: a model cannot learn a class it never sees."""
    shapes, first_classes = {}, num_classes
    for (x_name, y_name), (x, y) in splits.items():
        outputs_of = "classes" if num_classes is not None else f"classes in {next(iter(splits))[1]}"
        x, y = check_pair(x, y, (x_name, y_name), first_classes, outputs_of=outputs_of)
        shapes[x_name] = tuple(x.shape[1:])
        if first_classes is None:
            first_classes = int(y.max()) + 1
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise DataError(
            f"the splits' samples differ in shape ({listed}); give every split the same sample "
            "shape (a missing channel axis? add it with x[..., None])"
        )


def check_input_shape(expected: tuple, got: tuple, *, what: str, taker: str) -> None:
    """Refuses samples of shape ``got`` for a model (``taker``) whose inputs have shape
    ``expected`` (None: any size), with the fix for a missing or extra channel axis.

    Raises:
        DataError: one line with both shapes and what to do.
    """
    expected, got = tuple(expected), tuple(got)
    if len(got) == len(expected) and all(e is None or e == g for e, g in zip(expected, got)):
        return
    hint = "reshape the data (or the model's Input) so that they match"
    if len(expected) == len(got) + 1 and expected[-1] in (1, None) and _same(expected[:-1], got):
        hint = "add the channel axis, e.g. x = x[..., None]"
    elif len(got) == len(expected) + 1 and got[-1] == 1 and _same(expected, got[:-1]):
        hint = "drop the channel axis, e.g. x = x[..., 0]"
    raise DataError(f"{what}'s samples have shape {got} but {taker} takes {expected}; {hint}")


def _same(expected: tuple, got: tuple) -> bool:
    return all(e is None or e == g for e, g in zip(expected, got, strict=True))


def check_model_data(model, data, *, what: str | None = None, classes: bool = True) -> None:
    """Refuses a `tfopt.data.Dataset` that ``model`` cannot train on, before any training:
    samples of another shape (with the fix for a missing channel axis), or more classes than
    the model has outputs (when ``classes``).

    Raises:
        DataError: one line with both shapes (or counts) and what to do.
    """
    what = what or data.name
    if not isinstance(model.input_shape, list):  # one input: a multi-input model checks itself
        taker = f"model {model.name!r}"
        check_input_shape(model.input_shape[1:], data.input_shape, what=what, taker=taker)
    outputs = model.output_shape
    units = outputs[-1] if isinstance(outputs, tuple) else None
    if classes and isinstance(units, int) and units > 1 and data.num_classes > units:
        raise DataError(
            f"{what} has {data.num_classes} classes (labels 0..{data.num_classes - 1}) but model "
            f"{model.name!r} has {units} outputs; give it a {data.num_classes}-way head (a "
            "transfer: section with head: new) or check the labels"
        )


def check_attack_radius(epsilon, x, *, arg: str = "robust_epsilon") -> None:
    """Refuses an L-inf attack radius that is not finite or that spans the inputs' whole range:
    such an attack can turn any input into any other, so its accuracy means nothing.

    Raises:
        ValueError: one line with the radius, the data's range and a radius to try.
    """
    if epsilon is None:
        return
    if not (isinstance(epsilon, int | float) and np.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"{arg} must be a finite number >= 0. Received: {arg}={epsilon!r}")
    x = np.asarray(x)
    span = float(x.max() - x.min()) if x.size else 0.0
    if span > 0 and epsilon >= span:
        raise ValueError(
            f"{arg}={epsilon:g} is at least the inputs' whole range (max - min = {span:.3g}): "
            "an L-inf attack that large can turn any input into any other, so its robust "
            f"accuracy means nothing; use a radius well inside the range, e.g. {arg}="
            f"{span / 20:.2g} (5% of it)"
        )
