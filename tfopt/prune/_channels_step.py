"""The ``prune_channels`` recipe step: structural channel pruning, fine-tuned after each round.

Example config::

    steps:
      - type: prune_channels
        macs_reduction: 0.5     # or ratio: 0.3 (fraction of channels removed per group)
        steps: 2
        epochs_per_step: 5
        learning_rate: 0.001
        importance: l1
        allocation: global      # or uniform (the same fraction of every group)
        round_to: 16
"""

from __future__ import annotations

from tfopt._backend import import_keras
from tfopt._layers import spec_flag, spec_of
from tfopt.config._steps import PruneChannelsStepConfig
from tfopt.prune._channels import prune_channels_iterative

keras = import_keras()


def widest_hidden_dense(model: keras.Model) -> str | None:
    """The name of the fully-connected layer (its spec's ``dense``: Dense, a registered
    dense-like layer) with the most units that is not an output layer."""
    outputs = {id(t) for t in model.outputs}
    dense = [
        layer
        for layer in model.layers
        if spec_flag(layer, "dense") and id(layer.output) not in outputs
    ]
    return (
        max(dense, key=lambda layer: layer.get_config()[spec_of(layer).width]).name
        if dense
        else None
    )


def _filters(cfg: PruneChannelsStepConfig, model: keras.Model):
    if cfg.scope == "widest_dense":
        widest = widest_hidden_dense(model)
        if widest is None:
            raise ValueError(
                "prune_channels: scope='widest_dense' needs a hidden Dense layer; "
                f"{model.name!r} has none"
            )
        return lambda layer: layer.name == widest
    return cfg.filters


def preflight(cfg: PruneChannelsStepConfig, model: keras.Model | None, ctx) -> None:
    """Checks, before any training, that ``scope`` / ``filters`` select layers of ``model``."""
    from tfopt._steps import check_filters_match

    if model is not None and cfg.scope == "widest_dense":
        _filters(cfg, model)
    check_filters_match(cfg.filters, model)


def run(cfg: PruneChannelsStepConfig, model: keras.Model, ctx) -> keras.Model:
    """Prunes ``model``'s channels in ``cfg.steps`` rounds, fine-tuning with ``ctx.fit`` after each."""
    stage = ctx.stage

    def fit(m, k):
        ctx.log(f"      round {k}/{cfg.steps}: {m.count_params():,} params; fine-tuning")
        if cfg.epochs_per_step:
            ctx.fit(
                m, epochs=cfg.epochs_per_step, learning_rate=cfg.learning_rate, stage=f"{stage}_{k}"
            )
        else:
            ctx.compile(m, cfg.learning_rate)

    pruned, plans = prune_channels_iterative(
        model,
        ratio=cfg.ratio,
        macs_reduction=cfg.macs_reduction,
        steps=cfg.steps,
        epochs_per_step=cfg.epochs_per_step,
        learning_rate=cfg.learning_rate,
        importance=cfg.importance,
        round_to=cfg.round_to,
        allocation=cfg.allocation,
        filters=_filters(cfg, model),
        fit=fit,
    )
    first, last = plans[0], plans[-1]
    ctx.record("params_before", first.params_before)
    ctx.record("params_after", last.params_after)
    ctx.record("macs_before", first.macs_before)
    ctx.record("macs_after", last.macs_after)
    ctx.record(
        "macs_reduction", 1 - last.macs_after / first.macs_before if first.macs_before else 0.0
    )
    ctx.record("ratios", [p.ratio for p in plans])
    ctx.record("skipped_layers", last.skipped)
    ctx.log(
        f"      params {first.params_before:,} -> {last.params_after:,}, "
        f"MACs {first.macs_before:,} -> {last.macs_after:,}"
    )
    return pruned
