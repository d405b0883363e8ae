"""The ``cluster`` recipe step: cluster the kernels, fine-tune the centroids, strip."""

from __future__ import annotations

from tfopt.config._steps import ClusterStepConfig


def preflight(cfg: ClusterStepConfig, model, ctx) -> None:
    """Checks, before any training, that ``filters`` select a layer of ``model``."""
    from tfopt._steps import check_filters_match

    check_filters_match(cfg.filters, model)


def run(cfg: ClusterStepConfig, model, ctx):
    """Clusters ``model``, fine-tunes the centroids and returns the stripped (plain-layer) model."""
    from tfopt.cluster import cluster, distinct_values, strip

    clustered = cluster(
        model,
        cfg.n_clusters,
        per_channel=cfg.per_channel,
        init=cfg.init,
        preserve_sparsity=cfg.preserve_sparsity,
        filters=cfg.filters,
        seed=ctx.seed,
    )
    report = clustered.cluster_report
    ctx.log(f"      clustered {len(report.changed)} layers, skipped {len(report.skipped)}")
    for name, reason in report.skipped.items():
        ctx.log(f"      skipped {name}: {reason}")
    if cfg.epochs:
        ctx.fit(clustered, epochs=cfg.epochs, learning_rate=cfg.learning_rate, stage=ctx.stage)
    else:
        ctx.compile(clustered, cfg.learning_rate)
    stripped = strip(clustered)
    ctx.compile(stripped, cfg.learning_rate)
    ctx.record("cluster", report.to_dict())
    ctx.record("distinct_values", distinct_values(stripped, per_channel=cfg.per_channel))
    return stripped
