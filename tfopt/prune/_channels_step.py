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

from typing import Literal

from pydantic import Field, model_validator

from tfopt._backend import import_keras
from tfopt.config import FineTuneStepConfig
from tfopt.config._base import MAX_EPOCHS, Filters
from tfopt.prune._channels import prune_channels_iterative

keras = import_keras()


class Config(FineTuneStepConfig):
    """Options of the ``prune_channels`` step. Give ``ratio`` or ``macs_reduction``, not both.

    Attributes:
        ratio: total fraction of channels removed from every prunable group (see
            `tfopt.prune.prune_channels`). Defaults to None.
        macs_reduction: total fraction of the MACs to remove. Defaults to 0.5 when ``ratio`` is
            not given.
        steps: prune / fine-tune rounds. Defaults to 2.
        epochs_per_step: fine-tuning epochs after each round. Defaults to 3.
        learning_rate: Adam learning rate of the fine-tuning. Defaults to 1e-3.
        importance: ``"l1"``, ``"l2"`` or ``"bn_gamma"``. Defaults to "l1".
        round_to: keep channel counts multiples of this. Defaults to None.
        allocation: ``"uniform"`` (the same fraction of every group) or ``"global"`` (channels
            of all groups ranked together; see `tfopt.prune.prune_channels`). Defaults to
            "uniform".
        filters: regex or list of regexes of the layers that may lose channels. Defaults to None.
        scope: ``"all"`` (the layers ``filters`` selects) or ``"widest_dense"`` (only the hidden
            Dense layer with the most units). Defaults to "all".
        lr_schedule, batch_size, distill: the fine-tuning keys of
            `tfopt.config.FineTuneStepConfig`.
    """

    type: Literal["prune_channels"] = "prune_channels"
    ratio: float | None = Field(None, ge=0.0, lt=1.0)
    macs_reduction: float | None = Field(None, ge=0.0, lt=1.0)
    steps: int = Field(2, ge=1)
    epochs_per_step: int = Field(3, ge=0, le=MAX_EPOCHS)
    learning_rate: float = Field(1e-3, gt=0)
    importance: Literal["l1", "l2", "bn_gamma"] = "l1"
    round_to: int | None = Field(None, ge=1)
    allocation: Literal["uniform", "global"] = "uniform"
    filters: Filters = None
    scope: Literal["all", "widest_dense"] = "all"

    @model_validator(mode="after")
    def _one_target(self):
        if self.scope != "all" and self.filters is not None:
            raise ValueError(
                f"give filters or scope, not both. Received: scope={self.scope!r}, "
                f"filters={self.filters!r}"
            )
        if self.ratio is not None and self.macs_reduction is not None:
            raise ValueError(
                f"give ratio or macs_reduction, not both (got ratio={self.ratio}, "
                f"macs_reduction={self.macs_reduction})"
            )
        if self.ratio is None and self.macs_reduction is None:
            self.macs_reduction = 0.5
        return self


def widest_hidden_dense(model: keras.Model) -> str | None:
    """The name of the Dense layer with the most units that is not an output layer."""
    outputs = {id(t) for t in model.outputs}
    dense = [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.Dense) and id(layer.output) not in outputs
    ]
    return max(dense, key=lambda layer: layer.units).name if dense else None


def _filters(cfg: Config, model: keras.Model):
    if cfg.scope == "widest_dense":
        widest = widest_hidden_dense(model)
        if widest is None:
            raise ValueError(
                "prune_channels: scope='widest_dense' needs a hidden Dense layer; "
                f"{model.name!r} has none"
            )
        return lambda layer: layer.name == widest
    return cfg.filters


def preflight(cfg: Config, model: keras.Model | None, ctx) -> None:
    """Checks, before any training, that ``scope`` / ``filters`` select layers of ``model``."""
    from tfopt._steps import check_filters_match

    if model is not None and cfg.scope == "widest_dense":
        _filters(cfg, model)
    check_filters_match(cfg.filters, model)


def run(cfg: Config, model: keras.Model, ctx) -> keras.Model:
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
