"""The recipe steps a config can use: ``type`` -> module defining ``Config`` and ``run``.

A step module defines ``class Config(tfopt.config.StepConfig)`` with ``type: Literal["<type>"]`` and
``def run(cfg: Config, model: keras.Model, ctx: tfopt._pipeline.StepContext) -> keras.Model``.
"""

from __future__ import annotations

import importlib

STEPS: dict[str, str] = {
    "prune": "tfopt.prune._step",
    "qat": "tfopt.quantize._step",
    "cluster": "tfopt.cluster._step",
    "distill": "tfopt.distill._step",
    "prune_channels": "tfopt.prune._channels_step",
}


def step_module(step_type: str):
    """Imports and returns the module that implements ``step_type``."""
    return importlib.import_module(STEPS[step_type])
