"""The search space: a KerasTuner `HyperModel` over training and compression hyperparameters.

What to try lives here (``declare``, ``build``, ``fit``, ``recipe``, ``steps``); how a trial runs
lives in `tfopt.tune.Tuner.run_trial`, which hands ``steps(hp)`` to the recipe engine.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import keras_tuner

from tfopt import _formats as formats
from tfopt._backend import check_model, import_keras
from tfopt._rewrite import clone  # the one model copier (a trial's model is a copy)
from tfopt._training import compile_classifier, fit_arrays
from tfopt.tune._recipe import OPT_IN, TECHNIQUES, available_techniques, recipe_steps

keras = import_keras()

TARGETS = formats.targets()  # the formats table's search targets


# name -> default choices. Floats with a range are declared below with hp.Float.
TRAINING_CHOICES = {
    "batch_size": [32, 64, 128],
    "l2": [0.0, 1e-5, 1e-4, 1e-3],
    "width": [8, 16, 32, 48, 64],
    "dense": [16, 32, 64, 128, 256],
}
COMPRESSION_CHOICES = {
    "channel_ratio": [0.0, 0.25, 0.5, 0.75],
    "channel_scope": ["dense", "all", "all_dense"],
    "schedule": ["polynomial", "constant"],
    "prune_scope": ["large", "all"],
    "clusters": [0, 4, 8, 16, 32],
    "quantization": ["ptq", "qat"],
    # QAT weight bits: "mixed" picks 4 or 8 per layer (`tfopt.quantize.choose_bits`, offered only
    # when litert-quantizer is installed)
    "weight_bits": ["8", "4", "mixed"],
    "temperature": [1.0, 2.0, 4.0, 8.0],
    "ft_epochs": [4, 8, 12, 16],
    "lowrank_energy": [0.0, 0.8, 0.9, 0.95],
}


def _has_aeq() -> bool:
    import importlib.util

    return importlib.util.find_spec("litert_quantizer") is not None


def compression_choices(name: str, model=None) -> list:
    """The default choices of compression hyperparameter ``name`` that apply to ``model``:
    ``weight_bits="mixed"`` only with litert-quantizer installed, and the channel scopes that cut
    the widest hidden Dense layer only when ``model`` has one (a trial that cannot run is a
    wasted trial)."""
    choices = list(COMPRESSION_CHOICES[name])
    if name == "weight_bits" and not _has_aeq():
        choices.remove("mixed")
    if name == "channel_scope" and model is not None:
        from tfopt.prune._channels_step import widest_hidden_dense

        if widest_hidden_dense(model) is None:
            choices = ["all"]
    return choices


class CompressionHyperModel(keras_tuner.HyperModel):
    """Training and compression hyperparameters of a Keras classifier, as a KerasTuner HyperModel.

    Two modes:

    * ``builder`` (a zoo name such as ``"mnist1d_cnn"`` or a callable taking keyword options):
      ``build(hp)`` makes a new model with the tuned ``width``/``dense``/``dropout``/``l2`` (those
      the builder accepts) and ``fit`` trains it with the tuned ``learning_rate``/``batch_size``.
    * ``model`` (a trained float model): ``build(hp)`` returns a copy of it and only compression is
      tuned (this is what `tfopt.auto.optimize` uses).

    Compression hyperparameters are declared for each technique in ``techniques`` that is
    available (see `tfopt.tune.available_techniques`): ``sparsity`` and ``schedule`` (prune),
    ``channel_ratio`` (prune_channels), ``clusters`` (cluster), ``quantization`` ("qat"/"ptq")
    and ``weight_bits`` ("8"/"4"/"mixed", QAT's weights) (quantize, int8 targets only), ``distill``/``temperature``/``alpha`` (distill), and the
    fine-tuning ``ft_epochs``/``ft_learning_rate``.

    Args:
        model: a trained float model to compress. Defaults to None (use ``builder``).
        builder: a `tfopt.models` name or a callable returning a new model. Defaults to
            "mnist1d_cnn" when ``model`` is None.
        input_shape: the builder's input shape. Defaults to the builder's own.
        num_classes: the builder's number of classes. Defaults to the builder's own.
        techniques: compression techniques to search. Defaults to the available ones except
            ``"lowrank"`` (``lowrank_energy``: SVD factorization), which is searched when listed.
        target: the deployable format, one of `TARGETS`. Defaults to "tflite-int8".
        space: overrides of a hyperparameter's choices, e.g. ``{"sparsity": [0.8, 0.9]}`` (one
            value fixes it). Defaults to None.
        tune_training: declare the training hyperparameters (builder mode only). Defaults to True.

    Raises:
        ValueError: both or neither of ``model``/``builder``, an unknown technique or target, or an
            unknown hyperparameter name in ``space``.

    Example:
        >>> hm = tfopt.tune.CompressionHyperModel(builder="mnist1d_cnn", input_shape=(40, 1))
        >>> model = hm.build(keras_tuner.HyperParameters())
    """

    def __init__(
        self,
        model=None,
        *,
        builder: str | Callable | None = None,
        input_shape: Sequence[int] | None = None,
        num_classes: int | None = None,
        techniques: Sequence[str] | None = None,
        target: str = "tflite-int8",
        space: dict | None = None,
        tune_training: bool = True,
        name: str | None = None,
    ):
        super().__init__(name=name, tunable=True)
        if model is not None and builder is not None:
            raise ValueError("Pass either model= (compress a trained model) or builder=, not both.")
        if model is None and builder is None:
            builder = "mnist1d_cnn"
        if model is not None:
            check_model(model)
        if target not in TARGETS:
            raise ValueError(
                f"Unrecognized target={target!r}. Supported targets are: {list(TARGETS)}"
            )
        available = available_techniques()
        if techniques is None:
            techniques = tuple(t for t in available if t not in OPT_IN)
        for tech in techniques:
            if tech not in TECHNIQUES:
                raise ValueError(
                    f"Unrecognized technique {tech!r} in techniques={list(techniques)}. "
                    f"Supported: {list(TECHNIQUES)}"
                )
        self.model = model
        self.builder = builder
        self.input_shape = None if input_shape is None else tuple(input_shape)
        self.num_classes = num_classes
        self.techniques = tuple(t for t in techniques if t in available)
        self.missing_techniques = tuple(t for t in techniques if t not in available)
        self.target = target
        self.space = dict(space or {})
        self.tune_training = bool(tune_training) and model is None
        unknown = set(self.space) - set(self.hyperparameter_names())
        if unknown:
            raise ValueError(
                f"Unknown hyperparameter(s) {sorted(unknown)} in space=. Known for this hypermodel: "
                f"{self.hyperparameter_names()}"
            )

    # -- the space -------------------------------------------------------------------------------
    def _builder_options(self) -> set[str]:
        if self.model is not None:
            return set()
        fn = self.builder
        if isinstance(fn, str):
            from tfopt.models import MODELS

            if fn not in MODELS:
                raise ValueError(f"Unknown builder {fn!r}. Known models: {sorted(MODELS)}")
            fn = MODELS[fn]
        return set(inspect.signature(fn).parameters)

    def hyperparameter_names(self) -> list[str]:
        """The names this hypermodel declares (depends on the techniques and the builder)."""
        names = []
        if self.tune_training:
            names += ["learning_rate", "batch_size"]
            names += [
                n for n in ("dropout", "l2", "width", "dense") if n in self._builder_options()
            ]
        t = self.techniques
        if "lowrank" in t:
            names.append("lowrank_energy")
        if "prune_channels" in t:
            names += ["channel_ratio", "channel_scope"]
        if "prune" in t:
            names += ["sparsity", "schedule", "prune_scope"]
        if "cluster" in t:
            names.append("clusters")
        if "quantize" in t and formats.get(self.target).quantization == "int8":
            names += ["quantization", "weight_bits"]
        if "distill" in t:
            names += ["distill", "temperature", "alpha"]
        if any(n in t for n in ("prune", "prune_channels", "cluster", "quantize", "lowrank")):
            names += ["ft_epochs", "ft_learning_rate"]
        return names

    def _declare(self, hp, name: str, default_kind: Callable):
        if name in self.space:
            values = self.space[name]
            values = list(values) if isinstance(values, list | tuple) else [values]
            if len(values) == 1:
                return hp.Fixed(name, values[0])
            return hp.Choice(name, values)
        return default_kind()

    def declare(self, hp) -> dict:
        """Declares every hyperparameter on ``hp`` and returns their current values."""
        names = self.hyperparameter_names()
        kinds = {
            "learning_rate": lambda: hp.Float(
                "learning_rate", 1e-4, 1e-2, sampling="log", default=2e-3
            ),
            "dropout": lambda: hp.Float("dropout", 0.0, 0.5, step=0.1, default=0.0),
            "sparsity": lambda: hp.Float("sparsity", 0.0, 0.95, step=0.05, default=0.8),
            "alpha": lambda: hp.Float("alpha", 0.05, 0.9, default=0.1),
            "distill": lambda: hp.Boolean("distill", default=True),
            "ft_learning_rate": lambda: hp.Float(
                "ft_learning_rate", 1e-4, 3e-3, sampling="log", default=1e-3
            ),
        }
        defaults = {
            "batch_size": 64,
            "l2": 0.0,
            "width": 32,
            "dense": 128,
            "channel_ratio": 0.0,
            "channel_scope": "dense",
            "schedule": "polynomial",
            "prune_scope": "large",
            "clusters": 0,
            "quantization": "qat",
            "weight_bits": "8",
            "temperature": 4.0,
            "ft_epochs": 8,
            "lowrank_energy": 0.0,
        }
        values = {}
        for name in names:
            if name in kinds:
                kind = kinds[name]
            else:
                choices = TRAINING_CHOICES.get(name) or compression_choices(name, self.model)
                default = defaults[name] if defaults[name] in choices else choices[0]

                def kind(name=name, choices=choices, default=default):
                    return hp.Choice(name, choices, default=default)

            values[name] = self._declare(hp, name, kind)
        return values

    def declare_hyperparameters(self, hp):
        self.declare(hp)

    # -- building and training -------------------------------------------------------------------
    def build(self, hp):
        """Returns the float model for ``hp`` (a copy of ``model``, or a new builder model)."""
        values = self.declare(hp)
        if self.model is not None:
            return clone(self.model)
        options = {k: values[k] for k in ("dropout", "l2", "width", "dense") if k in values}
        if isinstance(self.builder, str):
            from tfopt.models import get

            kwargs = {}
            if self.input_shape is not None:
                kwargs["input_shape"] = self.input_shape
            if self.num_classes is not None:
                kwargs["num_classes"] = self.num_classes
            model = get(self.builder, **kwargs, **options)
        else:
            model = self.builder(**options)
        check_model(model, "the builder's model")
        return compile_classifier(model, values.get("learning_rate", 2e-3))

    def fit(self, hp, model, *args, epochs: int = 1, validation_data=None, verbose=0, **kwargs):
        """Trains a float model built by `build` (no-op in ``model`` mode or with epochs=0)."""
        if self.model is not None or epochs <= 0:
            return None
        x, y = args[0] if len(args) == 1 else args[:2]
        batch = int(hp.values.get("batch_size", 64))
        return fit_arrays(
            model,
            x,
            y,
            epochs=int(epochs),
            batch_size=batch,
            validation_data=validation_data,
            verbose=verbose,
        )

    def recipe(self, hp) -> dict:
        """The flat compression recipe of ``hp`` (the input of `tfopt.tune.recipe_steps`)."""
        v = hp.values
        recipe = {
            "channel_ratio": float(v.get("channel_ratio", 0.0)),
            "channel_scope": v.get("channel_scope", "dense"),
            "sparsity": round(float(v.get("sparsity", 0.0)), 4),
            "schedule": v.get("schedule", "polynomial"),
            "prune_scope": v.get("prune_scope", "large"),
            "clusters": int(v.get("clusters", 0)),
            "quantization": v.get("quantization", "ptq"),
            "weight_bits": str(v.get("weight_bits", "8")),
            "distill": bool(v.get("distill", False)),
            "temperature": float(v.get("temperature", 4.0)),
            "alpha": float(v.get("alpha", 0.1)),
            "epochs": int(v.get("ft_epochs", 8)),
            "learning_rate": float(v.get("ft_learning_rate", 1e-3)),
            "batch_size": int(v.get("batch_size", 64)),
            "lowrank_energy": float(v.get("lowrank_energy", 0.0)),
        }
        return recipe

    def steps(self, hp) -> list:
        """The recipe stages of ``hp``: `tfopt run` step configs (see `tfopt.tune.recipe_steps`)."""
        return recipe_steps(self.recipe(hp), target=self.target)
