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

from tfopt.config._steps import PruneStepConfig

# ``scope: large``: layers holding at least this share of the model's kernel weights
LARGE_SHARE = 0.05


def make_schedule(cfg: PruneStepConfig, total_steps: int):
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


def step_filters(cfg: PruneStepConfig, model):
    """The ``filters`` argument of `tfopt.prune.prune` for ``cfg`` (``scope`` resolved)."""
    if cfg.scope == "large":
        names = set(large_layers(model))
        return lambda layer: layer.name in names
    return cfg.filters


def preflight(cfg: PruneStepConfig, model, ctx) -> None:
    """Checks, before any training, that the schedule ends within the fine-tuning run and that
    ``filters`` select a layer of ``model`` (None: a model not known yet)."""
    from tfopt._steps import check_filters_match

    steps_per_epoch = math.ceil(len(ctx.data.x_train) / (cfg.batch_size or ctx.batch_size))
    total = cfg.epochs * steps_per_epoch
    make_schedule(cfg, total).check(total, strict=True)
    check_filters_match(cfg.filters, model)


def run(cfg: PruneStepConfig, model, ctx):
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
