"""What `tfopt tune` tries: the training search space, as a KerasTuner `HyperModel`.

Each hyperparameter is a key of the `tfopt run` config: ``train.*`` (optimizer, schedule,
regularization), ``train.augment.*`` (augmentation) or ``model.options.*`` (the builder's width,
depth, dropout, L2); with a ``transfer:`` section, ``transfer.freeze_until`` (the last frozen
layer, or ``none``) and ``transfer.unfreeze_at_epoch`` (``-1``: never) instead of the builder's
options (the model is the given one, with a new head). A point of the space is therefore a ``train:`` section plus model options
(`TrainingHyperModel.train_config`, `TrainingHyperModel.model_options`), validated by the same
schema as `tfopt run`. How a trial runs lives in `tfopt.tune.TrainingTuner.run_trial`.

The space is overridable by name (the ``tune.space`` section of a config): a value fixes a
hyperparameter, a list is a choice, ``{min, max, step, sampling}`` a range.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import keras_tuner

from tfopt._backend import check_model
from tfopt.errors import ConfigError

TRAIN_KEYS = (
    "optimizer",
    "learning_rate",
    "lr_schedule",
    "warmup_epochs",
    "momentum",
    "batch_size",
    "epochs",
    "early_stopping",
    "weight_decay",
    "label_smoothing",
)
AUGMENT_KEYS = ("noise", "shift", "scale", "mixup", "flip", "crop")
MODEL_KEYS = ("width", "dense", "depth", "blocks", "dropout", "l2")
# a config with a transfer: section searches these instead of the builder's options; "none" is
# freeze_until: null (train every layer), -1 is unfreeze_at_epoch: null (never unfreeze)
TRANSFER_KEYS = ("freeze_until", "unfreeze_at_epoch")
NO_FREEZE, NEVER = "none", -1

# The default space (chosen for small 1-D/image classifiers such as the MNIST-1D zoo CNN: wider
# and deeper than the zoo default, shift augmentation, cosine schedules and longer training are
# what move it from 0.90 to the published 0.94). Names absent from a model or input are dropped.
DEFAULT_SPACE: dict[str, Any] = {
    "optimizer": ["adamw", "adam", "sgd"],
    "learning_rate": {"min": 5e-4, "max": 1e-2, "sampling": "log"},
    "lr_schedule": ["cosine", "constant"],
    "warmup_epochs": [0, 2],
    "batch_size": [64, 32, 128],
    "early_stopping": [0, 10],
    "weight_decay": [1e-3, 0.0, 1e-2, 5e-2],
    "label_smoothing": [0.0, 0.05, 0.1],
    "noise": [0.0, 0.05, 0.1],
    "shift": [4, 0, 2, 6],
    "scale": [0.0, 0.1, 0.2],
    "mixup": [0.0, 0.2],
    "flip": [False, True],
    "crop": [0, 2, 4],
    "width": [64, 32, 96, 128],
    "dense": [128, 64, 256],
    "depth": [3, 4],
    "blocks": [2, 1, 3],
    "dropout": {"min": 0.0, "max": 0.5, "step": 0.1},
    "l2": [0.0, 1e-5, 1e-4],
}


def _builder_fn(builder):
    if isinstance(builder, str):
        from tfopt.models import MODELS

        if builder not in MODELS:
            hint = difflib.get_close_matches(builder, MODELS, n=1)
            mean = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(
                f"model.name: unknown model {builder!r}{mean}. Allowed: {sorted(MODELS)}"
            )
        return MODELS[builder]
    return builder


def _declare(hp, name: str, spec):
    """Declares ``name`` on ``hp`` from a space entry (value, choice list or range)."""
    if isinstance(spec, dict):
        lo, hi = spec["min"], spec["max"]
        sampling = spec.get("sampling", "linear")
        step = spec.get("step")
        if all(isinstance(v, int) for v in (lo, hi, step or 1)) and sampling == "linear":
            return hp.Int(name, lo, hi, step=step or 1)
        return hp.Float(name, float(lo), float(hi), step=step, sampling=sampling)
    if isinstance(spec, list):
        values = list(dict.fromkeys(spec))
        if len(values) == 1:
            return hp.Fixed(name, values[0])
        if sorted(values, key=str) == [False, True]:
            return hp.Boolean(name, default=bool(values[0]))
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values) and any(
            isinstance(v, float) for v in values
        ):
            values = [float(v) for v in values]
        return hp.Choice(name, values)
    return hp.Fixed(name, spec)


def _clean(value):
    """A hyperparameter value as written to a config (floats without step artifacts)."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    return value


def _examples(spec) -> list:
    """The values a space entry can take that are checked against the schema."""
    if isinstance(spec, dict):
        return [spec["min"], spec["max"]]
    return list(spec) if isinstance(spec, list) else [spec]


class TrainingHyperModel(keras_tuner.HyperModel):
    """The training search space of a zoo builder (or any builder callable).

    Args:
        builder: a `tfopt.models` name or a callable taking ``input_shape``, ``num_classes`` and
            keyword options. Defaults to "mnist1d_cnn".
        input_shape: the model's input shape (without the batch axis); its rank picks 1-D
            (``shift``) or image (``flip``, ``crop``) augmentations.
        num_classes: the number of classes.
        base: the `tfopt.config.TrainConfig` that a point of the space updates. Defaults to None
            (the schema's defaults).
        base_options: model options that are not searched (``model.options`` of the config).
            Defaults to None.
        space: overrides of `DEFAULT_SPACE` by name. Defaults to None.
        transfer: a `tfopt.config.TransferConfig`: search how to fine-tune ``source`` instead of
            the builder's options. Defaults to None.
        source: the model to transfer from (needed with ``transfer``). Defaults to None.
        max_epochs: the epochs of a trial when the oracle does not set them (Hyperband does);
            ``epochs`` in ``space`` overrides it. Defaults to 40.

    Raises:
        ConfigError: a name that is not in this space or a value the ``train:`` schema rejects
            (e.g. ``optimizer: adamx``), in one line.

    Example:
        >>> hm = tfopt.tune.TrainingHyperModel("mnist1d_cnn", input_shape=(40, 1), num_classes=10,
        ...                                    space={"optimizer": "adamw", "width": [32, 64]})
        >>> model = hm.build(keras_tuner.HyperParameters())
    """

    def __init__(
        self,
        builder: str | Callable = "mnist1d_cnn",
        *,
        input_shape: Sequence[int],
        num_classes: int,
        base=None,
        base_options: dict | None = None,
        space: dict | None = None,
        max_epochs: int = 40,
        transfer=None,
        source=None,
        name: str | None = None,
    ):
        super().__init__(name=name, tunable=True)
        from tfopt.config._schema import TrainConfig

        self.builder = builder
        self.input_shape = tuple(int(d) for d in input_shape)
        self.num_classes = int(num_classes)
        self.base = base if base is not None else TrainConfig()
        self.base_options = dict(base_options or {})
        self.max_epochs = int(max_epochs)
        self.transfer, self.source = transfer, source
        if transfer is not None and source is None:
            raise ValueError("transfer needs source= (the model to fine-tune)")
        # a transferred model is the given one: no builder options to search
        options = set() if transfer else set(inspect.signature(_builder_fn(builder)).parameters)
        image = len(self.input_shape) == 3
        wanted = {"shift"} if not image else {"flip", "crop"}
        space = dict(space or {})
        known = {
            n: s
            for n, s in DEFAULT_SPACE.items()
            if (n in TRAIN_KEYS)
            or (n in AUGMENT_KEYS and (n in wanted or n not in ("shift", "flip", "crop")))
            or (n in MODEL_KEYS and n in options and n not in self.base_options)
        }
        allowed = (
            set(known)
            | {n for n in TRAIN_KEYS}
            | (set(MODEL_KEYS) & options)
            | (set(AUGMENT_KEYS) - ({"flip", "crop"} if not image else {"shift"}))
        )
        if transfer is not None:
            known.update(self._transfer_space())
            allowed |= set(TRANSFER_KEYS)
        for n in space:
            if n not in allowed:
                hint = difflib.get_close_matches(n, sorted(allowed), n=1)
                mean = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise ConfigError(
                    f"tune.space: unknown hyperparameter {n!r}{mean}. Allowed for this model and "
                    f"data: {sorted(allowed)}"
                )
        self.space = {**known, **space}
        if "epochs" not in self.space:
            self.space["epochs"] = self.max_epochs
        self._check_values()
        if transfer is not None:
            self._check_trains()

    def _transfer_space(self) -> dict:
        """freeze_until: the config's choice first, then none and each layer with weights before
        the head; unfreeze_at_epoch: the config's, then never and two early epochs."""
        from tfopt.train._transfer import frozen_span

        layers = [layer.name for layer in self.source.layers if layer.weights][:-1]
        freeze = self.transfer.freeze_until or NO_FREEZE
        unfreeze = self.transfer.unfreeze_at_epoch
        unfreeze = NEVER if unfreeze is None else unfreeze
        # the config's own freeze_until trains something only once unfrozen: never is no choice
        nothing = frozen_span(self.source, self.transfer.freeze_until, self.transfer.head)
        later = [e for e in (2, 5) if e < self.max_epochs] if nothing else [NEVER, 2, 5]
        return {
            "freeze_until": list(dict.fromkeys([freeze, NO_FREEZE, *layers])),
            "unfreeze_at_epoch": list(dict.fromkeys([unfreeze, *later])),
        }

    def _check_trains(self) -> None:
        """Refuses a space with a point that would train nothing, as `tfopt run` refuses such a
        ``transfer:`` section: a freeze_until that freezes every layer with weights (head: keep)
        together with an unfreeze_at_epoch that can be never (-1, or >= tune.max_epochs)."""
        from tfopt.train._transfer import frozen_span

        space = self.space
        never = [
            v for v in _examples(space.get("unfreeze_at_epoch", NEVER))
            if v == NEVER or v >= self.max_epochs
        ]  # fmt: skip
        for freeze in _examples(space.get("freeze_until", NO_FREEZE)):
            span = frozen_span(self.source, freeze, self.transfer.head)
            if span and never:
                where = "transfer: " if freeze == self.transfer.freeze_until else "tune.space: "
                raise ConfigError(
                    f"{where}freeze_until={freeze!r} with head: keep freezes every layer with "
                    f"weights ({span}), and unfreeze_at_epoch={never[0]} never unfreezes them "
                    f"within tune.max_epochs={self.max_epochs}: those trials would change "
                    "nothing; freeze an earlier layer (freeze_until), use head: new, or set "
                    "unfreeze_at_epoch (and tune.space.unfreeze_at_epoch) to an earlier epoch"
                )

    def transfer_config(self, hp) -> dict | None:
        """The ``transfer:`` section of a point (None without transfer)."""
        if self.transfer is None:
            return None
        out = self.transfer.model_dump()
        freeze = hp.values.get("freeze_until", out["freeze_until"] or NO_FREEZE)
        unfreeze = hp.values.get("unfreeze_at_epoch", out["unfreeze_at_epoch"])
        out["freeze_until"] = None if freeze == NO_FREEZE else freeze
        out["unfreeze_at_epoch"] = None if unfreeze in (None, NEVER) else int(unfreeze)
        return out

    def _check_values(self) -> None:
        from tfopt.config import validate_train

        for name, spec in self.space.items():
            if name == "freeze_until":
                from tfopt.train._transfer import check_freeze_until

                for value in _examples(spec):
                    try:
                        check_freeze_until(self.source, None if value == NO_FREEZE else value)
                    except ValueError as e:
                        raise ConfigError(f"tune.space: {e}") from None
                continue
            if name == "unfreeze_at_epoch":
                bad = [v for v in _examples(spec) if not isinstance(v, int) or v < NEVER]
                if bad:
                    raise ConfigError(
                        "tune.space: unfreeze_at_epoch must be epochs >= 0, or -1 (never). "
                        f"Received: {bad[0]!r}"
                    )
                continue
            for value in _examples(spec):
                if name in TRAIN_KEYS:
                    raw = {name: value}
                elif name in AUGMENT_KEYS:
                    raw = {"augment": {name: value}}
                else:
                    continue
                validate_train(raw, prefix="tune.space: ")

    def names(self) -> list[str]:
        """The hyperparameter names of this space."""
        return list(self.space)

    def declare_hyperparameters(self, hp) -> dict:
        return {name: _declare(hp, name, spec) for name, spec in self.space.items()}

    def train_config(self, hp, *, epochs: int | None = None):
        """The ``train:`` section of a point: ``base`` updated with its values (validated).

        ``epochs`` (a Hyperband budget) overrides the point's ``epochs``.
        """
        from tfopt.config import validate_train

        values = {k: _clean(v) for k, v in hp.values.items()}
        raw = self.base.model_dump()
        raw.update({k: values[k] for k in TRAIN_KEYS if k in values})
        raw["augment"] = {
            **raw.get("augment", {}),
            **{k: values[k] for k in AUGMENT_KEYS if k in values},
        }
        if epochs is not None:
            raw["epochs"] = int(epochs)
        return validate_train(raw)

    def model_options(self, hp) -> dict:
        """The builder's options of a point (``base_options`` plus the searched ones)."""
        tuned = {k: _clean(hp.values[k]) for k in MODEL_KEYS if k in hp.values}
        return {**self.base_options, **tuned}

    def build(self, hp):
        """A new, untrained model of the point ``hp`` (augmentation is not part of it)."""
        self.declare_hyperparameters(hp)
        if self.transfer is not None:
            from tfopt.train import transfer

            t = self.transfer_config(hp)
            return transfer(
                self.source,
                num_classes=self.num_classes,
                freeze_until=t["freeze_until"],
                head=t["head"],
            )
        fn = _builder_fn(self.builder)
        model = fn(
            input_shape=self.input_shape, num_classes=self.num_classes, **self.model_options(hp)
        )
        check_model(model, "the builder's model")
        return model


def training_space_names(builder: str = "mnist1d_cnn", input_shape=(40, 1)) -> list[str]:
    """The names ``tune.space`` accepts for a builder and an input shape.

    Example:
        >>> "optimizer" in tfopt.tune.training_space_names()
        True
    """
    hm = TrainingHyperModel(builder, input_shape=input_shape, num_classes=10)
    return hm.names()
