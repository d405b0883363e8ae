"""`cluster` (wrap kernels in `ClusterWeights`), `strip` (back to plain layers) and the report."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from tfopt._backend import check_model, import_keras
from tfopt.cluster._layers import INITS, SUPPORTED, ClusterWeights, channel_axis, layer_kind

keras = import_keras()

Filters = str | Sequence[str] | Callable[[object], bool] | None


@dataclass
class LayerEntry:
    """One layer with weights: clustered (kernel size, zeros, an optional note) or skipped (why)."""

    layer: str
    class_name: str
    status: str  # "clustered" | "skipped"
    reason: str = ""  # why it was skipped, or a note on a clustered layer
    weights: int = 0
    zeros: int = 0


@dataclass
class ClusterReport:
    """Which layers `cluster` wrapped and which it skipped, with the reason."""

    n_clusters: int
    per_channel: bool
    init: str
    preserve_sparsity: bool
    layers: list[LayerEntry] = field(default_factory=list)

    @property
    def clustered(self) -> list[str]:
        return [e.layer for e in self.layers if e.status == "clustered"]

    @property
    def skipped(self) -> dict[str, str]:
        return {e.layer: e.reason for e in self.layers if e.status == "skipped"}

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        head = (
            f"cluster: n_clusters={self.n_clusters} per_channel={self.per_channel} "
            f"init={self.init!r} preserve_sparsity={self.preserve_sparsity}"
        )
        lines = [head]
        for e in self.layers:
            if e.status == "clustered":
                note = f" ({e.reason})" if e.reason else ""
                lines.append(
                    f"  clustered {e.layer} ({e.class_name}): {e.weights} weights, {e.zeros} zeros{note}"
                )
            else:
                lines.append(f"  skipped   {e.layer} ({e.class_name}): {e.reason}")
        return "\n".join(lines)


def _matches(layer, filters: Filters) -> bool:
    if filters is None:
        return True
    if isinstance(filters, str):
        return re.search(filters, layer.name) is not None
    if callable(filters):
        return bool(filters(layer))
    return any(re.search(p, layer.name) is not None for p in filters)


def _check_args(n_clusters, init, filters) -> None:
    if (
        isinstance(n_clusters, bool)
        or not isinstance(n_clusters, int | np.integer)
        or n_clusters < 2
    ):
        raise ValueError(f"n_clusters must be an integer >= 2. Received: n_clusters={n_clusters!r}")
    if init not in INITS:
        raise ValueError(f"Unrecognized init={init!r}. Supported inits are: {list(INITS)}")
    ok = (
        filters is None
        or isinstance(filters, str)
        or callable(filters)
        or (isinstance(filters, list | tuple) and all(isinstance(f, str) for f in filters))
    )
    if not ok:
        raise TypeError(
            "filters must be None, a regex string, a list of regex strings or a callable "
            f"layer -> bool. Received: filters={filters!r}"
        )


def _check_graph_model(model, fn: str) -> None:
    check_model(model)
    from keras.src.models.functional import Functional

    if not isinstance(model, keras.Sequential | Functional):
        raise TypeError(
            f"{fn}() rebuilds Functional or Sequential models; {type(model).__name__} is a "
            "subclassed model. Build it as a Functional model, or wrap its layers yourself with "
            "tfopt.cluster.ClusterWeights."
        )
    if not model.built:
        raise ValueError(
            f"{fn}() needs a built model (its weights exist). Call the model on data or give it an "
            f"Input first. Received: model={model.name!r} (not built)"
        )


def _rebuild(model, replace: Callable):
    """Clones ``model`` layer by layer; ``replace(layer)`` returns a new layer or None (plain clone).

    Returns the clone and the list of (original, new) layer pairs, in order.
    """
    pairs: list[tuple] = []

    def clone(layer):
        new = replace(layer)
        if new is None:
            new = layer.__class__.from_config(layer.get_config())
        pairs.append((layer, new))
        return new

    new_model = keras.models.clone_model(model, clone_function=clone, recursive=True)
    return new_model, pairs


def _why_not(layer) -> str:
    kind = layer_kind(layer)
    if isinstance(layer, ClusterWeights):
        return "already clustered"
    if isinstance(layer, keras.layers.Wrapper):
        return (
            f"wrapped by {type(layer).__name__} ({type(layer).__module__}); strip that wrapper "
            "first (e.g. tfopt.prune.strip) and cluster the plain model"
        )
    if kind is None:
        return f"{type(layer).__name__} is not clusterable (supported: {', '.join(SUPPORTED)})"
    if getattr(layer, "quantization_mode", None):
        return f"already quantized by Keras (quantization_mode={layer.quantization_mode!r})"
    if getattr(layer, "lora_enabled", False):
        return "LoRA is enabled"
    return ""


def _small_note(layer, n_clusters: int, per_channel: bool) -> str:
    """A note for kernels that already hold <= n_clusters weights per codebook (clustered losslessly)."""
    shape = tuple(layer.kernel.shape)
    per_row = int(np.prod(shape)) // (shape[channel_axis(layer_kind(layer))] if per_channel else 1)
    if per_row > n_clusters:
        return ""
    where = "per channel" if per_channel else "in the kernel"
    return f"{per_row} weights {where} <= n_clusters={n_clusters}: every value is its own centroid"


def cluster(
    model,
    n_clusters: int = 16,
    *,
    per_channel: bool = False,
    init: str = "kmeans++",
    preserve_sparsity: bool = True,
    filters: Filters = None,
    seed: int = 0,
):
    """Returns a copy of ``model`` whose Dense/Conv kernels are clustered into ``n_clusters`` values.

    Each clusterable layer is wrapped in `ClusterWeights`: its kernel becomes
    ``centroids[assignments]`` with trainable centroids (fine-tune with ``fit``; gradients flow to
    the centroids, assignments stay fixed). The user's model is not changed. Call `strip` after
    training to get plain Keras layers whose kernels hold at most ``n_clusters`` distinct values.
    The returned model has a ``cluster_report`` attribute (a `ClusterReport`: layers clustered and
    layers skipped, with the reason).

    Args:
        model: a built Functional or Sequential Keras 3 model (nested models are handled).
        n_clusters: distinct values per kernel (per channel with ``per_channel``); at least 2.
            Defaults to 16.
        per_channel: one codebook per output channel (input channel for depthwise convolutions).
            Defaults to False.
        init: ``"kmeans++"`` (k-means with k-means++ seeding) or ``"linear"`` (evenly spaced between
            the kernel's min and max). Defaults to "kmeans++".
        preserve_sparsity: keep the zeros of a (pruned) kernel exactly zero: they get a centroid
            pinned at 0.0 that does not train, which counts as one of the ``n_clusters``.
            Defaults to True.
        filters: which layers to cluster: a regex searched in the layer name, a list of regexes, or
            a callable ``layer -> bool``. Defaults to None (every supported layer).
        seed: seed of the k-means++ initialization. Defaults to 0.

    Returns:
        A new ``keras.Model`` with `ClusterWeights` layers (compiled like ``model`` if it was).

    Raises:
        ValueError: ``n_clusters`` < 2, an unknown ``init``, or an unbuilt model.
        TypeError: ``model`` is not a Functional/Sequential Keras 3 model, or bad ``filters``.

    Example:
        >>> clustered = tfopt.cluster.cluster(model, 16)
        >>> clustered.compile("adam", loss=loss, metrics=["accuracy"]); clustered.fit(x, y)
        >>> small = tfopt.cluster.strip(clustered)
    """
    _check_args(n_clusters, init, filters)
    _check_graph_model(model, "cluster")
    report = ClusterReport(int(n_clusters), bool(per_channel), init, bool(preserve_sparsity))

    def replace(layer):
        if not layer.weights:
            return None
        reason = _why_not(layer)
        if not reason and not _matches(layer, filters):
            reason = "excluded by filters"
        name, cls = layer.name, type(layer).__name__
        if reason:
            zeros = sum(int(np.sum(w == 0)) for w in layer.get_weights() if w.ndim > 1)
            if preserve_sparsity and zeros:
                reason += (
                    f" (its {zeros} zero weights are not protected if the model is fine-tuned)"
                )
            report.layers.append(LayerEntry(name, cls, "skipped", reason))
            return None
        kernel = np.asarray(keras.ops.convert_to_numpy(layer.kernel))
        report.layers.append(
            LayerEntry(
                name,
                cls,
                "clustered",
                reason=_small_note(layer, n_clusters, per_channel),
                weights=int(kernel.size),
                zeros=int((kernel == 0).sum()),
            )
        )
        inner = layer.__class__.from_config(layer.get_config())
        return ClusterWeights(
            inner,
            n_clusters=int(n_clusters),
            per_channel=bool(per_channel),
            init=init,
            preserve_sparsity=bool(preserve_sparsity),
            name=layer.name,
        )

    new_model, pairs = _rebuild(model, replace)
    for i, (old, new) in enumerate(pairs):
        if isinstance(new, ClusterWeights):
            new.layer.set_weights(old.get_weights())
            new.initialize_clusters(seed=seed + i)
        elif old.weights:
            new.set_weights(old.get_weights())
    new_model.cluster_report = report
    return new_model


def strip(model):
    """Returns a copy of ``model`` with every `ClusterWeights` replaced by its plain layer.

    The plain layer's kernel holds the clustered values (``centroids[assignments]``), so it has at
    most ``n_clusters`` distinct values (per channel with ``per_channel``) and the same outputs as the
    clustered model. Other layers are copied unchanged.

    Args:
        model: a Functional or Sequential model, usually from `cluster` after fine-tuning.

    Returns:
        A new ``keras.Model`` of plain Keras layers (compiled like ``model`` if it was), ready for
        TFLite export or QAT.

    Raises:
        TypeError: ``model`` is not a Functional/Sequential Keras 3 model.
        ValueError: the model is not built.

    Example:
        >>> small = tfopt.cluster.strip(clustered)
        >>> tfopt.cluster.distinct_values(small)
        {'conv1': 16, ...}
    """
    _check_graph_model(model, "strip")

    def replace(layer):
        if isinstance(layer, ClusterWeights):
            return layer.layer.__class__.from_config(layer.layer.get_config())
        return None

    new_model, pairs = _rebuild(model, replace)
    for old, new in pairs:
        if isinstance(old, ClusterWeights):
            kernel_path = old.layer.kernel.path
            values = [
                old.clustered_kernel_numpy() if v.path == kernel_path else v.numpy()
                for v in old.layer.weights
            ]
            new.set_weights(values)
        elif old.weights:
            new.set_weights(old.get_weights())
    return new_model


def distinct_values(model, *, per_channel: bool = False) -> dict[str, int]:
    """Counts the distinct values in each Dense/Conv kernel of ``model`` (plain or clustered).

    Args:
        model: a Keras model.
        per_channel: report the largest count over the kernel's channels instead of the count over
            the whole kernel. Defaults to False.

    Returns:
        ``{layer name: number of distinct kernel values}``.

    Example:
        >>> tfopt.cluster.distinct_values(tfopt.cluster.strip(clustered))["fc1"] <= 16
        True
    """
    check_model(model)
    counts: dict[str, int] = {}

    def visit(layers):
        for layer in layers:
            if isinstance(layer, ClusterWeights):
                kernel, kind = layer.clustered_kernel_numpy(), layer.kind
            elif isinstance(layer, keras.Model):
                visit(layer.layers)
                continue
            elif layer_kind(layer) is not None and layer.built:
                kernel = np.asarray(keras.ops.convert_to_numpy(layer.kernel))
                kind = layer_kind(layer)
            else:
                continue
            if per_channel:
                axis = channel_axis(kind)
                rows = np.moveaxis(kernel, axis, 0).reshape(kernel.shape[axis], -1)
                counts[layer.name] = max(len(np.unique(r)) for r in rows)
            else:
                counts[layer.name] = len(np.unique(kernel))

    visit(model.layers)
    return counts
