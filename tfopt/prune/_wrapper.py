"""`PruneLowMagnitude`: a Keras 3 wrapper that masks a layer's kernels and updates the masks itself.

The wrapper owns one non-trainable 0/1 mask per pruned weight and a ``pruning_step`` counter. In a
training call (``training=True``, which ``model.fit`` passes) it recomputes the masks when the
schedule says so (a ``tf.cond``; the expensive sort only runs on those steps), zeros the pruned
weights, and increments the counter. Every call multiplies the weights by their masks. No callback
is needed, and masks, counter and schedule are saved in ``.keras`` files, so a resumed fit continues
at the same step with the same masks.
"""

from __future__ import annotations

import tensorflow as tf

from tfopt._backend import import_keras
from tfopt._layers import (
    Weight,
    guard,
    register_layer,
    resolve,
    spec_flag,
    spec_of,
    substituted,
)
from tfopt.prune import _masks
from tfopt.prune._schedules import PruningSchedule, deserialize, serialize

keras = import_keras()


def register_prunable(layer_class: type, weights: tuple[str, ...] | list[str]) -> None:
    """Lets `prune` wrap your own layer class, pruning the weights held in ``weights``.

    A shorthand of `tfopt.register_layer` (which also tells cluster, qat, prune_channels and the
    MAC counter about the layer): the wrapper substitutes ``weight * mask`` for each named
    attribute while the layer's own ``call`` runs, so ``call`` must read the weights from those
    attributes (e.g. ``self.kernel``). Register before `prune` and before loading a pruned
    ``.keras`` file.

    Args:
        layer_class: a subclass of ``keras.layers.Layer``.
        weights: attribute paths of the variables to prune, e.g. ``("kernel",)`` or
            ``("proj.kernel", "gate")``.

    Raises:
        TypeError: ``layer_class`` is not a Keras layer class, or ``weights`` is not strings.

    Example:
        >>> tfopt.prune.register_prunable(MyDense, weights=("kernel",))
        >>> pruned = tfopt.prune.prune(model)
    """
    if isinstance(weights, str) or not weights or not all(isinstance(w, str) for w in weights):
        raise TypeError(
            "weights must be a non-empty list of attribute paths (str), e.g. ('kernel',). "
            f"Received: weights={weights!r}"
        )
    register_layer(layer_class, weights={w: {} for w in weights}, quantize=False)


def prunable_weights(layer) -> tuple[Weight, ...]:
    """The weights `prune` masks in ``layer`` (empty when its spec does not prune it)."""
    spec = spec_of(layer)
    return spec.compressed() if spec is not None and spec.prune else ()


def unsupported_reason(layer, *, m_by_n=None) -> str | None:
    """Returns why ``layer`` cannot be wrapped (None when it can)."""
    spec = spec_of(layer)
    if spec is None or not spec.prune:
        if layer.weights if layer.built else False:
            return (
                f"{type(layer).__name__} has no prunable kernel tfopt knows of (its weights are "
                "kept dense; describe a layer of yours with tfopt.register_layer)"
            )
        return f"{type(layer).__name__} has no prunable kernel (its weights are kept dense)"
    why = guard(layer, spec)
    if why:
        return why
    if m_by_n is not None:
        weights = spec.compressed()
        if any(w.reduce_axis is None for w in weights):
            return (
                f"m_by_n={m_by_n} applies to Dense/Conv/Embedding kernels, not {spec.cls.__name__}"
            )
        if layer.built:
            for w in weights:
                variable = resolve(layer, w.attr)[2]
                why = _masks.m_by_n_supported(
                    variable.shape, m_by_n[1], along_last=w.reduce_axis == -1
                )
                if why:
                    return f"m_by_n={m_by_n}: {why}"
    return None


_resolve = resolve


def _check_m_by_n(m_by_n):
    if m_by_n is None:
        return None
    ok = (
        isinstance(m_by_n, (tuple, list))
        and len(m_by_n) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in m_by_n)
        and 0 < m_by_n[0] < m_by_n[1]
    )
    if not ok:
        raise ValueError(
            "m_by_n must be a pair of ints (m, n) with 0 < m < n, e.g. (2, 4) keeps 2 of every 4 "
            f"weights. Received: m_by_n={m_by_n!r}"
        )
    return (int(m_by_n[0]), int(m_by_n[1]))


def _check_block_size(block_size):
    if block_size is None:
        return None
    ok = (
        isinstance(block_size, (tuple, list))
        and len(block_size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in block_size)
    )
    if not ok:
        raise ValueError(
            "block_size must be a pair of ints >= 1 (rows, cols), e.g. (1, 4). "
            f"Received: block_size={block_size!r}"
        )
    return (int(block_size[0]), int(block_size[1]))


@keras.saving.register_keras_serializable(package="tfopt")
class PruneLowMagnitude(keras.layers.Wrapper):
    """Magnitude pruning of a layer's kernels, with masks updated inside the training step.

    Args:
        layer: the Keras layer to prune (Dense, Conv*, DepthwiseConv*, SeparableConv*,
            Conv*Transpose, Embedding, EinsumDense, MultiHeadAttention).
        schedule: a `PruningSchedule` (or its serialization). Defaults to
            ``ConstantSparsity(0.5)``, or ``ConstantSparsity(1 - m/n)`` with ``m_by_n``.
        m_by_n: keep the ``m`` largest of every ``n`` consecutive weights along the reduction
            axis (2:4 sparsity is ``(2, 4)``) once the schedule's sparsity is above 0. Defaults to
            None (unstructured).
        block_size: prune whole ``(rows, cols)`` blocks of the 2-D kernel view. Defaults to None.
        **kwargs: `keras.layers.Layer` arguments (``name``...).

    Raises:
        ValueError: for an unsupported layer or invalid ``m_by_n`` / ``block_size``.

    Notes:
        The masks advance only in calls with ``training=True`` (``model.fit`` passes it; a custom
        training loop must too). A wrapper called several times per step (a shared layer)
        advances its step once per call.

    Example:
        >>> w = PruneLowMagnitude(keras.layers.Dense(8), ConstantSparsity(0.5))
    """

    def __init__(self, layer, schedule=None, *, m_by_n=None, block_size=None, **kwargs):
        from tfopt.prune._schedules import ConstantSparsity

        super().__init__(layer, **kwargs)
        self.m_by_n = _check_m_by_n(m_by_n)
        self.block_size = _check_block_size(block_size)
        if self.m_by_n and self.block_size:
            raise ValueError(
                "Use m_by_n or block_size, not both. Received: "
                f"m_by_n={m_by_n!r}, block_size={block_size!r}"
            )
        if schedule is None:
            sparsity = 1.0 - self.m_by_n[0] / self.m_by_n[1] if self.m_by_n else 0.5
            schedule = ConstantSparsity(sparsity)
        schedule = deserialize(schedule)
        if not isinstance(schedule, PruningSchedule):
            raise TypeError(
                "schedule must be a tfopt.prune schedule (ConstantSparsity, PolynomialDecay, "
                f"GradualCubic). Received: schedule={schedule!r}"
            )
        self.schedule = schedule
        why = unsupported_reason(layer, m_by_n=self.m_by_n)
        if why:
            raise ValueError(f"Cannot prune layer {layer.name!r}: {why}.")
        self._paths = tuple(w.attr for w in prunable_weights(layer))
        self._along_last = any(w.reduce_axis == -1 for w in prunable_weights(layer))

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        self._build_masks()

    def _build_masks(self):
        self.masks = []
        for path in self._paths:
            variable = _resolve(self.layer, path)[2]
            if self.m_by_n:
                why = _masks.m_by_n_supported(
                    variable.shape, self.m_by_n[1], along_last=self._along_last
                )
                if why:
                    raise ValueError(
                        f"Cannot prune layer {self.layer.name!r}: m_by_n={self.m_by_n}: {why}."
                    )
            self.masks.append(
                self.add_weight(
                    name=f"{path.replace('.', '_').lstrip('_')}_mask",
                    shape=variable.shape,
                    initializer="ones",
                    trainable=False,
                    dtype=variable.dtype,
                )
            )
        self.pruning_step = self.add_weight(
            name="pruning_step", shape=(), initializer="zeros", trainable=False, dtype="int64"
        )
        self.built = True

    # -- the training-time update ---------------------------------------------------------------

    def pruned_variables(self) -> list:
        """The inner layer's variables this wrapper masks, in mask order."""
        return [_resolve(self.layer, p)[2] for p in self._paths]

    def _new_mask(self, value, sparsity):
        if self.m_by_n:
            structured = _masks.m_by_n_mask(value, *self.m_by_n, along_last=self._along_last)
            return tf.cond(sparsity > 0.0, lambda: structured, lambda: tf.ones_like(value))
        if self.block_size:
            return _masks.block_mask(value, sparsity, self.block_size)
        return _masks.magnitude_mask(value, sparsity)

    def _update_masks(self):
        step = self.pruning_step.value

        def update():
            sparsity = self.schedule(step)
            for variable, mask in zip(self.pruned_variables(), self.masks):
                new = self._new_mask(variable.value, sparsity)
                mask.assign(new)
                variable.assign(variable.value * new)
            return tf.constant(True)

        tf.cond(self.schedule.should_update(step), update, lambda: tf.constant(False))
        self.pruning_step.assign_add(1)

    def call(self, inputs, training=None, **kwargs):
        return self._masked_call((inputs,), training, kwargs)

    def _masked_call(self, args, training, kwargs):
        if training is True:
            self._update_masks()
        values = {
            path: variable.value * mask.value
            for path, variable, mask in zip(self._paths, self.pruned_variables(), self.masks)
        }
        with substituted(self.layer, values):
            return self.layer(*args, **kwargs)  # `training` reaches it through the call context

    # -- inspection, stripping, serialization ---------------------------------------------------

    def masked_weights(self) -> list:
        """The inner layer's weights (numpy) with the masks applied, in ``layer.weights`` order."""
        masks = {id(v): m for v, m in zip(self.pruned_variables(), self.masks)}
        out = []
        for w in self.layer.weights:
            value = keras.ops.convert_to_numpy(w)
            if id(w) in masks:
                value = value * keras.ops.convert_to_numpy(masks[id(w)])
            out.append(value)
        return out

    def sparsities(self) -> dict[str, tuple[int, int]]:
        """``{weight path: (zeros, size)}`` of the masked weights."""
        out = {}
        for path, variable, mask in zip(self._paths, self.pruned_variables(), self.masks):
            # the variables, not .value: a tf.distribute variable read in cross-replica context
            value = keras.ops.convert_to_numpy(variable) * keras.ops.convert_to_numpy(mask)
            out[path] = (int((value == 0).sum()), int(value.size))
        return out

    @property
    def step(self) -> int:
        """The number of training steps this wrapper has run."""
        return int(keras.ops.convert_to_numpy(self.pruning_step))

    def get_config(self):
        config = super().get_config()
        config.update(
            schedule=serialize(self.schedule),
            m_by_n=list(self.m_by_n) if self.m_by_n else None,
            block_size=list(self.block_size) if self.block_size else None,
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        layer = keras.saving.deserialize_keras_object(config.pop("layer"), custom_objects)
        m_by_n = config.pop("m_by_n", None)
        block_size = config.pop("block_size", None)
        return cls(
            layer,
            config.pop("schedule"),
            m_by_n=tuple(m_by_n) if m_by_n else None,
            block_size=tuple(block_size) if block_size else None,
            **config,
        )


@keras.saving.register_keras_serializable(package="tfopt")
class PruneMultiHeadAttention(PruneLowMagnitude):
    """`PruneLowMagnitude` for ``MultiHeadAttention``: masks its query/key/value/output kernels.

    Args:
        layer: a ``keras.layers.MultiHeadAttention``.
        schedule: as `PruneLowMagnitude`. Defaults to ``ConstantSparsity(0.5)``.
        m_by_n: as `PruneLowMagnitude`. Defaults to None.
        block_size: as `PruneLowMagnitude`. Defaults to None.
        **kwargs: `keras.layers.Layer` arguments.

    Example:
        >>> w = PruneMultiHeadAttention(keras.layers.MultiHeadAttention(2, 8))
    """

    def build(self, query_shape, value_shape, key_shape=None):
        if not self.layer.built:
            self.layer.build(query_shape, value_shape, key_shape)
        self._build_masks()

    def call(self, query, value, key=None, training=None, **kwargs):
        return self._masked_call((query, value, key), training, kwargs)


def wrap(layer, schedule=None, *, m_by_n=None, block_size=None, **kwargs) -> PruneLowMagnitude:
    """Returns the pruning wrapper class suited to ``layer``, wrapping it."""
    attention = spec_flag(layer, "attention")  # called as (query, value, key)
    cls = PruneMultiHeadAttention if attention else PruneLowMagnitude
    return cls(layer, schedule, m_by_n=m_by_n, block_size=block_size, **kwargs)
