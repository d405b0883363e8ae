import pytest

import tfopt
from tfopt.config import apply_overrides, load, validate
from tfopt.errors import ConfigError


def test_default_config_is_embedded_and_valid():
    cfg = load()
    assert cfg.data.name == "mnist1d" and cfg.model.name == "mnist1d_cnn"
    assert cfg.export.formats == ["tflite", "tflite-int8"]
    assert tfopt.config.default_config_path().name == "default.yaml"


def test_overrides_parse_yaml_values():
    cfg = load(
        overrides=["train.epochs=5", "export.formats=[tflite]", "model.options.width=16", "name=x"]
    )
    assert cfg.train.epochs == 5 and cfg.export.formats == ["tflite"]
    assert cfg.model.options == {"width": 16} and cfg.name == "x"


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "train.epochz=3",
            "train.epochz: unknown key 'epochz' (did you mean 'epochs'?). Allowed: ['batch_size', 'epochs', 'learning_rate', 'strategy']",
        ),
        ("trian.epochs=3", "trian: unknown key 'trian' (did you mean 'train'?)."),
        ("train.epochs=-1", "train.epochs: Input should be greater than or equal to 0 (got -1)"),
        (
            "train.epochs=abc",
            "train.epochs: Input should be a valid integer, unable to parse string as an integer (got 'abc')",
        ),
        ("data.name=mnist1e", "data.name: unknown dataset 'mnist1e' (did you mean 'mnist1d'?)."),
        (
            "export.formats=[tflite-int9]",
            "export.formats: unknown format 'tflite-int9' (did you mean 'tflite-int8'?).",
        ),
        ("model.path=model.h5", "model.path: must be a .keras file. Received: 'model.h5'"),
        ("steps=[{type: prnue}]", "steps[0].type: unknown step type 'prnue'"),
        ("steps=3", "steps: must be a list of steps (got 3)"),
        ("train", "override 'train' must look like key.path=value"),
    ],
)
def test_config_errors_are_one_line_with_key_path(override, message):
    with pytest.raises(ConfigError) as info:
        load(overrides=[override])
    text = str(info.value)
    assert text.startswith(message), text
    assert "\n" not in text


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="invalid YAML at line 1"):
        load(path)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="a config must be a mapping"):
        validate([1, 2])


def test_apply_overrides_does_not_mutate_and_checks_list_indices():
    raw = {"steps": [{"type": "x"}]}
    out = apply_overrides(raw, ["steps.0.epochs=2"])
    assert out["steps"][0]["epochs"] == 2 and "epochs" not in raw["steps"][0]
    with pytest.raises(ConfigError, match=r"steps\[3\] does not exist"):
        apply_overrides(raw, ["steps.3.epochs=2"])


def test_fine_tuning_keys_are_shared_by_the_fine_tuning_steps():
    from tfopt.config import DistillLoss, FineTuneStepConfig, validate_steps

    raw = [
        {"type": t, "lr_schedule": "cosine", "batch_size": 32, "distill": {"temperature": 2.0}}
        for t in ("prune", "qat", "cluster", "prune_channels")
    ]
    for step in validate_steps(raw):
        assert isinstance(step, FineTuneStepConfig)
        assert step.lr_schedule == "cosine" and step.batch_size == 32
        assert step.distill == DistillLoss(temperature=2.0, alpha=0.1)
    with pytest.raises(ConfigError, match=r"^steps\[0\]\.distill\.alpha: Input should be less"):
        validate_steps([{"type": "prune", "distill": {"alpha": 2}}])
    with pytest.raises(ConfigError, match=r"^steps\[1\]\.lr_schedule: Input should be 'constant'"):
        validate_steps([{"type": "qat"}, {"type": "qat", "lr_schedule": "linear"}])
    with pytest.raises(ConfigError, match="give filters or scope, not both"):
        validate_steps([{"type": "prune", "scope": "large", "filters": "conv"}])
    with pytest.raises(ConfigError, match=r"steps\[0\]\.scope: Input should be 'all' or 'widest"):
        validate_steps([{"type": "prune_channels", "scope": "large"}])
    with pytest.raises(ConfigError, match="distill: unknown key 'distill'"):
        validate_steps([{"type": "distill", "distill": {}}])  # the distill step is the student's
