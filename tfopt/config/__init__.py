"""YAML run configs, validated against a schema; `key=value` overrides.

Example:
    >>> cfg = tfopt.config.load("configs/default.yaml", overrides=["train.epochs=5"])
    >>> cfg.train.epochs
    5
"""

from tfopt.config._base import DistillLoss, FineTuneStepConfig, Section, StepConfig
from tfopt.config._schema import (
    EXPORT_FORMATS,
    RunConfig,
    apply_overrides,
    default_config_path,
    load,
    packaged_configs,
    resolve_config,
    validate,
    validate_steps,
    validate_train,
)
from tfopt.config._steps import STEP_CONFIGS

__all__ = [
    "EXPORT_FORMATS",
    "DistillLoss",
    "FineTuneStepConfig",
    "RunConfig",
    "STEP_CONFIGS",
    "Section",
    "StepConfig",
    "apply_overrides",
    "default_config_path",
    "load",
    "packaged_configs",
    "resolve_config",
    "validate",
    "validate_steps",
    "validate_train",
]
