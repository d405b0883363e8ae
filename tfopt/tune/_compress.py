"""Apply a compression recipe (a flat dict of hyperparameters) to a trained float model.

This is the one place where the search (`tfopt.tune`, `tfopt.auto`) calls the techniques of
`tfopt.prune`, `tfopt.quantize`, `tfopt.cluster` and `tfopt.distill`. A technique whose module is not
installed (or lacks the API) is reported by `available_techniques()` and left out of the search
space; a recipe that asks for it anyway fails with a clear error.

A recipe's keys (all optional; missing keys switch the stage off):

===================  ========================================================================
``channel_ratio``    fraction of channels removed by channel pruning (0 off)
``channel_scope``    ``"dense"`` (only the widest hidden Dense layer) or ``"all"`` layers
``sparsity``         target weight sparsity of magnitude pruning (0 off)
``schedule``         ``"polynomial"`` or ``"constant"`` pruning schedule
``prune_scope``      ``"large"`` (layers with >= 5% of the kernel weights) or ``"all"`` layers
``clusters``         weight clusters per layer (0 off)
``quantization``     ``"qat"`` (quantization-aware fine-tuning) or ``"ptq"`` (calibration only)
``distill``          fine-tune every stage against the float teacher's logits (bool)
``temperature``      distillation temperature
``alpha``            weight of the student (label) loss; ``1 - alpha`` goes to distillation
``epochs``           fine-tuning epochs of the pruning stage (the other stages use a share of it)
``learning_rate``    fine-tuning learning rate
``batch_size``       fine-tuning batch size
===================  ========================================================================
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field

import numpy as np

from tfopt import _formats as formats
from tfopt._backend import import_keras

keras = import_keras()

TECHNIQUES = ("prune", "prune_channels", "quantize", "cluster", "distill")

# technique -> (module, attributes it needs)
_APIS = {
    "prune": ("tfopt.prune", ("prune", "strip", "PolynomialDecay", "ConstantSparsity")),
    "prune_channels": ("tfopt.prune", ("prune_channels",)),
    "quantize": ("tfopt.quantize", ("qat",)),
    "cluster": ("tfopt.cluster", ("cluster", "strip")),
    "distill": ("tfopt.distill", ("Distiller",)),
}


def _module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def available_techniques() -> tuple[str, ...]:
    """Names of the compression techniques whose tfopt modules are installed with their API.

    Returns:
        A tuple, a subset of ``("prune", "prune_channels", "quantize", "cluster", "distill")``.

    Example:
        >>> "prune" in tfopt.tune.available_techniques()
        True
    """
    out = []
    for tech in TECHNIQUES:
        module_name, attrs = _APIS[tech]
        module = _module(module_name)
        if module is not None and all(hasattr(module, a) for a in attrs):
            out.append(tech)
    return tuple(out)


def _need(tech: str):
    if tech not in available_techniques():
        module_name, attrs = _APIS[tech]
        raise RuntimeError(
            f"The recipe needs technique {tech!r} ({module_name}.{'/'.join(attrs)}), which is not "
            f"available in this installation. Available: {list(available_techniques())}"
        )
    return importlib.import_module(_APIS[tech][0])


def outputs_logits(model) -> bool:
    """Whether ``model``'s last layer outputs logits (no softmax/sigmoid activation)."""
    last = model.layers[-1]
    act = getattr(last, "activation", None)
    name = getattr(act, "__name__", "") if act is not None else ""
    return name not in ("softmax", "sigmoid") and type(last).__name__ != "Softmax"


def compile_classifier(model, learning_rate: float, *, logits: bool = True):
    """Compiles ``model`` with Adam, sparse categorical cross-entropy and accuracy."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=logits),
        metrics=["accuracy"],
    )
    return model


@dataclass
class CompressionResult:
    """What `compress` produced: the model to export and how to export it."""

    model: object
    quantization: str
    stages: list[str] = field(default_factory=list)
    facts: dict = field(default_factory=dict)


def clone(model):
    """A copy of ``model`` with its own layers and the same weights (the input is never mutated)."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def _fit(model, train, val, *, epochs, learning_rate, batch_size, teacher, recipe, verbose):
    """Fine-tunes ``model`` on ``train`` with a cosine-decayed learning rate.

    Distills from ``teacher`` when the recipe says so. ``val`` is shown only when ``verbose``.
    """
    if epochs <= 0:
        return model
    x, y = train
    steps = int(epochs) * math.ceil(len(x) / int(batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps, alpha=0.05)
    optimizer = keras.optimizers.Adam(schedule)
    if recipe.get("distill") and teacher is not None:
        distill = _need("distill")
        trainer = distill.Distiller(
            teacher=teacher,
            student=model,
            temperature=float(recipe.get("temperature", 4.0)),
            alpha=float(recipe.get("alpha", 0.1)),
            precompute_teacher=True,
        )
        trainer.compile(optimizer=optimizer, metrics=["accuracy"])
    else:
        model.compile(
            optimizer=optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=outputs_logits(model)),
            metrics=["accuracy"],
        )
        trainer = model
    trainer.fit(
        x,
        y,
        epochs=int(epochs),
        batch_size=int(batch_size),
        validation_data=val if verbose else None,
        verbose=verbose,
    )
    return model


def _sparsity_of(model) -> float:
    kernels = [
        np.asarray(w)
        for layer in model._flatten_layers()
        for w in getattr(layer, "weights", [])
        if "kernel" in w.path and len(w.shape) > 1
    ]
    total = sum(k.size for k in kernels)
    return float(sum(int((k == 0).sum()) for k in kernels) / total) if total else 0.0


def compress(
    model,
    recipe: dict,
    train,
    val,
    *,
    teacher=None,
    target: str = "tflite-int8",
    verbose: int = 0,
) -> CompressionResult:
    """Applies ``recipe`` to a copy of a trained float ``model``; returns the model to export.

    Stages run in this order: channel pruning -> magnitude pruning -> strip -> clustering -> strip
    -> QAT (or post-training calibration at export; always post-training after clustering, because
    QAT fine-tuning would move the weights off their clusters). Each stage fine-tunes on ``train`` (with
    distillation from ``teacher`` when ``recipe["distill"]``). ``model`` is not changed.

    Args:
        model: the trained float Keras model.
        recipe: the recipe's hyperparameters (see the module docstring).
        train: ``(x, y)`` fine-tuning data.
        val: ``(x, y)`` validation data shown during fine-tuning.
        teacher: the float model to distill from. Defaults to None (``model`` itself when the
            recipe distills).
        target: ``"tflite-int8"``, ``"tflite-float16"``, ``"tflite-dynamic"`` or ``"tflite"``.
            Defaults to "tflite-int8".
        verbose: Keras ``fit`` verbosity. Defaults to 0.

    Returns:
        A `CompressionResult` whose ``quantization`` is the ``tfopt.export.tflite`` mode.

    Raises:
        RuntimeError: the recipe needs a technique that is not available.
    """
    recipe = dict(recipe)
    epochs = int(recipe.get("epochs", 8))
    lr = float(recipe.get("learning_rate", 5e-4))
    batch = int(recipe.get("batch_size", 64))
    if recipe.get("distill") and teacher is None:
        teacher = model
    fit = dict(
        teacher=teacher,
        recipe=recipe,
        verbose=verbose,
        batch_size=batch,
        learning_rate=lr,
    )
    stages: list[str] = []
    facts: dict = {}
    current = clone(model)

    ratio = float(recipe.get("channel_ratio", 0.0) or 0.0)
    if ratio > 0:
        prune = _need("prune_channels")
        scope = recipe.get("channel_scope", "dense")
        widest = _widest_hidden_dense(current) if scope == "dense" else None
        if scope == "dense" and widest is None:
            raise RuntimeError(
                "channel_scope='dense' needs a hidden Dense layer; the model has none"
            )
        current, plan = prune.prune_channels(
            current, ratio, filters=None if widest is None else [f"^{widest}$"]
        )
        facts["channel_plan"] = str(plan)
        _fit(current, train, val, epochs=max(1, epochs // 2), **fit)
        stages.append(f"prune_channels({ratio:g},{scope})")

    sparsity = float(recipe.get("sparsity", 0.0) or 0.0)
    if sparsity > 0:
        prune = _need("prune")
        steps_per_epoch = math.ceil(len(train[0]) / batch)
        end = max(1, int(0.7 * epochs * steps_per_epoch))
        freq = max(1, min(100, end // 10))
        if recipe.get("schedule", "polynomial") == "constant":
            schedule = prune.ConstantSparsity(sparsity, begin_step=0, frequency=freq)
        else:
            schedule = prune.PolynomialDecay(
                0.0, sparsity, begin_step=0, end_step=end, frequency=freq
            )
        scope = recipe.get("prune_scope", "large")
        current = prune.prune(current, schedule, filters=_prune_filter(current, scope))
        _fit(current, train, val, epochs=epochs, **fit)
        current = prune.strip(current)
        stages.append(f"prune({sparsity:g},{recipe.get('schedule', 'polynomial')},{scope})")

    clusters = int(recipe.get("clusters", 0) or 0)
    if clusters > 0:
        cluster = _need("cluster")
        current = cluster.cluster(current, clusters, preserve_sparsity=sparsity > 0)
        _fit(current, train, val, epochs=max(1, epochs // 4), **fit)
        current = cluster.strip(current)
        stages.append(f"cluster({clusters})")

    quantization = formats.get(target).quantization
    if quantization == "int8" and recipe.get("quantization", "ptq") == "qat" and clusters > 0:
        # QAT fine-tuning would move the weights off their clusters (tfopt.quantize.qat keeps
        # zeros, not codebooks); calibrated int8 keeps <= n_clusters values per channel.
        stages.append("ptq")
        facts["qat_skipped"] = "clustered weights are quantized post-training to keep the clusters"
    elif quantization == "int8" and recipe.get("quantization", "ptq") == "qat":
        quantize = _need("quantize")
        current = quantize.qat(current, preserve_sparsity=sparsity > 0)
        _fit(current, train, val, epochs=max(1, epochs // 4), **{**fit, "learning_rate": lr / 2})
        stages.append("qat")
    elif quantization == "int8":
        stages.append("ptq")
    if recipe.get("distill") and any(not st.startswith("ptq") for st in stages):
        stages.append(f"distill(T={float(recipe.get('temperature', 4.0)):g})")
    facts["kernel_sparsity"] = _sparsity_of(current)
    return CompressionResult(model=current, quantization=quantization, stages=stages, facts=facts)


def _prune_filter(model, scope: str):
    """Layer filter for magnitude pruning: ``"all"`` layers, or the ``"large"`` ones.

    ``"large"`` keeps small layers dense (those holding less than 5% of the model's kernel weights,
    e.g. a first convolution with 160 weights or the output layer): pruning them saves almost no
    bytes and costs the most accuracy.
    """
    if scope == "all":
        return None
    if scope != "large":
        raise ValueError(f"prune_scope must be 'large' or 'all'. Received: prune_scope={scope!r}")
    sizes = {
        layer.name: int(np.prod(layer.kernel.shape))
        for layer in model.layers
        if getattr(layer, "kernel", None) is not None
    }
    total = sum(sizes.values()) or 1
    large = {name for name, n in sizes.items() if n >= 0.05 * total}
    return lambda layer: layer.name in large


def _widest_hidden_dense(model) -> str | None:
    """The name of the Dense layer with the most units that is not the output layer."""
    outputs = {id(t) for t in model.outputs}
    dense = [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.Dense) and id(layer.output) not in outputs
    ]
    return max(dense, key=lambda layer: layer.units).name if dense else None
