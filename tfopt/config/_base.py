from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are checked strictly."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StepConfig(Section):
    """Base of a recipe step's config. Subclasses set ``type: Literal["<name>"]``."""

    type: str
    name: str | None = None  # the stage's name in reports and TensorBoard; defaults to the type
