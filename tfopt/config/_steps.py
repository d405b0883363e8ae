"""The options of every recipe step, validated here at the edge (`validate_steps`).

`STEP_CONFIGS` maps a step's ``type`` to its options class. The technique that runs a step
(`tfopt._steps.STEPS`: ``tfopt.prune._step``, ...) receives an instance already validated and only
reads it; technique packages never import pydantic, and this module imports no technique (the
zoo names of ``distill.student`` are looked up while a value is validated, not at import).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tfopt.config._base import (
    MAX_CLUSTERS,
    MAX_EPOCHS,
    BlockSize,
    Filters,
    FineTuneStepConfig,
    MByN,
    StepConfig,
)
from tfopt.config._train import AugmentConfig


class PruneStepConfig(FineTuneStepConfig):
    """Settings of the ``prune`` step. The schedule's steps are fractions of the fine-tuning run.

    Keys: ``target_sparsity`` (0.8), ``schedule`` (polynomial | cubic | constant), ``epochs`` (15),
    ``learning_rate`` (Adam, 2e-3), ``initial_sparsity`` (0.0), ``begin_fraction`` (0.0) and
    ``end_fraction`` (0.5) of the fine-tuning steps where sparsity starts rising and reaches the
    target, ``power`` (3.0, polynomial only), ``frequency`` (steps between mask updates; None picks
    about 20 updates), ``m_by_n`` (e.g. [2, 4]), ``block_size`` (e.g. [1, 4]) and ``filters``
    (a regex or a list of regexes), ``scope`` (``all``, or ``large``: only layers holding at
    least 5% of the model's kernel weights; a small first convolution or output layer saves
    almost no bytes and costs the most accuracy when pruned), and the fine-tuning keys of
    `tfopt.config.FineTuneStepConfig` (``lr_schedule``, ``batch_size``, ``distill``). The
    defaults keep mnist1d_cnn at 80% sparsity within a point of its float accuracy
    (benchmarks/prune_vs_tfmot.py).
    """

    type: Literal["prune"] = "prune"
    target_sparsity: float = Field(0.8, ge=0.0, lt=1.0)
    schedule: Literal["polynomial", "cubic", "constant"] = "polynomial"
    epochs: int = Field(15, ge=1, le=MAX_EPOCHS)
    learning_rate: float = Field(2e-3, gt=0)
    initial_sparsity: float = Field(0.0, ge=0.0, lt=1.0)
    begin_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    end_fraction: float = Field(0.5, gt=0.0, le=1.0)
    power: float = Field(3.0, gt=0)
    frequency: int | None = Field(None, ge=1)
    m_by_n: MByN | None = None
    block_size: BlockSize | None = None
    filters: Filters = None
    scope: Literal["all", "large"] = "all"

    @model_validator(mode="after")
    def _check(self):
        if self.scope != "all" and self.filters is not None:
            raise ValueError(
                f"give filters or scope, not both. Received: scope={self.scope!r}, "
                f"filters={self.filters!r}"
            )
        if self.m_by_n is not None and self.block_size is not None:
            raise ValueError(
                f"give m_by_n or block_size, not both. Received: m_by_n={list(self.m_by_n)}, "
                f"block_size={list(self.block_size)}"
            )
        if self.end_fraction <= self.begin_fraction:
            raise ValueError(
                "end_fraction must be > begin_fraction. Received: "
                f"end_fraction={self.end_fraction}, begin_fraction={self.begin_fraction}"
            )
        if self.schedule != "constant" and self.initial_sparsity > self.target_sparsity:
            raise ValueError(
                "initial_sparsity must be <= target_sparsity. Received: "
                f"initial_sparsity={self.initial_sparsity}, target_sparsity={self.target_sparsity}"
            )
        return self


class PruneChannelsStepConfig(FineTuneStepConfig):
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


class QatStepConfig(FineTuneStepConfig):
    """Settings of the ``qat`` step (and the fine-tuning keys of `FineTuneStepConfig`)."""

    type: Literal["qat"] = "qat"
    epochs: int = Field(3, ge=1, le=MAX_EPOCHS)
    learning_rate: float = Field(1e-4, gt=0)
    scheme: Literal["int8"] = "int8"
    filters: Filters = None
    preserve_sparsity: bool = True
    # keep a clustered model's clusters (`tfopt.quantize.qat(preserve_clusters=)`): "auto" for
    # each kernel that looks clustered (<= 256 distinct values, each held by 2+ weights), true
    # for each with <= 256 distinct values, false never
    preserve_clusters: bool | Literal["auto"] = "auto"
    # {layer regex: 4 or 8}, as `tfopt.quantize.qat(bits=)`; "sensitivity": 4 bits for each layer
    # `tfopt.quantize.choose_bits` lowers within bits_max_drop on the val data; None: every layer 8
    bits: dict[str, Literal[4, 8]] | Literal["sensitivity"] | None = None
    bits_max_drop: float = Field(0.01, ge=0, lt=1)


class ClusterStepConfig(FineTuneStepConfig):
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


class LowrankStepConfig(FineTuneStepConfig):
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


class DistillStepConfig(StepConfig):
    """``{type: distill, teacher: null, student: {model: mnist1d_cnn, width: 16}, ...}``.

    ``teacher``: None (the run's trained baseline) or a ``.keras`` path. ``student``: None (the
    current model, i.e. the output of the previous step, copied) or ``{model: <zoo name>,
    <builder options>...}`` for a new zoo model, e.g. half the width. ``augment``: the
    training-only transforms of ``train.augment`` (noise, shift, scale, flip, crop; ``mixup`` is
    the Distiller's mixup), applied before both teacher and student (`tfopt.distill.Distiller`'s
    ``augment``/``mixup``); the teacher then runs online. ``precompute_teacher``: None runs the
    teacher once up front unless ``augment`` is active.
    """

    type: Literal["distill"] = "distill"
    teacher: str | None = None
    student: dict[str, Any] | None = None
    temperature: float = Field(4.0, gt=0.0)
    alpha: float = Field(0.1, ge=0.0, le=1.0)  # weight of the hard-label loss
    features: dict[str, str] = Field(default_factory=dict)  # teacher layer -> student layer
    feature_weight: float = Field(1.0, ge=0.0)
    precompute_teacher: bool | None = None
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    epochs: int = Field(30, ge=1, le=MAX_EPOCHS)
    learning_rate: float = Field(2e-3, gt=0.0)

    @model_validator(mode="after")
    def _online_teacher(self):
        if self.precompute_teacher and self.augment.active():
            raise ValueError(
                "augment needs the teacher online (it labels the augmented inputs): drop "
                "precompute_teacher or set it to false"
            )
        return self

    @field_validator("teacher")
    @classmethod
    def _keras_file(cls, v: str | None) -> str | None:
        if v is not None and not v.endswith(".keras"):
            raise ValueError(f"must be a .keras file (or null for the baseline). Received: {v!r}")
        if v is not None and not Path(v).is_file():
            raise ValueError(f"no such .keras file: {v!r}")
        return v

    @field_validator("student")
    @classmethod
    def _zoo_model(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is None:
            return v
        from tfopt.config._checks import check_model_options
        from tfopt.models import MODELS

        name = v.get("model")
        if name not in MODELS:
            raise ValueError(
                f"student.model must name a zoo model {sorted(MODELS)}. Received: model={name!r}"
            )
        check_model_options(name, {k: x for k, x in v.items() if k != "model"}, what="model")
        return v


# step type -> its options; `tfopt._steps.STEPS` maps the same types to the modules that run them
STEP_CONFIGS: dict[str, type[StepConfig]] = {
    "prune": PruneStepConfig,
    "qat": QatStepConfig,
    "cluster": ClusterStepConfig,
    "distill": DistillStepConfig,
    "prune_channels": PruneChannelsStepConfig,
    "lowrank": LowrankStepConfig,
}
