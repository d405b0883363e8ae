"""The training options of ``train:`` (optimizer, schedule, regularization, augmentation) and the
``tune:`` section (the search of `tfopt tune` over them).

`tfopt run` trains its baseline with these options (`tfopt._training.fit`); `tfopt tune` searches
them and writes its best point back as a ``train:`` section, so a search result is a config that
`tfopt run` replays. Every default reproduces the plain training of earlier versions (Adam at a
constant learning rate, no regularization, no augmentation).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from tfopt.config._base import Section

OPTIMIZERS = ("adam", "adamw", "sgd")
ALGORITHMS = ("hyperband", "bayesian", "random")


class AugmentConfig(Section):
    """Data augmentation, applied only while training (never part of the saved model).

    ``noise``: stddev of added Gaussian noise (input units). ``shift``: 1-D signals, a random shift
    of up to ``shift`` samples (zero padded). ``scale``: a random amplitude factor in
    ``[1 - scale, 1 + scale]``. ``mixup``: the Beta(alpha, alpha) parameter of mixup (0 off).
    ``flip``: images, random horizontal flips. ``crop``: images, pad by ``crop`` pixels and crop
    back at a random offset.
    """

    noise: float = Field(0.0, ge=0.0)
    shift: int = Field(0, ge=0)
    scale: float = Field(0.0, ge=0.0, lt=1.0)
    mixup: float = Field(0.0, ge=0.0)
    flip: bool = False
    crop: int = Field(0, ge=0)

    def active(self) -> bool:
        return bool(self.noise or self.shift or self.scale or self.mixup or self.flip or self.crop)


class TrainingOptions(Section):
    """How the baseline is trained, beyond epochs, batch size and learning rate.

    ``optimizer``: adam, adamw or sgd (Nesterov, ``momentum``). ``weight_decay``: decoupled weight
    decay of the optimizer (0 off; L2 on the kernels is the model option ``l2``).
    ``lr_schedule``: ``constant`` or ``cosine`` (linear warm-up over ``warmup_epochs``, then cosine
    decay to 1% of ``learning_rate``). ``label_smoothing``: of the cross-entropy targets.
    ``early_stopping``: patience in epochs on ``val_accuracy`` (0 off); the best epoch's weights are
    kept. ``augment``: see `AugmentConfig`.
    """

    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: int = Field(0, ge=0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    early_stopping: int = Field(0, ge=0)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


def _check_range(name: str, spec: dict) -> None:
    allowed = {"min", "max", "step", "sampling"}
    unknown = set(spec) - allowed
    if unknown:
        raise ValueError(
            f"{name}: unknown range key(s) {sorted(unknown)}. Allowed: {sorted(allowed)}"
        )
    if "min" not in spec or "max" not in spec:
        raise ValueError(f"{name}: a range needs min and max (got {spec})")
    lo, hi = spec["min"], spec["max"]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lo, hi)):
        raise ValueError(f"{name}: min and max must be numbers (got {spec})")
    if lo > hi:
        raise ValueError(f"{name}: min must be <= max (got {spec})")
    if spec.get("sampling", "linear") not in ("linear", "log"):
        raise ValueError(f"{name}: sampling must be 'linear' or 'log' (got {spec['sampling']!r})")
    if spec.get("sampling") == "log" and lo <= 0:
        raise ValueError(f"{name}: log sampling needs min > 0 (got {spec})")


class TuneConfig(Section):
    """The search of `tfopt tune`.

    ``algorithm``: KerasTuner's hyperband, bayesian or random. ``max_trials``: stop after this many
    trials (None: Hyperband's own plan; 20 for the others). ``max_epochs``: the most epochs a trial
    trains (Hyperband's budget; the largest ``epochs`` choice otherwise). ``time_budget``: seconds
    after which no new trial starts (None: no limit). ``space``: overrides of the search space by
    hyperparameter name (see `tfopt.tune.training_space_names`): a value fixes it, a list is a
    choice, ``{min, max, step, sampling}`` a range.
    """

    algorithm: Literal["hyperband", "bayesian", "random"] = "hyperband"
    max_trials: int | None = Field(None, ge=1)
    max_epochs: int = Field(40, ge=1)
    time_budget: float | None = Field(None, gt=0.0)
    space: dict[str, Any] = Field(default_factory=dict)

    @field_validator("space")
    @classmethod
    def _shapes(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name, spec in v.items():
            if isinstance(spec, dict):
                _check_range(name, spec)
            elif isinstance(spec, list):
                if not spec:
                    raise ValueError(f"{name}: a choice list must not be empty")
            elif not isinstance(spec, bool | int | float | str):
                raise ValueError(
                    f"{name}: must be a value, a list of choices or a {{min, max}} range "
                    f"(got {spec!r})"
                )
        return v
