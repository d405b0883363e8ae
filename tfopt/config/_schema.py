from __future__ import annotations

import copy
import difflib
import importlib.resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from tfopt import _formats as formats
from tfopt.config._base import MAX_BATCH_SIZE, MAX_EPOCHS, Section, StepConfig
from tfopt.config._checks import check_model_options, missing_requirements
from tfopt.config._steps import STEP_CONFIGS
from tfopt.config._train import TrainingOptions, TuneConfig
from tfopt.config._yaml import parse as parse_yaml
from tfopt.errors import ConfigError

# every format of tfopt.export.export: the names in the formats table (imported without TensorFlow)
EXPORT_FORMATS = tuple(formats.names())


class DataConfig(Section):
    name: str = "mnist1d"  # a dataset name (tfopt.data.DATASETS) or a .npz path
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from tfopt.data._datasets import DATASETS

        if v in DATASETS or v.endswith(".npz"):
            return v
        raise ValueError(_unknown("dataset", v, DATASETS, extra=" or a path to a .npz file"))


class ModelConfig(Section):
    name: str | None = "mnist1d_cnn"  # a zoo model (tfopt.models.MODELS)
    path: str | None = None  # or a user's .keras file (loaded with safe_mode=True)
    options: dict[str, Any] = Field(default_factory=dict)  # the zoo builder's keyword options
    sha256: str | None = None  # the sha256 of model.path's file: another file is refused

    @field_validator("options")
    @classmethod
    def _builder_options(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        name = info.data.get("name")
        if info.data.get("path") is None and name in _zoo_models():
            check_model_options(name, v)
        return v

    @model_validator(mode="after")
    def _zoo_model(self):
        if self.path is None and self.name is not None:
            check_model_options(self.name, {})
        return self

    @field_validator("path")
    @classmethod
    def _keras_file(cls, v: str | None) -> str | None:
        if v is not None and not v.lower().endswith((".keras", ".h5", ".hdf5")):
            raise ValueError(f"must be a .keras (or legacy .h5) file. Received: {v!r}")
        return v

    @model_validator(mode="after")
    def _same_file(self):
        """A recorded ``sha256`` (recipe.yaml, best.yaml) pins the model file it was written for."""
        if self.sha256 is None:
            return self
        if self.path is None:
            raise ValueError("sha256 is the digest of model.path's file; set model.path too")
        from tfopt._rundir import sha256

        path = Path(self.path)
        if path.is_file() and sha256(path) != self.sha256:
            raise ValueError(
                f"model.path {self.path!r} is not the model this config was written for (its "
                f"sha256 is {sha256(path)[:12]}..., the config records {self.sha256[:12]}...); "
                "put the config next to its own model file, or remove model.sha256 to use this one"
            )
        return self


class TrainConfig(TrainingOptions):  # optimizer, schedule, augmentation: config/_train.py
    epochs: int = Field(30, ge=0, le=MAX_EPOCHS)  # 0: use the model as it is (a trained .keras)
    batch_size: int = Field(64, ge=1, le=MAX_BATCH_SIZE)
    learning_rate: float = Field(2e-3, gt=0.0)
    # tf.distribute: none | mirrored (this machine's devices) | multi_worker (TF_CONFIG's workers)
    strategy: Literal["none", "mirrored", "multi_worker"] = "none"
    # seconds a multi_worker task waits for the other tasks of TF_CONFIG (a finite wait)
    peer_timeout: float = Field(300.0, gt=0.0, le=86400.0)


class TransferConfig(Section):
    """Fine-tune the model section's model (a .keras or a zoo model) on this run's data."""

    freeze_until: str | None = None  # the last layer kept frozen (None: train every layer)
    unfreeze_at_epoch: int | None = Field(None, ge=0)  # None: frozen for the whole baseline fit
    head: Literal["new", "keep"] = "new"  # new: a fresh last Dense for the data's classes


class ExportConfig(Section):
    formats: list[str] = Field(default_factory=lambda: ["tflite", "tflite-int8"], min_length=1)
    representative_samples: int = Field(200, ge=1, le=1_000_000)

    @field_validator("formats")
    @classmethod
    def _known_formats(cls, v: list[str]) -> list[str]:
        for f in v:
            if f not in formats.FORMATS:
                raise ValueError(_unknown("format", f, formats.names()))
            missing = missing_requirements(f)
            if missing:
                raise ValueError(
                    f"format {f!r} needs {', '.join(missing)}, which is not installed here: "
                    f"pip install {' '.join(missing)}"
                    + (" (and an NVIDIA GPU with CUDA)" if f.startswith("tensorrt") else "")
                )
        return v


class BenchConfig(Section):
    runs: int = Field(200, ge=1, le=10_000_000)  # timed single-sample runs per artifact
    warmup: int = Field(20, ge=0, le=10_000_000)
    concurrency: list[int] = Field(default_factory=lambda: [1])  # client counts of the load test
    duration_s: float = Field(3.0, gt=0.0, le=3600.0)  # seconds each load-test level runs
    micro_batch: bool = False  # group waiting requests into one batch in the load test
    # accuracy under PGD-10 at this L-inf radius (Keras rows white-box; artifacts by transfer)
    robust_epsilon: float | None = Field(None, ge=0.0)

    @field_validator("concurrency")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(not 1 <= c <= 1024 for c in v):
            raise ValueError(f"client counts must be in [1, 1024]. Received: {v}")
        return v


class RunConfig(Section):
    name: str = "default"
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    transfer: TransferConfig | None = None
    steps: list[StepConfig] = Field(default_factory=list)
    export: ExportConfig = Field(default_factory=ExportConfig)
    bench: BenchConfig = Field(default_factory=BenchConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)  # `tfopt tune` only

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        from tfopt._rundir import check_name

        return check_name(v, "name")


def _zoo_models():
    from tfopt.models import MODELS

    return MODELS


def _unknown(what: str, value: Any, allowed, extra: str = "") -> str:
    hint = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
    return f"unknown {what} {value!r}{did_you_mean}. Allowed: {sorted(allowed)}{extra}"


def _path(loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _one_line(err: ValidationError, model_cls, prefix: str = "") -> str:
    e = err.errors()[0]
    loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    where = prefix + _path(loc) if loc else prefix.rstrip(".") or _path(loc)
    if e["type"] == "extra_forbidden":
        allowed = _fields_at(model_cls, loc[:-1])
        return f"{where}: {_unknown('key', loc[-1], allowed)}"
    msg = e["msg"].removeprefix("Value error, ")
    value = e.get("input")
    hidden = isinstance(value, dict | list) or e["type"] == "missing" or repr(value) in msg
    shown = "" if hidden else f" (got {value!r})"
    return f"{where}: {msg}{shown}"


def _fields_at(model_cls, loc) -> list[str]:
    """Names of the keys allowed at ``loc`` inside ``model_cls``."""
    cls = model_cls
    for part in loc:
        if isinstance(part, int):
            continue
        field = cls.model_fields.get(part)
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, Section)):
            return []
        cls = ann
    return list(cls.model_fields)


def _validate_step(raw: Any, index: int) -> StepConfig:
    where = f"steps[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping with a 'type' key (got {raw!r})")
    step_type = raw.get("type")
    if step_type not in STEP_CONFIGS:
        raise ConfigError(f"{where}.type: {_unknown('step type', step_type, STEP_CONFIGS)}")
    cls = STEP_CONFIGS[step_type]
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_one_line(e, cls, prefix=f"{where}.")) from None


def validate_steps(raw: Any) -> list[StepConfig]:
    """Validates a list of step mappings (``[{type: prune, ...}, ...]``) into step configs.

    Raises:
        ConfigError: one line naming ``steps[i].key``, the rule and a did-you-mean.
    """
    if not isinstance(raw, list):
        raise ConfigError(f"steps: must be a list of steps (got {raw!r})")
    return [_validate_step(s, i) for i, s in enumerate(raw)]


def validate_train(raw: Any, *, prefix: str = "train.") -> TrainConfig:
    """Validates a ``train:`` mapping into a `TrainConfig`.

    Raises:
        ConfigError: one line, ``<prefix><key>: <the rule>``, echoing the value.
    """
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_one_line(e, TrainConfig, prefix=prefix)) from None


def validate(raw: Any) -> RunConfig:
    """Validates a config mapping; raises `ConfigError` with a one-line message."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"a config must be a mapping of keys to values (got {type(raw).__name__})"
        )
    raw = copy.deepcopy(raw)
    steps = raw.pop("steps", None) or []
    if not isinstance(steps, list):
        raise ConfigError(f"steps: must be a list of steps (got {steps!r})")
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_one_line(e, RunConfig)) from None
    cfg.steps = validate_steps(steps)
    if cfg.model.path is None and cfg.model.name is None:
        raise ConfigError("model: set model.name (a zoo model) or model.path (a .keras file)")
    return cfg


def _parse_override(text: str) -> tuple[list[str | int], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value (e.g. train.epochs=5)")
    key, value = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override {text!r} has no key")
    try:
        parsed = parse_yaml(value, source=f"override {key.strip()!r}") if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    parts: list[str | int] = [int(p) if p.isdigit() else p for p in key.strip().split(".")]
    return parts, parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Returns a copy of ``raw`` with ``key.path=value`` overrides applied (values parsed as YAML)."""
    raw = copy.deepcopy(raw or {})
    for text in overrides:
        parts, value = _parse_override(text)
        node: Any = raw
        for i, part in enumerate(parts[:-1]):
            nxt = parts[i + 1]
            if isinstance(part, int):
                if not isinstance(node, list) or part >= len(node):
                    raise ConfigError(f"override {text!r}: {_path(parts[: i + 1])} does not exist")
                node = node[part]
            else:
                if not isinstance(node, dict):
                    raise ConfigError(f"override {text!r}: {_path(parts[:i])} is not a mapping")
                node = node.setdefault(part, [] if isinstance(nxt, int) else {})
        last = parts[-1]
        if isinstance(last, int):
            if not isinstance(node, list) or last >= len(node):
                raise ConfigError(f"override {text!r}: {_path(parts)} does not exist")
        elif not isinstance(node, dict):
            raise ConfigError(f"override {text!r}: {_path(parts[:-1])} is not a mapping")
        node[last] = value
    return raw


def default_config_path() -> Path:
    """The embedded default config (`tfopt/configs/default.yaml`)."""
    return Path(str(importlib.resources.files("tfopt") / "configs" / "default.yaml"))


def packaged_configs() -> dict[str, Path]:
    """The configs shipped in the package (``tfopt/configs/*.yaml``) by name: ``{"default": ...}``."""
    root = importlib.resources.files("tfopt") / "configs"
    return {
        Path(p.name).stem: Path(str(p))
        for p in root.iterdir()
        if p.name.endswith((".yaml", ".yml"))
    }


def resolve_config(path_or_name) -> Path:
    """The YAML file of ``tfopt run CONFIG|NAME``: an existing file, else a packaged config's name.

    Raises:
        ConfigError: a directory, or neither a file nor a packaged config (listing those).
    """
    path = Path(path_or_name)
    if path.is_dir():
        raise ConfigError(f"config {str(path)!r} is a directory, not a YAML config file")
    if path.exists():
        return path
    shipped = packaged_configs()
    name = str(path_or_name)
    if name in shipped:
        return shipped[name]
    if name.endswith((".yaml", ".yml")) and "/" not in name and path.stem in shipped:
        return shipped[path.stem]
    raise ConfigError(
        f"config file not found: {name!r}; {_unknown('config name', name, shipped)} "
        "(the configs shipped with tfopt)"
    )


def _check_text_file(path: Path) -> None:
    """Raises `ConfigError` naming ``path`` when it is not a UTF-8 text file (a model, a zip)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:
        hint = ""
        if path.suffix in (".keras", ".h5", ".zip", ".npz", ".tflite", ".onnx"):
            hint = f" ({path.suffix} is not a config; a model goes in --model, data in --data)"
        raise ConfigError(f"config {str(path)!r} is not a YAML text file (binary content){hint}")


def read_yaml(path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config {str(path)!r} is a directory, not a YAML config file")
    if not path.exists():
        raise ConfigError(f"config file not found: {str(path)!r}")
    _check_text_file(path)
    try:
        # safe_load builds only plain YAML types: no arbitrary Python objects.
        return parse_yaml(path.read_text(), source=path.name) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path.name}: invalid YAML{where}: {problem}") from None


def _relative_to(raw: Any, base: Path) -> Any:
    """``raw`` with a relative ``model.path`` / ``.npz`` ``data.name`` read from a YAML file in
    ``base`` resolved against ``base``, never the current directory: a config and the files next
    to it move together (`recipe.yaml` and ``baseline.keras``), and a copied config never picks
    up another folder's file of the same name."""
    if not isinstance(raw, dict):
        return raw
    for section, key in (("model", "path"), ("data", "name")):
        node = raw.get(section)
        value = node.get(key) if isinstance(node, dict) else None
        if not isinstance(value, str) or Path(value).is_absolute():
            continue
        if section == "data" and not value.endswith(".npz"):
            continue
        node[key] = str(base / value)
    return raw


def load(path=None, *, overrides: list[str] = ()) -> RunConfig:
    """Reads a YAML config (the embedded default when ``path`` is None) and validates it.

    A relative ``model.path`` (or ``.npz`` ``data.name``) in the file is relative to the file's
    folder; overrides are relative to the current directory.

    Args:
        path: the YAML file, or the name of a packaged config (``"prune_qat"``). Defaults to
            None (`default_config_path()`).
        overrides: ``key.path=value`` strings applied before validation. Defaults to ().

    Returns:
        A validated `RunConfig`.

    Raises:
        ConfigError: one line naming the key path, the rule, and a did-you-mean where it helps.
    """
    file = default_config_path() if path is None else resolve_config(path)
    raw = _relative_to(read_yaml(file), file.parent)
    return validate(apply_overrides(raw, list(overrides)))
