"""The ``lowrank`` recipe step: factorize the kernels (SVD), fine-tune the factors."""

from __future__ import annotations

from tfopt.config._steps import LowrankStepConfig


def run(cfg: LowrankStepConfig, model, ctx):
    """Factorizes ``model`` and fine-tunes the result (plain Keras layers)."""
    from tfopt.lowrank import factorize

    small = factorize(
        model,
        energy=None if cfg.rank_ratio is not None else cfg.energy,
        rank_ratio=cfg.rank_ratio,
        filters=cfg.filters,
    )
    report = small.tfopt_report
    d = report.details
    ctx.log(
        f"      factorized {len(report.changed)} layers, skipped {len(report.skipped)}: "
        f"params {d['params_before']} -> {d['params_after']}, "
        f"MACs {d['macs_before']} -> {d['macs_after']}"
    )
    for name, reason in report.skipped.items():
        ctx.log(f"      skipped {name}: {reason}")
    if cfg.epochs:
        ctx.fit(small, epochs=cfg.epochs, learning_rate=cfg.learning_rate, stage=ctx.stage)
    else:
        ctx.compile(small, cfg.learning_rate)
    ctx.record("lowrank", report.to_dict())
    return small
