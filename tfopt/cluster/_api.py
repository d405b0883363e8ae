"""`cluster` (wrap kernels in `ClusterWeights`), `strip` (back to plain layers) and the report."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from tfopt._backend import check_model, import_keras
from tfopt._layers import channel_axis, guard, resolve
from tfopt._rewrite import Report, attach_report, copy_layer, layer_filter, rewrite
from tfopt.cluster._layers import INITS, ClusterWeights, cluster_weight, supported

keras = import_keras()

Filters = str | Sequence[str] | Callable[[object], bool] | None


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


def _why_not(layer) -> str:
    weight = cluster_weight(layer)
    if isinstance(layer, ClusterWeights):
        return "already clustered"
    if isinstance(layer, keras.layers.Wrapper):  # structural: any wrapper, not a layer type
        return (
            f"wrapped by {type(layer).__name__} ({type(layer).__module__}); strip that wrapper "
            "first (e.g. tfopt.prune.strip) and cluster the plain model"
        )
    if weight is None:
        return f"{type(layer).__name__} is not clusterable (supported: {', '.join(supported())})"
    return guard(layer) or ""


def _small_note(layer, n_clusters: int, per_channel: bool) -> str:
    """A note for kernels that already hold <= n_clusters weights per codebook (clustered losslessly)."""
    weight = cluster_weight(layer)
    shape = tuple(resolve(layer, weight.attr)[2].shape)
    per_row = int(np.prod(shape)) // (shape[channel_axis(weight)] if per_channel else 1)
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
    The returned model has a ``tfopt_report`` attribute (a `tfopt.Report`, also ``cluster_report``:
    layers clustered and layers skipped, with the reason).

    Args:
        model: a built Keras 3 model: Sequential, functional (nested models are handled) or
            subclassed (its layers are replaced on a copy).
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
        A new ``keras.Model`` with `ClusterWeights` layers.

    Raises:
        ValueError: ``n_clusters`` < 2, an unknown ``init``, or an unbuilt model.
        TypeError: ``model`` is not a Keras 3 model, or bad ``filters``.
        tfopt.RewriteError: a layer or subclassed model that cannot be copied.

    Example:
        >>> clustered = tfopt.cluster.cluster(model, 16)
        >>> clustered.compile("adam", loss=loss, metrics=["accuracy"]); clustered.fit(x, y)
        >>> small = tfopt.cluster.strip(clustered)
    """
    _check_args(n_clusters, init, filters)
    check_model(model)
    select = layer_filter(filters)
    settings = {
        "n_clusters": int(n_clusters),
        "per_channel": bool(per_channel),
        "init": init,
        "preserve_sparsity": bool(preserve_sparsity),
    }
    report = Report("cluster", details=dict(settings))
    seeds: dict[int, int] = {}

    def replace(layer):
        if not layer.weights:
            return None
        reason = _why_not(layer)
        if not reason and not select(layer):
            reason = "excluded by filters"
        if reason:
            zeros = sum(int(np.sum(w == 0)) for w in layer.get_weights() if w.ndim > 1)
            if preserve_sparsity and zeros:
                reason += (
                    f" (its {zeros} zero weights are not protected if the model is fine-tuned)"
                )
            report.skip(layer, reason)
            return None
        kernel = np.asarray(
            keras.ops.convert_to_numpy(resolve(layer, cluster_weight(layer).attr)[2])
        )
        note = f"{kernel.size} weights, {int((kernel == 0).sum())} zeros"
        small = _small_note(layer, n_clusters, per_channel)
        report.change(layer, f"{note} ({small})" if small else note)
        wrapper = ClusterWeights(copy_layer(layer), **settings, name=layer.name)
        seeds[id(wrapper)] = seed + len(seeds)
        return wrapper

    def finish(layer, wrapper):
        wrapper.layer.set_weights(layer.get_weights())
        wrapper.initialize_clusters(seed=seeds[id(wrapper)])

    clustered = rewrite(model, replace, finish=finish, action="cluster()")
    return attach_report(clustered, report, "cluster_report")


def strip(model):
    """Returns a copy of ``model`` with every `ClusterWeights` replaced by its plain layer.

    The plain layer's kernel holds the clustered values (``centroids[assignments]``), so it has at
    most ``n_clusters`` distinct values (per channel with ``per_channel``) and the same outputs as the
    clustered model. Other layers are copied unchanged.

    Args:
        model: a Keras 3 model, usually from `cluster` after fine-tuning.

    Returns:
        A new ``keras.Model`` of plain Keras layers, ready for
        TFLite export or QAT.

    Raises:
        TypeError: ``model`` is not a Keras 3 model.
        ValueError: the model is not built.

    Example:
        >>> small = tfopt.cluster.strip(clustered)
        >>> tfopt.cluster.distinct_values(small)
        {'conv1': 16, ...}
    """
    check_model(model)

    def replace(layer):
        return copy_layer(layer.layer) if isinstance(layer, ClusterWeights) else None

    def finish(wrapper, plain):
        kernel_path = wrapper.kernel_variable().path
        plain.set_weights(
            [
                wrapper.clustered_kernel_numpy() if v.path == kernel_path else v.numpy()
                for v in wrapper.layer.weights
            ]
        )

    return rewrite(model, replace, finish=finish, action="strip()")


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
                kernel, weight = layer.clustered_kernel_numpy(), layer.weight
            elif isinstance(layer, keras.Model):
                visit(layer.layers)
                continue
            elif cluster_weight(layer) is not None and layer.built:
                weight = cluster_weight(layer)
                kernel = np.asarray(keras.ops.convert_to_numpy(resolve(layer, weight.attr)[2]))
            else:
                continue
            if per_channel:
                axis = channel_axis(weight)
                rows = np.moveaxis(kernel, axis, 0).reshape(kernel.shape[axis], -1)
                counts[layer.name] = max(len(np.unique(r)) for r in rows)
            else:
                counts[layer.name] = len(np.unique(kernel))

    visit(model.layers)
    return counts
