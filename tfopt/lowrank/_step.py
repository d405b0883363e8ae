"""The ``lowrank`` recipe step: factorize the kernels (SVD), fine-tune the factors."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tfopt.config import FineTuneStepConfig


class Config(FineTuneStepConfig):
    """``{type: lowrank, energy: 0.9}`` or ``{type: lowrank, rank_ratio: 0.25}``.

    ``energy`` keeps the singular values covering that fraction of each kernel's squared spectrum;
    ``rank_ratio`` (when set, it replaces ``energy``) keeps that fraction of the full rank. Layers
    where the rank would not save weights are left as they are. Also the fine-tuning keys of
    `tfopt.config.FineTuneStepConfig` (``lr_schedule``, ``batch_size``, ``distill``).
    """

    type: Literal["lowrank"] = "lowrank"
    energy: float = Field(0.9, gt=0.0, le=1.0)
    rank_ratio: float | None = Field(None, gt=0.0, le=1.0)
    filters: str | list[str] | None = None  # regex(es) searched in layer names
    epochs: int = Field(2, ge=0)  # fine-tuning epochs of the factors (0: factorize only)
    learning_rate: float = Field(5e-4, gt=0.0)

    @model_validator(mode="after")
    def _one_rule(self):
        if self.rank_ratio is not None and "energy" in self.model_fields_set:
            raise ValueError(
                "set energy or rank_ratio, not both. "
                f"Received: energy={self.energy}, rank_ratio={self.rank_ratio}"
            )
        return self


def run(cfg: Config, model, ctx):
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
