"""Weight clustering: kernels that hold only ``n_clusters`` distinct values (they gzip well).

`cluster` wraps each Dense/Conv kernel in `ClusterWeights` (trainable centroids, fixed
assignments, optional per-channel codebooks, zeros of pruned kernels kept exactly zero); fine-tune
with ``fit``; `strip` returns plain Keras layers for export.

Example:
    >>> clustered = tfopt.cluster.cluster(model, 16, per_channel=False, init="kmeans++")
    >>> print(clustered.cluster_report)
    >>> clustered.compile("adam", loss=loss, metrics=["accuracy"])
    >>> clustered.fit(x, y, epochs=2)
    >>> small = tfopt.cluster.strip(clustered)
"""

from tfopt.cluster._api import cluster, distinct_values, strip
from tfopt.cluster._layers import INITS, SUPPORTED, ClusterWeights

__all__ = [
    "INITS",
    "SUPPORTED",
    "ClusterWeights",
    "cluster",
    "distinct_values",
    "strip",
]
