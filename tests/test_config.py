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
            "train.epochz: unknown key 'epochz' (did you mean 'epochs'?). Allowed: ['batch_size', 'epochs', 'learning_rate']",
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
