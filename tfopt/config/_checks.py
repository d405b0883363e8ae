"""Checks of config values that need more than a type: a zoo builder's options, installed packages.

They run while the config is validated, before any data is loaded or any model is trained.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import importlib.util
import inspect
from typing import Any

from tfopt import _formats as formats

# the options `tfopt.models.get` sets itself from the data
_FROM_DATA = ("input_shape", "num_classes")


def builder_options(name: str) -> list[str]:
    """The keyword options of the zoo builder ``name`` (``width``, ``dense``, ...)."""
    from tfopt.models import MODELS

    params = inspect.signature(MODELS[name]).parameters
    return [p for p in params if p not in _FROM_DATA]


def check_model_options(name: str, options: dict[str, Any], *, what: str = "name") -> None:
    """Raises ValueError unless ``name`` is a zoo model and ``options`` are its builder's options."""
    from tfopt.models import MODELS

    if name not in MODELS:
        hint = difflib.get_close_matches(str(name), list(MODELS), n=1)
        did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ValueError(
            f"unknown zoo model {what}={name!r}{did_you_mean}. Allowed: {sorted(MODELS)} "
            "(or set model.path to your own .keras file)"
        )
    allowed = builder_options(name)
    for key in options:
        if key not in allowed:
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ValueError(
                f"unknown option {key!r} of model {name!r}{did_you_mean}. Allowed: {sorted(allowed)}"
            )


def missing_requirements(fmt: str) -> list[str]:
    """The packages export format ``fmt`` needs that are not installed here."""
    return [p for p in formats.get(fmt).requires if not _installed(p)]


def _installed(package: str) -> bool:
    """``package`` (a distribution such as ``tflite-micro``, or a module name) is installed."""
    if importlib.util.find_spec(package.replace("-", "_")) is not None:
        return True
    try:
        importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def check_no_strategy(cfg, command: str) -> None:
    """Refuses a ``train.strategy`` that ``command`` would ignore (only `tfopt run` distributes
    its training; a search trains each trial in one process)."""
    from tfopt.errors import ConfigError

    if cfg.train.strategy != "none":
        raise ConfigError(
            f"train.strategy: {command} trains each trial in one process and does not use "
            f"strategy={cfg.train.strategy!r} (only tfopt run does); set train.strategy: none, "
            "and spread the search over processes with --workers"
        )
