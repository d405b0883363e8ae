from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are checked strictly."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StepConfig(Section):
    """Base of a recipe step's config. Subclasses set ``type: Literal["<name>"]``."""

    type: str
    name: str | None = None  # the stage's name in reports and TensorBoard; defaults to the type

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str | None) -> str | None:
        from tfopt._rundir import check_name  # <stage>.keras is written inside the run dir

        return check_name(v, "name")


class DistillLoss(Section):
    """Fine-tune against the run's float baseline (the teacher): ``{temperature, alpha}``."""

    temperature: float = Field(4.0, gt=0.0)
    alpha: float = Field(0.1, ge=0.0, le=1.0)  # weight of the hard-label loss


class FineTuneStepConfig(StepConfig):
    """Base of a step that fine-tunes with ``ctx.fit``; these keys shape every fit of the step.

    ``lr_schedule``: ``constant`` or ``cosine`` (decay to 5% of ``learning_rate`` over the fit).
    ``batch_size``: None uses ``train.batch_size``. ``distill``: None, or ``{temperature, alpha}``
    to fine-tune through a `tfopt.distill.Distiller` whose teacher is the run's float baseline.
    """

    lr_schedule: Literal["constant", "cosine"] = "constant"
    batch_size: int | None = Field(None, ge=1)
    distill: DistillLoss | None = None
