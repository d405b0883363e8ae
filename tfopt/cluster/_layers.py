"""The `ClusterWeights` wrapper: a layer whose kernel is ``centroids[assignments]``."""

from __future__ import annotations

import numpy as np

from tfopt._backend import import_keras
from tfopt._layers import Weight, channel_axis, classes_with, resolve, spec_of, substituted

keras = import_keras()
ops = keras.ops

INITS = ("kmeans++", "linear")


def cluster_weight(layer) -> Weight | None:
    """The weight `ClusterWeights` clusters in ``layer`` (its spec's first kernel), or None when
    the layer's spec does not cluster it."""
    spec = spec_of(layer)
    if spec is None or not spec.cluster or not spec.compressed():
        return None
    return spec.compressed()[0]


def supported() -> list[str]:
    """The layer classes `cluster` wraps: Keras's and those registered with register_layer."""
    return [c.__name__ for c in classes_with("cluster")]


SUPPORTED = tuple(supported())  # Keras's own clusterable layer classes


def _kmeans_1d(values: np.ndarray, k: int, rng: np.random.Generator, iters: int = 50) -> np.ndarray:
    """k-means on scalars: k-means++ seeding, then Lloyd iterations. Returns sorted centroids."""
    uniq = np.unique(values)
    if uniq.size <= k:
        return np.concatenate([uniq, np.full(k - uniq.size, uniq[-1])])
    sample = values if values.size <= 20000 else rng.choice(values, 20000, replace=False)
    centroids = [float(rng.choice(sample))]
    dist = (sample - centroids[0]) ** 2
    for _ in range(1, k):
        total = dist.sum()
        pick = rng.choice(sample, p=dist / total) if total > 0 else rng.choice(sample)
        centroids.append(float(pick))
        dist = np.minimum(dist, (sample - pick) ** 2)
    c = np.sort(np.asarray(centroids, dtype="float64"))
    v = np.sort(values.astype("float64"))
    for _ in range(iters):
        bounds = (c[1:] + c[:-1]) / 2
        idx = np.searchsorted(bounds, v)
        sums = np.bincount(idx, weights=v, minlength=k)
        counts = np.bincount(idx, minlength=k)
        new = np.where(counts > 0, sums / np.maximum(counts, 1), c)  # empty cluster keeps its place
        new = np.sort(new)
        if np.allclose(new, c):
            c = new
            break
        c = new
    return c


def init_codebook(
    rows: np.ndarray, k: int, *, init: str, preserve_sparsity: bool, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clusters each row of ``rows`` (shape ``(C, M)``) into ``k`` values.

    Returns ``(centroids (C, k), assignments (C, M) int32, trainable_mask (C, k))``. With
    ``preserve_sparsity``, a row holding zeros gets centroid 0 pinned at exactly 0.0 (mask 0): its
    zeros are assigned to it and every non-zero weight to one of the other ``k - 1`` centroids.
    """
    rng = np.random.default_rng(seed)
    n_rows = rows.shape[0]
    centroids = np.zeros((n_rows, k), "float32")
    assignments = np.zeros(rows.shape, "int32")
    mask = np.ones((n_rows, k), "float32")
    for r in range(n_rows):
        w = rows[r].astype("float64")
        nonzero = w != 0 if preserve_sparsity else np.ones(w.shape, bool)
        pin = bool(preserve_sparsity and not nonzero.all())
        free = k - 1 if pin else k
        vals = w[nonzero]
        if pin:
            mask[r, 0] = 0.0
        if vals.size == 0:
            continue  # an all-zero row: every weight on the pinned zero centroid
        uniq = np.unique(vals)
        if uniq.size <= free:  # already few values: keep each one exactly
            c = np.concatenate([uniq, np.full(free - uniq.size, uniq[-1])])
        elif init == "linear":
            c = np.linspace(vals.min(), vals.max(), free)
        else:
            c = _kmeans_1d(vals, free, rng)
        nearest = np.argmin(np.abs(vals[:, None] - c[None, :]), axis=1)
        offset = 1 if pin else 0
        centroids[r, offset:] = c
        assignments[r, nonzero] = nearest + offset
    return centroids, assignments, mask


# A codebook's layout: the kernel's channel axis moved to the front and the rest flattened,
# (channels, weights per channel); one row for a per-layer codebook.
def kernel_rows(kernel: np.ndarray, axis: int, per_channel: bool) -> np.ndarray:
    """``kernel`` as codebook rows: ``(1, size)``, or ``(channels, size / channels)``."""
    if not per_channel:
        return kernel.reshape(1, -1)
    moved = np.moveaxis(kernel, axis, 0)
    return moved.reshape(moved.shape[0], -1)


def rows_to_kernel(rows, shape: tuple, axis: int, per_channel: bool):
    """The inverse of `kernel_rows` on a tensor: ``rows`` back in the kernel's ``shape``."""
    if not per_channel:
        return ops.reshape(rows, shape)
    moved_shape = (shape[axis],) + tuple(d for i, d in enumerate(shape) if i != axis)
    return ops.moveaxis(ops.reshape(rows, moved_shape), 0, axis)


def gather_rows(centroids, assignments):
    """``centroids[r, assignments[r, i]]`` for every row ``r``: the clustered weights, as rows.

    Its gradient with respect to ``centroids`` is the sum of the gradients of each centroid's
    weights.
    """
    return ops.take_along_axis(centroids, ops.cast(assignments, "int32"), axis=1)


def exact_codebook(rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The codebook of rows that hold at most ``k`` distinct values each: their own values.

    Returns ``(centroids (R, k), assignments (R, M) int32)`` with ``centroids[r][assignments[r]]
    == rows[r]`` exactly (a row with fewer values repeats its last one; that centroid is unused).

    Raises:
        ValueError: a row holds more than ``k`` distinct values.
    """
    centroids = np.zeros((rows.shape[0], k), "float32")
    assignments = np.zeros(rows.shape, "int32")
    for r, row in enumerate(rows):
        values, index = np.unique(row, return_inverse=True)
        if values.size > k:
            raise ValueError(f"a codebook row holds {values.size} distinct values, more than k={k}")
        centroids[r] = np.concatenate([values, np.full(k - values.size, values[-1])])
        assignments[r] = index.reshape(-1)
    return centroids, assignments


@keras.saving.register_keras_serializable(package="tfopt")
class ClusterWeights(keras.layers.Wrapper):
    """Wraps a layer so that its kernel is a gather of trainable centroids.

    The layer runs its own ``call`` with its kernel replaced by ``centroids[assignments]``
    (`tfopt._layers.substituted`): the centroids train (gradients flow
    to them), the assignments stay fixed. With ``per_channel=True`` every output channel has its
    own codebook of ``n_clusters`` values. A centroid pinned at 0.0 (``preserve_sparsity``) keeps the
    zeros of a pruned kernel exactly zero. The wrapped layer's own kernel is kept (non-trainable)
    only so that the layer can be rebuilt; `tfopt.cluster.strip` writes the clustered kernel into a
    plain layer.

    Args:
        layer: a built or unbuilt layer whose spec clusters it (Dense, Conv1D/2D/3D,
            DepthwiseConv1D/2D, or a layer registered with `tfopt.register_layer`).
        n_clusters: number of distinct kernel values (per channel with ``per_channel``).
            Defaults to 16.
        per_channel: one codebook per channel instead of one per layer. Defaults to False.
        init: ``"kmeans++"`` or ``"linear"`` (evenly spaced between min and max).
            Defaults to "kmeans++".
        preserve_sparsity: keep zero weights exactly zero. Defaults to True.
        **kwargs: `keras.layers.Layer` options (``name``, ...).

    Example:
        >>> wrapped = ClusterWeights(keras.layers.Dense(8), n_clusters=4)
    """

    def __init__(
        self,
        layer,
        n_clusters: int = 16,
        per_channel: bool = False,
        init: str = "kmeans++",
        preserve_sparsity: bool = True,
        **kwargs,
    ):
        super().__init__(layer, **kwargs)
        self.weight = cluster_weight(layer)
        if self.weight is None:
            raise ValueError(
                f"ClusterWeights wraps {supported()} layers. Received: layer="
                f"{type(layer).__name__} ({layer.name!r})"
            )
        self.n_clusters = int(n_clusters)
        self.per_channel = bool(per_channel)
        self.init = init
        self.preserve_sparsity = bool(preserve_sparsity)

    def build(self, input_shape=None):
        super().build(input_shape)
        kernel = self.kernel_variable()
        kernel.trainable = False  # the forward pass uses the centroids, not this variable
        shape = tuple(kernel.shape)
        axis = channel_axis(self.weight) % len(shape)
        rows = shape[axis] if self.per_channel else 1
        cols = int(np.prod(shape)) // rows
        self.centroids = self.add_weight(
            name="centroids", shape=(rows, self.n_clusters), initializer="zeros", trainable=True
        )
        self.assignments = self.add_weight(
            name="assignments",
            shape=(rows, cols),
            initializer="zeros",
            dtype="int32",
            trainable=False,
        )
        self.centroid_mask = self.add_weight(
            name="centroid_mask",
            shape=(rows, self.n_clusters),
            initializer="ones",
            trainable=False,
        )
        self._kernel_axis = axis
        self._kernel_shape = shape
        self.built = True

    def kernel_variable(self):
        """The wrapped layer's kernel variable (kept only to rebuild the layer)."""
        return resolve(self.layer, self.weight.attr)[2]

    def _to_rows(self, kernel: np.ndarray) -> np.ndarray:
        return kernel_rows(kernel, self._kernel_axis, self.per_channel)

    def _from_rows(self, rows):
        return rows_to_kernel(rows, self._kernel_shape, self._kernel_axis, self.per_channel)

    def initialize_clusters(self, *, seed: int = 0) -> None:
        """Clusters the wrapped layer's current kernel (k-means++ or linear) into the codebook."""
        kernel = np.asarray(keras.ops.convert_to_numpy(self.kernel_variable()))
        centroids, assignments, mask = init_codebook(
            self._to_rows(kernel),
            self.n_clusters,
            init=self.init,
            preserve_sparsity=self.preserve_sparsity,
            seed=seed,
        )
        self.centroids.assign(centroids)
        self.assignments.assign(assignments)
        self.centroid_mask.assign(mask)

    def clustered_kernel(self):
        """The kernel the forward pass uses: ``centroids[assignments]``, pinned centroids at 0."""
        centroids = ops.where(
            self.centroid_mask > 0, self.centroids, ops.zeros_like(self.centroids)
        )
        return self._from_rows(gather_rows(centroids, self.assignments))

    def clustered_kernel_numpy(self) -> np.ndarray:
        """`clustered_kernel` as a NumPy array (exact pinned zeros)."""
        centroids = np.asarray(keras.ops.convert_to_numpy(self.centroids))
        mask = np.asarray(keras.ops.convert_to_numpy(self.centroid_mask))
        centroids = np.where(mask > 0, centroids, np.float32(0.0)).astype("float32")
        idx = np.asarray(keras.ops.convert_to_numpy(self.assignments))
        values = np.take_along_axis(centroids, idx, axis=1)
        return np.asarray(keras.ops.convert_to_numpy(self._from_rows(values)))

    def call(self, inputs, **kwargs):
        with substituted(self.layer, {self.weight.attr: self.clustered_kernel()}):
            return self.layer(inputs, **kwargs)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            n_clusters=self.n_clusters,
            per_channel=self.per_channel,
            init=self.init,
            preserve_sparsity=self.preserve_sparsity,
        )
        return config
