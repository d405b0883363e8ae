"""The ``prune`` recipe step of ``tfopt run``: prune, fine-tune, strip.

Example config:

    steps:
      - type: prune
        target_sparsity: 0.8
        schedule: polynomial     # polynomial | cubic | constant
        epochs: 15
        learning_rate: 0.002
        scope: large             # all | large (layers holding >= 5% of the kernel weights)
        lr_schedule: cosine      # constant | cosine; also batch_size, distill: {temperature, alpha}
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from tfopt.config import FineTuneStepConfig
from tfopt.config._base import MAX_EPOCHS, BlockSize, Filters, MByN

# ``scope: large``: layers holding at least this share of the model's kernel weights
LARGE_SHARE = 0.05


class Config(FineTuneStepConfig):
    """Settings of the ``prune`` step. The schedule's steps are fractions of the fine-tuning run.

    Keys: ``target_sparsity`` (0.8), ``schedule`` (polynomial | cubic | constant), ``epochs`` (15),
    ``learning_rate`` (Adam, 2e-3), ``initial_sparsity`` (0.0), ``begin_fraction`` (0.0) and
    ``end_fraction`` (0.5) of the fine-tuning steps where sparsity starts rising and reaches the
    target, ``power`` (3.0, polynomial only), ``frequency`` (steps between mask updates; None picks
    about 20 updates), ``m_by_n`` (e.g. [2, 4]), ``block_size`` (e.g. [1, 4]) and ``filters``
    (a regex or a list of regexes), ``scope`` (``all``, or ``large``: only layers holding at
    least 5% of the model's kernel weights; a small first convolution or output layer saves
    almost no bytes and costs the most accuracy when pruned), and the fine-tuning keys of
    `tfopt.config.FineTuneStepConfig` (``lr_schedule``, ``batch_size``, ``distill``). The
    defaults keep mnist1d_cnn at 80% sparsity within a point of its float accuracy
    (benchmarks/prune_vs_tfmot.py).
    """

    type: Literal["prune"] = "prune"
    target_sparsity: float = Field(0.8, ge=0.0, lt=1.0)
    schedule: Literal["polynomial", "cubic", "constant"] = "polynomial"
    epochs: int = Field(15, ge=1, le=MAX_EPOCHS)
    learning_rate: float = Field(2e-3, gt=0)
    initial_sparsity: float = Field(0.0, ge=0.0, lt=1.0)
    begin_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    end_fraction: float = Field(0.5, gt=0.0, le=1.0)
    power: float = Field(3.0, gt=0)
    frequency: int | None = Field(None, ge=1)
    m_by_n: MByN | None = None
    block_size: BlockSize | None = None
    filters: Filters = None
    scope: Literal["all", "large"] = "all"

    @model_validator(mode="after")
    def _check(self):
        if self.scope != "all" and self.filters is not None:
            raise ValueError(
                f"give filters or scope, not both. Received: scope={self.scope!r}, "
                f"filters={self.filters!r}"
            )
        if self.m_by_n is not None and self.block_size is not None:
            raise ValueError(
                f"give m_by_n or block_size, not both. Received: m_by_n={list(self.m_by_n)}, "
                f"block_size={list(self.block_size)}"
            )
        if self.end_fraction <= self.begin_fraction:
            raise ValueError(
                "end_fraction must be > begin_fraction. Received: "
                f"end_fraction={self.end_fraction}, begin_fraction={self.begin_fraction}"
            )
        if self.schedule != "constant" and self.initial_sparsity > self.target_sparsity:
            raise ValueError(
                "initial_sparsity must be <= target_sparsity. Received: "
                f"initial_sparsity={self.initial_sparsity}, target_sparsity={self.target_sparsity}"
            )
        return self


def make_schedule(cfg: Config, total_steps: int):
    """Builds the schedule of ``cfg`` for a fine-tuning run of ``total_steps`` steps.

    The target is reached at step ``round(end_fraction * total_steps) - 1`` (the last step when
    ``end_fraction`` is 1); masks are recomputed ``frequency`` steps apart (about 20 updates when
    ``frequency`` is not set).
    """
    from tfopt.prune import ConstantSparsity, GradualCubic, PolynomialDecay

    begin = int(cfg.begin_fraction * total_steps)
    end = max(begin + 1, min(total_steps - 1, round(cfg.end_fraction * total_steps) - 1))
    frequency = cfg.frequency or max(1, (end - begin) // 20)
    if cfg.schedule == "constant":
        return ConstantSparsity(cfg.target_sparsity, begin_step=begin, frequency=frequency)
    if cfg.schedule == "cubic":
        return GradualCubic(cfg.initial_sparsity, cfg.target_sparsity, begin, end, frequency)
    return PolynomialDecay(
        cfg.initial_sparsity, cfg.target_sparsity, begin, end, cfg.power, frequency
    )


def large_layers(model) -> list[str]:
    """Names of the layers holding at least `LARGE_SHARE` of ``model``'s kernel weights."""
    import numpy as np

    sizes = {
        layer.name: int(np.prod(layer.kernel.shape))
        for layer in model.layers
        if getattr(layer, "kernel", None) is not None
    }
    total = sum(sizes.values()) or 1
    return [name for name, n in sizes.items() if n >= LARGE_SHARE * total]


def step_filters(cfg: Config, model):
    """The ``filters`` argument of `tfopt.prune.prune` for ``cfg`` (``scope`` resolved)."""
    if cfg.scope == "large":
        names = set(large_layers(model))
        return lambda layer: layer.name in names
    return cfg.filters


def preflight(cfg: Config, model, ctx) -> None:
    """Checks, before any training, that the schedule ends within the fine-tuning run and that
    ``filters`` select a layer of ``model`` (None: a model not known yet)."""
    from tfopt._steps import check_filters_match

    steps_per_epoch = math.ceil(len(ctx.data.x_train) / (cfg.batch_size or ctx.batch_size))
    total = cfg.epochs * steps_per_epoch
    make_schedule(cfg, total).check(total, strict=True)
    check_filters_match(cfg.filters, model)


def run(cfg: Config, model, ctx):
    """Prunes ``model``, fine-tunes it with the schedule, and returns the stripped model.

    Returns:
        A plain Keras model (no wrappers) with the zeros in its kernels.
    """
    from tfopt.prune import prune, sparsity, strip
    from tfopt.prune._callbacks import PruningSummaries

    steps_per_epoch = math.ceil(len(ctx.data.x_train) / (cfg.batch_size or ctx.batch_size))
    total = cfg.epochs * steps_per_epoch
    schedule = make_schedule(cfg, total)
    schedule.check(total, strict=True)
    pruned = prune(
        model,
        schedule,
        m_by_n=cfg.m_by_n,
        block_size=cfg.block_size,
        filters=step_filters(cfg, model),
    )
    report = pruned.pruning_report
    ctx.log(
        f"prune: {len(report.changed)} layers with {schedule!r}, {len(report.skipped)} kept dense"
    )
    ctx.fit(
        pruned,
        epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        callbacks=ctx.summaries(PruningSummaries, "pruning"),
    )
    stripped = strip(pruned)
    achieved = sparsity(stripped)
    ctx.log(f"prune: global sparsity {achieved.global_sparsity:.1%}")
    ctx.record("schedule", {"class": type(schedule).__name__, **schedule.get_config()})
    ctx.record("global_sparsity", achieved.global_sparsity)
    ctx.record("layer_sparsity", {k: v["sparsity"] for k, v in achieved.layers.items()})
    ctx.record("skipped_layers", report.skipped)
    return stripped
