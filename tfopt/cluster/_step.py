"""The ``cluster`` recipe step: cluster the kernels, fine-tune the centroids, strip."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tfopt.config import FineTuneStepConfig
from tfopt.config._base import MAX_CLUSTERS, MAX_EPOCHS, Filters


class Config(FineTuneStepConfig):
    """``{type: cluster, n_clusters: 16, per_channel: false, init: kmeans++, ...}``.

    Also the fine-tuning keys of `tfopt.config.FineTuneStepConfig` (``lr_schedule``,
    ``batch_size``, ``distill``).
    """

    type: Literal["cluster"] = "cluster"
    # bounded: k-means holds an (n_weights x n_clusters) distance matrix
    n_clusters: int = Field(16, ge=2, le=MAX_CLUSTERS)
    per_channel: bool = False
    init: Literal["kmeans++", "linear"] = "kmeans++"
    preserve_sparsity: bool = True
    filters: Filters = None  # regex(es) searched in layer names
    epochs: int = Field(
        3, ge=0, le=MAX_EPOCHS
    )  # fine-tuning epochs of the centroids (0: cluster only)
    learning_rate: float = Field(1e-4, gt=0.0)


def preflight(cfg: Config, model, ctx) -> None:
    """Checks, before any training, that ``filters`` select a layer of ``model``."""
    from tfopt._steps import check_filters_match

    check_filters_match(cfg.filters, model)


def run(cfg: Config, model, ctx):
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
