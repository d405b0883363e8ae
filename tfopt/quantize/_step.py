"""The ``qat`` recipe step of ``tfopt run``: quantization-aware fine-tuning.

The step returns the QAT model; the pipeline then exports it with ``quantization="int8"`` (the
learned ranges replace representative data).

Example config:

    steps:
      - type: qat
        epochs: 3
        learning_rate: 0.0001
        preserve_sparsity: true   # keep a pruned model's zeros
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tfopt.config import FineTuneStepConfig
from tfopt.config._base import MAX_EPOCHS, Filters


class Config(FineTuneStepConfig):
    """Settings of the ``qat`` step (and the fine-tuning keys of `FineTuneStepConfig`)."""

    type: Literal["qat"] = "qat"
    epochs: int = Field(3, ge=1, le=MAX_EPOCHS)
    learning_rate: float = Field(1e-4, gt=0)
    scheme: Literal["int8"] = "int8"
    filters: Filters = None
    preserve_sparsity: bool = True


def preflight(cfg: Config, model, ctx) -> None:
    """Checks, before any training, that ``filters`` select a layer of ``model``."""
    from tfopt._steps import check_filters_match

    check_filters_match(cfg.filters, model)


def run(cfg: Config, model, ctx):
    """Wraps ``model`` for QAT, fine-tunes it and returns the QAT model (export it as int8).

    Returns:
        The fitted QAT model (`tfopt.quantize.qat` output).
    """
    from tfopt.quantize import qat
    from tfopt.quantize._callbacks import QuantizationSummaries

    q = qat(model, scheme=cfg.scheme, filters=cfg.filters, preserve_sparsity=cfg.preserve_sparsity)
    report = q.qat_report
    ctx.log(
        f"qat: {len(report.changed)} layers quantized, "
        f"{len(report.details['folded'])} BatchNorms folded, {len(report.skipped)} left float"
    )
    ctx.fit(
        q,
        epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        callbacks=ctx.summaries(QuantizationSummaries, "quantization"),
    )
    ctx.record("qat_report", report.to_dict())
    return q
