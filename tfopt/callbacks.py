"""Keras callbacks of tfopt, one import path for all of them.

Each callback lives with the technique it serves and is re-exported here lazily.

Example:
    >>> pruned.fit(x, y, callbacks=[tfopt.callbacks.PruningSummaries("logs/prune")])
"""

from __future__ import annotations

import importlib

_CALLBACKS = {
    "PruningSummaries": "tfopt.prune._callbacks",
    "QuantizationSummaries": "tfopt.quantize._callbacks",
}

__all__ = sorted(_CALLBACKS)


def __getattr__(name: str):
    if name in _CALLBACKS:
        return getattr(importlib.import_module(_CALLBACKS[name]), name)
    raise AttributeError(f"module 'tfopt.callbacks' has no attribute {name!r}")


def __dir__():
    return __all__
