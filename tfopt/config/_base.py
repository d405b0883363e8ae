from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator

# Bounds on sizes: a value above them would exhaust memory or overflow an int64 tensor dimension
# long before it could help, so the schema refuses it up front instead of after training.
MAX_BATCH_SIZE = 1 << 20  # 1,048,576 samples per batch
MAX_CLUSTERS = 1 << 16  # 65,536 centroids per codebook (an int16 index; plenty for any kernel)
MAX_EPOCHS = 100_000
MAX_BLOCK = 1 << 16  # the largest side of a pruning block, and the largest n of m_by_n


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are checked strictly.

    Strict: a string is not an int (``epochs: '5'`` is refused) nor is a bool (``epochs: true``);
    an int is accepted where a float is expected.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


def _pair_from_list(v):
    # YAML has no tuples: a [m, n] list is the pair (strict mode refuses a list for a tuple)
    return tuple(v) if isinstance(v, list) else v


def _check_m_by_n(v: tuple[int, int] | None):
    if v is not None and not (0 < v[0] < v[1] <= MAX_BLOCK):
        raise ValueError(
            f"m_by_n must be [m, n] with 0 < m < n <= {MAX_BLOCK}, e.g. [2, 4] keeps 2 of every "
            f"4 weights. Received: m_by_n={list(v)}"
        )
    return v


def _check_block(v: tuple[int, int] | None):
    if v is not None and not all(1 <= s <= MAX_BLOCK for s in v):
        raise ValueError(
            f"block_size must be [rows, cols], each in [1, {MAX_BLOCK}], e.g. [1, 4]. "
            f"Received: block_size={list(v)}"
        )
    return v


def _compile_filters(v: str | list[str] | None):
    for pattern in [v] if isinstance(v, str) else v or []:
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"invalid regular expression {pattern!r}: {e}") from None
    return v


MByN = Annotated[tuple[int, int], BeforeValidator(_pair_from_list), AfterValidator(_check_m_by_n)]
BlockSize = Annotated[
    tuple[int, int], BeforeValidator(_pair_from_list), AfterValidator(_check_block)
]
# ``filters``: a regex or a list of regexes searched in layer names; compiled at validation
Filters = Annotated[str | list[str] | None, AfterValidator(_compile_filters)]


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
    batch_size: int | None = Field(None, ge=1, le=MAX_BATCH_SIZE)
    distill: DistillLoss | None = None
