"""Magnitude pruning for Keras 3 models: schedules, wrapper layers, strip and sparsity reports.

Example:
    >>> import tfopt
    >>> pruned = tfopt.prune.prune(model, tfopt.prune.PolynomialDecay(0.0, 0.8, end_step=2000))
    >>> pruned.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    >>> pruned.fit(x, y, epochs=5)  # masks update inside fit; no callback needed
    >>> small = tfopt.prune.strip(pruned)  # plain Keras layers with zeros in the kernels
    >>> print(tfopt.prune.sparsity(small))
"""

from tfopt import _tensorflow  # noqa: F401 - first: TensorFlow starts quietly
from tfopt.prune._channels import ChannelPlan, find_ratio, prune_channels, prune_channels_iterative
from tfopt.prune._prune import SparsityReport, prune, sparsity, strip
from tfopt.prune._schedules import (
    ConstantSparsity,
    GradualCubic,
    PolynomialDecay,
    PruningSchedule,
    PruningScheduleWarning,
)
from tfopt.prune._wrapper import PruneLowMagnitude, PruneMultiHeadAttention, register_prunable

__all__ = [
    "ChannelPlan",
    "ConstantSparsity",
    "GradualCubic",
    "PolynomialDecay",
    "PruneLowMagnitude",
    "PruneMultiHeadAttention",
    "PruningSchedule",
    "PruningScheduleWarning",
    "SparsityReport",
    "find_ratio",
    "prune",
    "prune_channels",
    "prune_channels_iterative",
    "register_prunable",
    "sparsity",
    "strip",
]
