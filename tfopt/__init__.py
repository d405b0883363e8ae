"""tfopt: make Keras 3 models small and fast to deploy.

Subpackages are imported lazily so that ``import tfopt`` and the CLI start fast; the first use of a
subpackage imports TensorFlow and checks that Keras 3 runs on the TensorFlow backend.
"""

from __future__ import annotations

import importlib

from tfopt._backend import check_environment
from tfopt.errors import (
    ArtifactError,
    BackendError,
    ConfigError,
    DataError,
    ExportCheckError,
    MissingDependencyError,
    OfflineError,
    RewriteError,
    TfoptError,
)

__version__ = "0.1.0"

check_environment()

_SUBMODULES = (
    "auto",
    "bench",
    "callbacks",
    "cluster",
    "config",
    "data",
    "distill",
    "export",
    "lowrank",
    "models",
    "prune",
    "quantize",
    "robust",
    "train",
    "tune",
)

__all__ = [
    *_SUBMODULES,
    "ArtifactError",
    "BackendError",
    "ConfigError",
    "DataError",
    "ExportCheckError",
    "MissingDependencyError",
    "OfflineError",
    "Report",
    "RewriteError",
    "TfoptError",
    "__version__",
    "register_layer",
]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"tfopt.{name}")
    if name == "keras":  # `from tfopt import keras`: Keras 3, without TensorFlow's C++ lines
        from tfopt._backend import import_keras

        return import_keras()
    if name == "Report":  # the report every technique returns (imports Keras, hence lazy)
        return importlib.import_module("tfopt._rewrite").Report
    if name in ("register_layer", "unregister_layer"):  # the layer-spec registry (lazy: Keras)
        return getattr(importlib.import_module("tfopt._layers"), name)
    raise AttributeError(f"module 'tfopt' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
