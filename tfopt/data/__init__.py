"""Datasets by name, and loaders for the user's own data.

Offline, generated or shipped in a package: ``mnist1d`` (the `mnist1d` package, fixed seed) and
``digits`` (scikit-learn). Downloaded by Keras (need the network once, then cached): ``mnist``,
``fashion_mnist``, ``cifar10``. Your data: `from_arrays`, `from_npz`, `from_tf_dataset`.

Example:
    >>> ds = tfopt.data.load("mnist1d")
    >>> ds.x_train.shape, ds.num_classes
    ((3600, 40, 1), 10)
"""

from tfopt.data._datasets import (
    DATASETS,
    Dataset,
    from_arrays,
    from_npz,
    from_tf_dataset,
    load,
)

__all__ = ["DATASETS", "Dataset", "from_arrays", "from_npz", "from_tf_dataset", "load"]
