"""Transfer learning: copy a trained model, give it a new head, freeze its first layers.

`transfer` builds the model to fine-tune (the user's model is only read: the copy comes from the
rewriter, `tfopt._rewrite`); `freeze` / `unfreeze` set which layers train; `fit_transfer` fits
with the frozen layers first and every layer from ``unfreeze_at_epoch`` on.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from tfopt._backend import import_keras
from tfopt._layers import spec_flag, spec_of

keras = import_keras()

HEADS = ("new", "keep")


def _layer_names(model) -> list[str]:
    return [layer.name for layer in model.layers]


def check_freeze_until(model, freeze_until: str | None) -> None:
    """Raises a one-line ValueError when ``model`` has no layer named ``freeze_until``."""
    if freeze_until is None:
        return
    names = _layer_names(model)
    if freeze_until not in names:
        close = difflib.get_close_matches(freeze_until, names, n=3, cutoff=0.4)
        hint = f" Close names: {close}." if close else ""
        raise ValueError(
            f"freeze_until must name a layer of the model {model.name!r}.{hint} Its layers: "
            f"{names}. Received: freeze_until={freeze_until!r}"
        )


def _head(model):
    last = model.layers[-1]
    if not spec_flag(last, "dense"):
        raise ValueError(
            f"head='new' replaces the model's last layer, which must be a Dense layer (or a layer "
            f"registered as fully connected with tfopt.register_layer); the model "
            f"{model.name!r} ends in {type(last).__name__} {last.name!r}. Use head='keep', or end "
            "the model in a Dense layer."
        )
    return last


def freeze(model, freeze_until: str | None) -> list[str]:
    """Sets ``trainable=False`` on ``model``'s layers up to and including ``freeze_until``.

    Returns:
        The names of the frozen layers (empty for ``freeze_until=None``).
    """
    check_freeze_until(model, freeze_until)
    if freeze_until is None:
        return []
    frozen = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):  # structural: no weights to freeze
            continue
        layer.trainable = False
        frozen.append(layer.name)
        if layer.name == freeze_until:
            break
    return frozen


def unfreeze(model) -> None:
    """Makes every layer of ``model`` trainable again (recompile before the next ``fit``)."""
    for layer in model.layers:
        layer.trainable = True


def transfer(
    model,
    *,
    num_classes: int | None = None,
    freeze_until: str | None = None,
    head: str = "new",
):
    """Returns a copy of ``model`` ready to fine-tune on a new task.

    The copy is made by the rewriter (`tfopt._rewrite.clone`): ``model`` is not changed. With
    ``head="new"`` the last Dense layer (or a layer registered as fully connected) is replaced by
    a freshly initialized copy with ``num_classes`` units and the same activation (logits stay
    logits, a softmax stays a softmax); ``head="keep"`` keeps it (its output must already have ``num_classes`` units). The layers up to
    and including ``freeze_until`` are frozen (``trainable=False``); the new head always trains.

    Args:
        model: a trained Sequential or functional Keras model (the user's ``.keras`` or a zoo
            model).
        num_classes: classes of the new task. Defaults to None (the model's own output size).
        freeze_until: name of the last layer to freeze. Defaults to None (nothing frozen).
        head: ``"new"`` or ``"keep"``. Defaults to "new".

    Returns:
        A new functional model; ``result.transfer_frozen`` lists the frozen layers.

    Raises:
        ValueError: an unknown ``head``, a ``freeze_until`` the model doesn't have (with close
            names), a model whose last layer isn't Dense (``head="new"``), or ``head="keep"``
            with another number of classes.

    Example:
        >>> base = keras.models.load_model("digits.keras")
        >>> model = tfopt.train.transfer(base, num_classes=5, freeze_until="conv2")
        >>> tfopt.train.fit_transfer(model, fit, epochs=10, unfreeze_at_epoch=4)
    """
    from tfopt._rewrite import clone, copy_layer, is_graph_model

    if head not in HEADS:
        raise ValueError(f"head must be one of {list(HEADS)}. Received: head={head!r}")
    if not is_graph_model(model):
        raise ValueError(
            f"transfer needs a Sequential or functional model; {model.name!r} is a subclassed "
            f"{type(model).__module__}.{type(model).__name__}."
        )
    check_freeze_until(model, freeze_until)
    outputs = int(model.outputs[0].shape[-1])
    num_classes = outputs if num_classes is None else int(num_classes)
    if head == "keep" and num_classes != outputs:
        raise ValueError(
            f"head='keep' keeps the model's {outputs}-class output, and the task has "
            f"num_classes={num_classes}. Use head='new'."
        )
    old_head = _head(model) if head == "new" else None
    copy = clone(model, action="transfer")
    if old_head is not None:
        features = copy.get_layer(old_head.name).input
        # the same class and config (activation, bias, regularizers), num_classes wide
        width = {spec_of(old_head).width: num_classes, "trainable": True}
        new_head = copy_layer(old_head, {**old_head.get_config(), **width})
        copy = keras.Model(copy.inputs, new_head(features), name=f"{model.name}_transfer")
    frozen = freeze(copy, freeze_until)
    if old_head is not None and old_head.name in frozen:
        copy.get_layer(old_head.name).trainable = True
        frozen.remove(old_head.name)
    copy.transfer_frozen = frozen
    return copy


def frozen_span(model, freeze_until: str | None, head: str) -> str | None:
    """The span of frozen layers (``"'a'..'z'"``) when `transfer` of ``model`` with these
    settings would freeze every layer with weights, else None: ``head="keep"`` and no layer
    after ``freeze_until`` has weights (a new head always trains)."""
    if head != "keep" or freeze_until is None:
        return None
    names = _layer_names(model)
    if freeze_until not in names:
        return None
    end = names.index(freeze_until)
    if any(layer.weights for layer in model.layers[end + 1 :]):
        return None
    layers = model.layers[: end + 1]
    frozen = [layer.name for layer in layers if not isinstance(layer, keras.layers.InputLayer)]
    return f"{frozen[0]!r}..{frozen[-1]!r}" if frozen else "every layer"


def check_trains(model, *, epochs: int, unfreeze_at_epoch: int | None) -> None:
    """Refuses a `transfer` model whose fit of ``epochs`` would change no weight: every layer
    with weights frozen (``head="keep"`` and ``freeze_until`` its last layer), never unfrozen.

    Raises:
        ValueError: one line naming the frozen layers' span and the three ways out.
    """
    never = unfreeze_at_epoch is None or unfreeze_at_epoch >= epochs
    if epochs and never and not model.trainable_weights:
        frozen = getattr(model, "transfer_frozen", [])
        span = f"{frozen[0]!r}..{frozen[-1]!r}" if frozen else "every layer"
        raise ValueError(
            f"freezes every layer with weights ({span}) and never unfreezes them: the {epochs} "
            "training epochs would change nothing; freeze an earlier layer (freeze_until), use "
            "head: new, or set unfreeze_at_epoch"
        )


def fit_transfer(
    model,
    fit: Callable[..., Any],
    *,
    epochs: int,
    unfreeze_at_epoch: int | None = None,
) -> list:
    """Fits a `transfer` model: frozen layers first, every layer from ``unfreeze_at_epoch`` on.

    ``fit(model, initial_epoch=, epochs=)`` compiles ``model`` and fits it from epoch
    ``initial_epoch`` up to ``epochs`` (Keras's meaning: the index of the last epoch); it is
    called once, or twice with `unfreeze` (which needs a fresh compile) in between.

    Args:
        model: the model from `transfer`.
        fit: the compile-and-fit callable. Returns a `keras.callbacks.History`.
        epochs: total epochs.
        unfreeze_at_epoch: the epoch at which every layer becomes trainable; None or >= epochs:
            never. Defaults to None.

    Returns:
        The list of ``History`` objects (one per phase).

    Raises:
        ValueError: ``unfreeze_at_epoch`` < 0.
    """
    if unfreeze_at_epoch is not None and unfreeze_at_epoch < 0:
        raise ValueError(
            f"unfreeze_at_epoch must be >= 0. Received: unfreeze_at_epoch={unfreeze_at_epoch}"
        )
    if unfreeze_at_epoch is None or unfreeze_at_epoch >= epochs:
        return [fit(model, initial_epoch=0, epochs=epochs)]
    histories = []
    if unfreeze_at_epoch > 0:
        histories.append(fit(model, initial_epoch=0, epochs=unfreeze_at_epoch))
    unfreeze(model)
    histories.append(fit(model, initial_epoch=unfreeze_at_epoch, epochs=epochs))
    return histories
