"""`prune`, `strip` and `sparsity`: the model-level entry points of magnitude pruning."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tfopt._backend import check_model, import_keras
from tfopt._rewrite import (
    Report,
    attach_report,
    copy_layer,
    is_graph_model,
    layer_filter,
    rewrite,
)
from tfopt.prune._schedules import ConstantSparsity, PruningSchedule, PruningScheduleWarning
from tfopt.prune._wrapper import (
    PruneLowMagnitude,
    _check_block_size,
    _check_m_by_n,
    _resolve,
    prunable_weights,
    unsupported_reason,
    wrap,
)

keras = import_keras()
logger = logging.getLogger(__name__)


@dataclass
class SparsityReport:
    """Per-layer and global sparsity of the prunable weights of a model.

    Attributes:
        layers: ``{layer name: {"zeros": int, "size": int, "sparsity": float}}``.
        global_sparsity: zeros / size over all the layers listed.
    """

    layers: dict[str, dict] = field(default_factory=dict)

    @property
    def global_sparsity(self) -> float:
        size = sum(v["size"] for v in self.layers.values())
        return sum(v["zeros"] for v in self.layers.values()) / size if size else 0.0

    def to_dict(self) -> dict:
        return {"layers": self.layers, "global_sparsity": self.global_sparsity}

    def __str__(self) -> str:
        width = max([len(n) for n in self.layers] + [6])
        lines = [f"{'layer':<{width}}  {'params':>9}  sparsity"]
        for name, v in self.layers.items():
            lines.append(f"{name:<{width}}  {v['size']:>9}  {v['sparsity']:.1%}")
        total = sum(v["size"] for v in self.layers.values())
        lines.append(f"{'global':<{width}}  {total:>9}  {self.global_sparsity:.1%}")
        return "\n".join(lines)


def _check_schedule(schedule, m_by_n) -> PruningSchedule:
    if schedule is None:
        sparsity = 1.0 - m_by_n[0] / m_by_n[1] if m_by_n else 0.5
        return ConstantSparsity(sparsity, begin_step=0, frequency=100)
    if not isinstance(schedule, PruningSchedule):
        raise TypeError(
            "schedule must be a tfopt.prune schedule (ConstantSparsity, PolynomialDecay, "
            f"GradualCubic). Received: schedule={schedule!r} of type "
            f"{type(schedule).__module__}.{type(schedule).__name__}"
        )
    return schedule


def _has_weights(layer) -> bool:
    try:
        return bool(layer.weights)
    except Exception:  # an unbuilt layer
        return bool(prunable_weights(layer))


def prune(
    model,
    schedule: PruningSchedule | None = None,
    *,
    m_by_n: tuple[int, int] | None = None,
    block_size: tuple[int, int] | None = None,
    filters: str | list[str] | Callable | None = None,
):
    """Returns a copy of ``model`` whose prunable layers are wrapped in `PruneLowMagnitude`.

    The user's model is not changed. The copy has the same weights; its masks start all ones and
    are updated inside ``model.fit`` (no callback needed) as ``schedule`` says. Layers it cannot
    prune are left as they are and listed, with the reason, in ``pruned.tfopt_report``.

    The masks advance once per training step, so a schedule must reach its target within the
    steps you train: `PruningSchedule.check` (``schedule.check(epochs * steps_per_epoch)``) says
    so before training, the optional `tfopt.callbacks.PruningSummaries` checks it when ``fit``
    starts, and `strip` warns about every layer that has not reached its target.

    Sequential and functional models are cloned. A subclassed model is copied through its
    ``get_config`` and the prunable layers it holds as attributes (or in lists) are wrapped on the
    copy; the result is a functional model around a `tfopt._rewrite.RewrittenSubclassModel`,
    which saves as ``.keras`` (and loads when the model class is registered with
    ``keras.saving.register_keras_serializable``).

    Args:
        model: a built Keras 3 model.
        schedule: a `ConstantSparsity`, `PolynomialDecay` or `GradualCubic`. Defaults to a new
            ``ConstantSparsity(0.5)`` (``ConstantSparsity(1 - m/n)`` with ``m_by_n``).
        m_by_n: structured sparsity keeping ``m`` of every ``n`` consecutive weights along the
            reduction axis, e.g. ``(2, 4)``. Defaults to None (unstructured).
        block_size: prune whole ``(rows, cols)`` blocks of each kernel's 2-D view. Defaults to None.
        filters: which layers to prune: a regex searched in layer names, a list of names, or a
            callable ``layer -> bool``. Defaults to None (every supported layer).

    Returns:
        The new ``keras.Model`` (uncompiled), with a ``tfopt_report`` attribute (`tfopt.Report`, also
        ``pruning_report``).

    Raises:
        TypeError: ``model`` is not a Keras 3 model, or a wrong ``schedule``/``filters`` type.
        ValueError: invalid ``m_by_n`` / ``block_size``, or a subclassed model that cannot be
            copied.

    Example:
        >>> pruned = prune(model, PolynomialDecay(0.0, 0.8, begin_step=0, end_step=2000))
        >>> pruned.compile("adam", "sparse_categorical_crossentropy")
        >>> pruned.fit(x, y, epochs=5)
        >>> small = strip(pruned)
    """
    check_model(model)
    m_by_n = _check_m_by_n(m_by_n)
    block_size = _check_block_size(block_size)
    if m_by_n and block_size:
        raise ValueError(
            f"Use m_by_n or block_size, not both. Received: m_by_n={m_by_n}, block_size={block_size}"
        )
    schedule = _check_schedule(schedule, m_by_n)
    select = layer_filter(filters)
    report = Report("prune")

    def replace(layer):
        reason = unsupported_reason(layer, m_by_n=m_by_n)
        if reason is None and not select(layer):
            reason = "excluded by filters"
        if reason is not None:
            if _has_weights(layer):
                report.skip(layer, reason)
            return None
        try:
            new = wrap(
                copy_layer(layer),
                schedule,
                m_by_n=m_by_n,
                block_size=block_size,
                name=f"prune_{layer.name}",
            )
        except (ValueError, TypeError) as e:  # a layer we misjudged stays dense, with the reason
            report.skip(layer, str(e))
            return None
        report.change(layer, ", ".join(w.attr for w in prunable_weights(layer)))
        return new

    def finish(layer, wrapper):
        wrapper.layer.set_weights(layer.get_weights())

    if not is_graph_model(model) and not model._call_has_training_arg:
        raise ValueError(
            f"The subclassed model {type(model).__name__!r} has a call() without a `training` "
            "argument, so model.fit never tells its layers that it is training and the pruning "
            "masks would never update. Add `training=None` to its call() signature (and pass it "
            "on to sublayers if you like), or build the model as a functional model."
        )
    pruned = rewrite(model, replace, finish=finish, action="prune()")
    return attach_report(pruned, report, "pruning_report")


def _check_reached(wrappers) -> None:
    late = [
        f"{w.name} (step {w.step}, target at step {w.schedule.final_step})"
        for w in wrappers
        if w.schedule.target_sparsity > 0 and w.step <= w.schedule.final_step
    ]
    if late:
        warnings.warn(
            "These layers have not reached their schedule's target sparsity; the model is less "
            f"sparse than planned: {', '.join(late)}. Train until the schedule's end_step "
            "(tfopt.prune.sparsity(model) shows the sparsity now).",
            PruningScheduleWarning,
            stacklevel=3,
        )


def wrappers_of(model) -> list[PruneLowMagnitude]:
    """All pruning wrappers in ``model`` (nested models included)."""
    return [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, PruneLowMagnitude)
    ]


def strip(model, *, batchnorm_data=None):
    """Returns a copy of a pruned model with plain Keras layers and the zeros in their kernels.

    Warns with `PruningScheduleWarning` when a layer has not yet reached its schedule's target.

    With ``batchnorm_data``, the copy's BatchNormalization statistics are recomputed on those
    inputs (forward passes only, `tfopt._training.recalibrate_batchnorm`): their moving averages
    span the last ~100 training steps, so after a short fine-tune they still mix in the denser
    model's activations. tfopt's own fits (`tfopt run`, `tune`, `auto`) already end this way;
    this is for a pruned model trained with a plain ``model.fit``. Measured on
    Fashion-MNIST (`fashion_cnn`, sparsity reached halfway through the fine-tune, 6,400 training
    images): at 75% after 211 steps +1.05 to +1.65 pt test accuracy (3 seeds); after 422 steps
    -0.12 to +0.13 pt at 50/75% and +0.95 pt at 87.5% (benchmarks/fashion_vs_tfmot.py, README).

    Args:
        model: a model returned by `prune` (trained or not). A model without wrappers is copied.
        batchnorm_data: input samples (e.g. a few thousand training images) to recompute the
            BatchNormalization statistics on. Defaults to None (kept as trained).

    Returns:
        A new ``keras.Model`` whose layers are the wrapped layers' own classes, names and configs,
        with ``weight * mask`` as weights. The pruned model is not changed.

    Raises:
        TypeError: ``model`` is not a Keras 3 model.

    Example:
        >>> small = strip(pruned)
        >>> tfopt.export.tflite(small, "m.tflite")
    """
    check_model(model)
    _check_reached(wrappers_of(model))

    def replace(layer):
        return copy_layer(layer.layer) if isinstance(layer, PruneLowMagnitude) else None

    def finish(wrapper, plain):
        plain.set_weights(wrapper.masked_weights())

    stripped = rewrite(model, replace, finish=finish, action="strip()")
    if batchnorm_data is not None:
        from tfopt._training import recalibrate_batchnorm

        n = recalibrate_batchnorm(stripped, batchnorm_data, batch_size=128)
        logger.info("strip: recomputed the statistics of %d BatchNormalization layers", n)
    return stripped


def sparsity(model) -> SparsityReport:
    """Reports the sparsity of each prunable layer's weights and of all of them together.

    Works on pruned models (the masked weights) and on stripped or plain models (the zeros in the
    kernels of Dense, Conv, Embedding... layers).

    Args:
        model: a Keras 3 model.

    Returns:
        A `SparsityReport`: ``report.layers[name]["sparsity"]`` and ``report.global_sparsity``;
        ``print(report)`` shows a table.

    Raises:
        TypeError: ``model`` is not a Keras 3 model.

    Example:
        >>> print(sparsity(strip(pruned)))
    """
    check_model(model)
    report = SparsityReport()
    inner = set()
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, PruneLowMagnitude):
            inner.update(id(sub) for sub in layer.layer._flatten_layers())
            zeros = size = 0
            for z, s in layer.sparsities().values():
                zeros, size = zeros + z, size + s
            name = layer.layer.name
        elif prunable_weights(layer) and layer.built and id(layer) not in inner:
            zeros = size = 0
            for w in prunable_weights(layer):
                value = keras.ops.convert_to_numpy(_resolve(layer, w.attr)[2])
                zeros, size = zeros + int(np.sum(value == 0)), size + int(value.size)
            name = layer.name
        else:
            continue
        report.layers[name] = {
            "zeros": zeros,
            "size": size,
            "sparsity": zeros / size if size else 0.0,
        }
    return report
