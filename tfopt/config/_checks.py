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
    params = inspect.signature(MODELS[name]).parameters
    for key, value in options.items():
        _check_option_value(name, key, value, params[key].default)


def _check_option_value(model: str, key: str, value, default) -> None:
    """A builder option of the kind its default has: a size (int) >= 1, a rate (float) >= 0 and
    ``dropout`` < 1, a bool; named, so that ``width=-5`` is not an error about ``filters``."""
    if isinstance(default, bool):
        ok, rule = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        rule = "a whole number >= 1 (a layer size or count)"
    elif isinstance(default, float):
        number = isinstance(value, int | float) and not isinstance(value, bool)
        ok = number and value >= 0 and (key != "dropout" or value < 1)
        rule = "a number in [0, 1)" if key == "dropout" else "a number >= 0"
    else:
        return
    if not ok:
        raise ValueError(
            f"option {key!r} of model {model!r} must be {rule}. Received: {key}={value!r}"
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
